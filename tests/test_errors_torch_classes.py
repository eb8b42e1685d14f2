"""The drop-in layers raise, for every mistake torch.nn refuses, an instance of the class torch.nn raises.

Each case runs the same bad call against ``torch.nn`` and against ``rnnkit``; the expected class is whatever torch
raised at test time (nothing is hard-coded), and rnnkit's error must be an instance of it (rnnkit's classes in
``rnnkit.errors`` derive from torch's class and from the one rnnkit raised before) with a message that starts
with the component's name. ``lengths=`` has no torch.nn counterpart in the layer; its torch reference is the
same lengths given to ``pack_padded_sequence``, which is what ``lengths=`` means.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnkit
from rnnkit import errors

X = torch.randn(5, 2, 4)  # (T, B, I) for a layer of input_size 4
PACKED = pack_padded_sequence(X, [5, 3])
Z = torch.zeros


def _converted(layer: Any, name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``layer`` with parameter ``name`` replaced by a converted copy (what ``.data = ...`` or a partial ``.to``
    would leave behind)."""
    setattr(layer, name, torch.nn.Parameter(fn(getattr(layer, name).detach())))
    return layer


def _with_lengths(nn: Any, lengths: Any) -> Any:
    layer = nn.GRU(4, 3)
    if nn is torch.nn:
        return layer(pack_padded_sequence(X, lengths, enforce_sorted=False))
    return layer(X, lengths=lengths)


# (component, call(nn)): nn is torch.nn or rnnkit
CASES: list[tuple[str, str, Callable[[Any], Any]]] = [
    # constructor: sizes
    ("negative input_size", "LSTM", lambda nn: nn.LSTM(-1, 3)),
    ("zero hidden_size", "GRU", lambda nn: nn.GRU(4, 0)),
    ("zero input_size", "RNN", lambda nn: nn.RNN(0, 3)),
    ("float hidden_size", "GRU", lambda nn: nn.GRU(4, 2.0)),
    ("float input_size", "RNN", lambda nn: nn.RNN(4.0, 2)),
    ("str hidden_size", "LSTM", lambda nn: nn.LSTM(4, "3")),
    ("num_layers 0", "LSTM", lambda nn: nn.LSTM(4, 3, num_layers=0)),
    ("num_layers negative", "GRU", lambda nn: nn.GRU(4, 3, num_layers=-2)),
    ("num_layers float", "RNN", lambda nn: nn.RNN(4, 3, num_layers=2.0)),
    # constructor: dropout, nonlinearity, flags, dtype, keywords
    ("dropout above 1", "LSTM", lambda nn: nn.LSTM(4, 3, dropout=1.5)),
    ("dropout negative", "GRU", lambda nn: nn.GRU(4, 3, num_layers=2, dropout=-0.1)),
    ("dropout str", "RNN", lambda nn: nn.RNN(4, 3, dropout="0.1")),
    ("dropout bool", "LSTM", lambda nn: nn.LSTM(4, 3, dropout=True)),
    ("dropout None", "GRU", lambda nn: nn.GRU(4, 3, dropout=None)),
    ("num_layers str", "GRU", lambda nn: nn.GRU(4, 3, num_layers="2")),
    ("hidden_size None", "RNN", lambda nn: nn.RNN(4, None)),
    ("nonlinearity unknown", "RNN", lambda nn: nn.RNN(4, 3, nonlinearity="sigmoid")),
    ("nonlinearity positional", "RNN", lambda nn: nn.RNN(4, 3, 1, "gelu")),
    ("bias not bool", "LSTM", lambda nn: nn.LSTM(4, 3, bias=1)),
    ("batch_first not bool", "GRU", lambda nn: nn.GRU(4, 3, batch_first="yes")),
    ("integer dtype", "LSTM", lambda nn: nn.LSTM(4, 3, dtype=torch.int64)),
    ("unknown keyword", "LSTM", lambda nn: nn.LSTM(4, 3, foo=1)),
    # constructor: proj_size
    ("proj_size on RNN", "RNN", lambda nn: nn.RNN(4, 3, proj_size=2)),
    ("proj_size on GRU", "GRU", lambda nn: nn.GRU(4, 3, proj_size=2)),
    ("proj_size 0 on GRU", "GRU", lambda nn: nn.GRU(4, 3, proj_size=0)),
    ("proj_size negative", "LSTM", lambda nn: nn.LSTM(4, 3, proj_size=-1)),
    ("proj_size equal to hidden", "LSTM", lambda nn: nn.LSTM(4, 3, proj_size=3)),
    ("proj_size above hidden", "LSTM", lambda nn: nn.LSTM(4, 3, proj_size=5)),
    ("proj_size float", "LSTM", lambda nn: nn.LSTM(4, 3, proj_size=1.0)),
    ("proj_size None", "LSTM", lambda nn: nn.LSTM(4, 3, proj_size=None)),
    # forward: the input
    ("input 4-D", "LSTM", lambda nn: nn.LSTM(4, 3)(X.unsqueeze(-1))),
    ("input 1-D", "GRU", lambda nn: nn.GRU(4, 3)(torch.randn(4))),
    ("input size batched", "RNN", lambda nn: nn.RNN(4, 3)(torch.randn(5, 2, 6))),
    ("input size unbatched", "GRU", lambda nn: nn.GRU(4, 3)(torch.randn(5, 6))),
    ("input size batch_first", "LSTM", lambda nn: nn.LSTM(4, 3, batch_first=True)(torch.randn(2, 5, 3))),
    ("input int64", "LSTM", lambda nn: nn.LSTM(4, 3)(X.long())),
    ("input float64", "GRU", lambda nn: nn.GRU(4, 3)(X.double())),
    ("input float32, layer float64", "RNN", lambda nn: nn.RNN(4, 3, dtype=torch.float64)(X)),
    ("input a list", "LSTM", lambda nn: nn.LSTM(4, 3)([[1.0] * 4])),
    ("input complex", "GRU", lambda nn: nn.GRU(4, 3)(X.to(torch.complex64))),
    ("input bool", "RNN", lambda nn: nn.RNN(4, 3)(X > 0)),
    # forward: hx shape and rank
    ("hx 2-D for batched input", "RNN", lambda nn: nn.RNN(4, 3)(X, Z(1, 3))),
    ("hx 3-D for unbatched input", "RNN", lambda nn: nn.RNN(4, 3)(X[:, 0], Z(1, 1, 3))),
    ("hx layers x directions", "GRU", lambda nn: nn.GRU(4, 3, bidirectional=True)(X, Z(1, 2, 3))),
    ("hx batch", "GRU", lambda nn: nn.GRU(4, 3)(X, Z(1, 3, 3))),
    ("hx size", "GRU", lambda nn: nn.GRU(4, 3)(X, Z(1, 2, 4))),
    ("hx size unbatched", "GRU", lambda nn: nn.GRU(4, 3)(X[:, 0], Z(1, 4))),
    ("hx batch, batch_first", "GRU", lambda nn: nn.GRU(4, 3, batch_first=True)(torch.randn(2, 5, 4), Z(1, 5, 3))),
    ("hx a list", "GRU", lambda nn: nn.GRU(4, 3)(X, [[0.0]])),
    # forward: the LSTM's (h_0, c_0)
    ("LSTM hx a tensor", "LSTM", lambda nn: nn.LSTM(4, 3)(X, Z(1, 2, 3))),
    ("LSTM hx a 1-tuple", "LSTM", lambda nn: nn.LSTM(4, 3)(X, (Z(1, 2, 3),))),
    ("LSTM hx a 3-tuple", "LSTM", lambda nn: nn.LSTM(4, 3)(X, (Z(1, 2, 3),) * 3)),
    ("LSTM c_0 2-D for batched input", "LSTM", lambda nn: nn.LSTM(4, 3)(X, (Z(1, 2, 3), Z(2, 3)))),
    ("LSTM states 3-D for unbatched", "LSTM", lambda nn: nn.LSTM(4, 3)(X[:, 0], (Z(1, 2, 3), Z(1, 2, 3)))),
    ("LSTM c_0 size", "LSTM", lambda nn: nn.LSTM(4, 3)(X, (Z(1, 2, 3), Z(1, 2, 4)))),
    ("LSTM c_0 batch", "LSTM", lambda nn: nn.LSTM(4, 3)(X, (Z(1, 2, 3), Z(1, 3, 3)))),
    ("LSTM h_0 of hidden_size with proj", "LSTM", lambda nn: nn.LSTM(4, 3, proj_size=2)(X, (Z(1, 2, 3), Z(1, 2, 3)))),
    ("LSTM h_0 a list", "LSTM", lambda nn: nn.LSTM(4, 3)(X, ([0.0], Z(1, 2, 3)))),
    ("LSTM hx (None, None)", "LSTM", lambda nn: nn.LSTM(4, 3)(X, (None, None))),
    # forward: PackedSequence
    ("packed, hx batch", "GRU", lambda nn: nn.GRU(4, 3)(PACKED, Z(1, 3, 3))),
    ("packed, hx 2-D", "GRU", lambda nn: nn.GRU(4, 3)(PACKED, Z(1, 3))),
    ("packed, input size", "GRU", lambda nn: nn.GRU(4, 3)(pack_padded_sequence(torch.randn(5, 2, 6), [5, 3]))),
    ("packed, LSTM c_0 size", "LSTM", lambda nn: nn.LSTM(4, 3)(PACKED, (Z(1, 2, 3), Z(1, 2, 4)))),
    ("packed, 3-D data", "GRU", lambda nn: nn.GRU(4, 3)(PackedSequence(torch.randn(8, 1, 4), torch.tensor([2] * 4)))),
    ("packed, float64 data", "LSTM", lambda nn: nn.LSTM(4, 3)(pack_padded_sequence(X.double(), [5, 3]))),
    # forward: dtypes of states and parameters
    ("hx float64", "GRU", lambda nn: nn.GRU(4, 3)(X, Z(1, 2, 3, dtype=torch.float64))),
    ("LSTM c_0 float64", "LSTM", lambda nn: nn.LSTM(4, 3)(X, (Z(1, 2, 3), Z(1, 2, 3, dtype=torch.float64)))),
    ("hx int64", "GRU", lambda nn: nn.GRU(4, 3)(X, Z(1, 2, 3, dtype=torch.int64))),
    ("hx bfloat16", "RNN", lambda nn: nn.RNN(4, 3)(X, Z(1, 2, 3, dtype=torch.bfloat16))),
    ("a weight converted", "GRU", lambda nn: _converted(nn.GRU(4, 3), "weight_hh_l0", torch.Tensor.double)(X)),
    ("a bias converted", "LSTM", lambda nn: _converted(nn.LSTM(4, 3, 2), "bias_ih_l1", torch.Tensor.double)(X)),
    # forward: devices (meta is a second device on a CPU-only machine)
    ("a weight on meta", "GRU", lambda nn: _converted(nn.GRU(4, 3), "weight_hh_l0", lambda t: t.to("meta"))(X)),
    ("input on meta", "LSTM", lambda nn: nn.LSTM(4, 3)(X.to("meta"))),
    ("hx on meta", "GRU", lambda nn: nn.GRU(4, 3)(X, Z(1, 2, 3, device="meta"))),
    ("LSTM c_0 on meta", "LSTM", lambda nn: nn.LSTM(4, 3)(X, (Z(1, 2, 3), Z(1, 2, 3, device="meta")))),
    ("layer on meta, input on cpu", "LSTM", lambda nn: nn.LSTM(4, 3, device="meta")(X)),
    ("packed, hx on meta", "GRU", lambda nn: nn.GRU(4, 3)(PACKED, Z(1, 2, 3, device="meta"))),
    # lengths (torch: the same lengths packed)
    ("lengths of another batch", "GRU", lambda nn: _with_lengths(nn, [5, 2, 3])),
    ("lengths beyond the steps", "GRU", lambda nn: _with_lengths(nn, [6, 2])),
    ("lengths negative", "GRU", lambda nn: _with_lengths(nn, [-1, 2])),
]


def _torch_error(call: Callable[[Any], Any]) -> BaseException:
    try:
        call(torch.nn)
    except Exception as err:  # noqa: BLE001 - the class is what this test reads
        return err
    raise AssertionError("torch.nn accepts this call: not a mistake to mirror")


@pytest.mark.parametrize("component, call", [pytest.param(c, f, id=i) for i, c, f in CASES])
def test_rnnkit_raises_an_instance_of_torchs_class(component, call):
    expected = type(_torch_error(call))
    with pytest.raises(expected) as info:
        call(rnnkit)
    assert str(info.value).startswith(component), f"{type(info.value).__name__}: {info.value}"


def test_enough_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize(
    "call, error, match",
    [
        # torch takes True as 1 and truncates float lengths; rnnkit refuses both by name
        (lambda: rnnkit.LSTM(4, True), errors.ArgumentTypeError, r"LSTM: hidden_size should be of type int.*bool"),
        (lambda: rnnkit.GRU(True, 3), TypeError, r"GRU: input_size should be of type int.*, got: bool \(True\)"),
        (lambda: rnnkit.GRU(4, 3)(X, lengths=[5.0, 2.0]), errors.DtypeError, r"GRU: lengths must hold integers"),
        # torch cannot read lengths on meta either (NotImplementedError: no data); rnnkit names the device
        (
            lambda: rnnkit.GRU(4, 3)(X, lengths=torch.tensor([5, 2], device="meta")),
            errors.DeviceError,
            r"GRU: lengths is on device meta; expected it on the CPU \(the device of the parameters\)",
        ),
    ],
)
def test_rnnkit_refuses_what_torch_lets_through(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    "cls, bases",
    [
        (errors.ArgumentTypeError, (TypeError, ValueError)),
        (errors.ShapeError, (ValueError, RuntimeError)),
        (errors.InputValueError, (ValueError, RuntimeError)),
        (errors.DtypeError, (TypeError, ValueError, RuntimeError)),
        (errors.DeviceError, (ValueError, RuntimeError)),
        (errors.StateStructureError, (TypeError, ValueError, IndexError, RuntimeError)),
        (errors.NotATensorError, (TypeError, AttributeError)),
        (errors.NotBuiltError, (AttributeError,)),
        (errors.VariableNameError, (KeyError, ValueError)),
    ],
)
def test_classes_keep_both_except_clauses_working(cls, bases):
    """``except RuntimeError`` written for torch.nn and ``except ValueError`` written for rnnkit both catch."""
    for base in (*bases, errors.RNNKitError):
        with pytest.raises(base):
            raise cls("x")
