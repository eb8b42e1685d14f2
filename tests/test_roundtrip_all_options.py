"""Every configuration rnnkit's layers and TF-style cell trees accept survives save/load, ONNX and ``rnnkit convert``.

One registry drives it all. The layers' options are read from ``rnnkit.RNN/LSTM/GRU.__init__``'s signatures and the
cells from the cell registry (``rnnkit.cells.cell_entries``; their options from their signatures);
``LAYER_VALUES``/``CELL_VALUES`` give two values per option (the first must be the signature's default), and a new
option without values fails ``test_registry_covers_every_option``. Configurations are pairwise combinations (every
pair of option values that the constructor accepts appears in some case), chosen greedily from all combinations the
constructor accepts.

References and tolerances:

* ``save`` -> ``load``: the original module itself, bit-exact (``torch.equal``), in eval and in training mode
  (same seed), with ``lengths`` and random initial states;
* ``export_onnx`` -> onnxruntime: the module's eval output, ``atol=1e-5`` in float32, with ``sequence_lens`` and
  the final states fed back as the next chunk's initial states;
* ``rnnkit convert`` (in process through ``rnnkit.cli.conversion.main``; once through ``python -m rnnkit``) to
  ``.safetensors`` (bit-exact; a layer also ``--as cells``, TF-style cells), ``.onnx`` (onnxruntime, and back to
  ``.safetensors``) and ``.pt`` (read by ``torch.nn`` itself), each against the source module or the cells' own
  ``dynamic_rnn``, ``atol=1e-5``.

Where a conversion cannot be exact (TF's GRU, peepholes, ``cell_clip``, layer norm or zoneout into ``torch.nn``;
a ``ResidualWrapper`` or mixed cells into a layer; torch's GRU, zoneout or a projected layer norm into TF cells)
the test asserts the refusal: exit code 2 and the reason on
stderr, or the exception class and message of the API.
"""

from __future__ import annotations

import inspect
import itertools
import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

import rnnkit
import rnnkit.cells
from cli_helpers import run_cli
from rnnkit.cells import MultiRNNCell, RNNCell, RNNCellWrapper, cell_entries
from rnnkit.cli.conversion import main as convert_main
from rnnkit.convert import (
    AssumedForgetBiasWarning,
    LayerConfig,
    cells_from_tf_variables,
    cells_to_torch,
    export_onnx,
    load,
    load_tf_checkpoint,
    read_tf_checkpoint,
    save,
    tf_to_torch,
    torch_to_cells,
    torch_to_tf,
)
from rnnkit.convert._tf_layout import torch_ln_lstm_to_tf
from rnnkit.saving import module_config

TOL = 1e-5
INPUT, HIDDEN, STEPS, BATCH = 3, 6, 5, 3  # 6 units: a layer norm over 4 is ill-conditioned (float32 off by 1e-5)
LENGTHS = [5, 2, 4]

# -- the registry ------------------------------------------------------------------------------------------------
LAYERS = (rnnkit.RNN, rnnkit.LSTM, rnnkit.GRU)
_LAYER_SIZES = ("self", "input_size", "hidden_size", "device", "dtype")
LAYER_VALUES: dict[str, tuple[Any, Any]] = {  # (default, another value)
    "num_layers": (1, 2),
    "nonlinearity": ("tanh", "relu"),
    "bias": (True, False),
    "batch_first": (False, True),
    "dropout": (0.0, 0.3),
    "bidirectional": (False, True),
    "proj_size": (0, 2),
    "forget_bias": (0.0, 0.7),
    "peepholes": (False, True),
    "cell_clip": (None, 0.5),
    "layer_norm": (False, True),
    "reset_after": (True, False),
    "recurrent_dropout": (0.0, 0.25),
    "zoneout": (0.0, 0.2),
}
_CELL_SIZES = ("self", "num_units", "kwargs", "cell", "cells", "input_size", "dtype")  # (DropoutWrapper: TF's)
CELL_VALUES: dict[str, tuple[Any, Any]] = {
    "activation": (None, "relu"),
    "forget_bias": (1.0, 0.0),
    "state_is_tuple": (True, False),
    "use_peepholes": (False, True),
    "cell_clip": (None, 0.5),
    "num_proj": (None, 2),
    "proj_clip": (None, 0.4),
    "layer_norm": (True, False),
    "norm_gain": (1.0, 0.7),
    "norm_shift": (0.0, 0.2),
    "dropout_keep_prob": (1.0, 0.8),
    "seed": (None, 3),
    "input_keep_prob": (1.0, 0.8),
    "output_keep_prob": (1.0, 0.7),
    "state_keep_prob": (1.0, 0.9),
    "variational_recurrent": (False, True),
}
# Options whose other value is a Python function: not serialisable, so `save` must refuse it.
CELL_FUNCTIONS = {
    "dropout_state_filter_visitor": lambda substate: True,
    "residual_fn": lambda inputs, outputs: inputs - outputs,
}


# Options a constructor takes only to refuse them, as torch.nn's RNN and GRU refuse proj_size.
_REFUSED = {"RNN": ("proj_size",), "GRU": ("proj_size",)}


def _options(cls: type, skip: tuple[str, ...]) -> dict[str, Any]:
    """The constructor's options and defaults (everything but sizes, device and dtype), in signature order."""
    params = inspect.signature(cls.__init__).parameters.values()
    skip = skip + _REFUSED.get(cls.__name__, ())
    return {p.name: p.default for p in params if p.name not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _cell_classes() -> tuple[list[type], list[type], list[type]]:
    """The cell registry's classes: TF leaf cells, TF wrappers (MultiRNNCell too) and torch-layout steps."""
    kinds = ("leaf", ("stack", "wrapper"), "torch")
    leaves, wrappers, torch_steps = ([e.cls for e in cell_entries(kind)] for kind in kinds)
    return leaves, wrappers, torch_steps


LEAVES, WRAPPERS, TORCH_STEPS = _cell_classes()


def _accepts(build) -> bool:
    """Whether the constructor takes these options (no error, and no warning about them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            build()
        except (ValueError, TypeError, UserWarning):
            return False
    return True


def _pairwise(options: dict[str, tuple[Any, Any]], accepts) -> tuple[list[dict[str, Any]], set]:
    """Few accepted combinations covering every accepted pair of option values (greedy), and the pairs no
    accepted combination has (``{((name, value), (name, value))}``)."""
    names = list(options)
    combos = [dict(zip(names, values, strict=True)) for values in itertools.product(*options.values())]
    valid = [c for c in combos if accepts(c)]

    def pairs(combo: dict[str, Any]) -> set:  # every single value too (a class with one option has no pairs)
        singles = {((a, repr(combo[a])),) for a in names}
        return singles | {((a, repr(combo[a])), (b, repr(combo[b]))) for a, b in itertools.combinations(names, 2)}

    every = set().union(*(pairs(c) for c in combos))
    uncovered = set().union(*(pairs(c) for c in valid))
    unreachable = every - uncovered
    chosen = []
    while uncovered:
        best = max(valid, key=lambda c: len(pairs(c) & uncovered))
        chosen.append(best)
        uncovered -= pairs(best)
    return chosen, unreachable


def _non_default(combo: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in combo.items() if v != defaults[k] or (v is None) != (defaults[k] is None)}


# Values no torch.nn layer computes (a ``.pt`` refuses them): a second pairwise set leaves them out, so that
# the pairs of the other values also reach the .pt round trip rather than only its refusal.
NOT_TORCH_NN = {"peepholes": True, "cell_clip": 0.5, "layer_norm": True, "reset_after": False, "zoneout": 0.2}


def _layer_cases() -> list[tuple[type, dict[str, Any]]]:
    cases: list[tuple[type, dict[str, Any]]] = []
    for cls in LAYERS:
        defaults = _options(cls, _LAYER_SIZES)
        values = {name: LAYER_VALUES[name] for name in defaults}
        nn_values = {k: tuple(v for v in vs if NOT_TORCH_NN.get(k, object()) != v) for k, vs in values.items()}
        for option_values in (values, nn_values):
            chosen, _ = _pairwise(option_values, lambda c, cls=cls: _accepts(lambda: cls(INPUT, HIDDEN, **c)))
            cases += [(cls, _non_default(c, defaults)) for c in chosen if (cls, _non_default(c, defaults)) not in cases]
    return cases


def _case_id(case: tuple[type, dict[str, Any]]) -> str:
    cls, opts = case
    return f"{cls.__name__}(" + ",".join(f"{k}={v}" for k, v in opts.items()) + ")"


LAYER_CASES = _layer_cases()


def test_refused_options_are_refused():
    for name, options in _REFUSED.items():
        for option in options:
            with pytest.raises(ValueError, match=f"{option} argument is only supported for LSTM"):
                getattr(rnnkit, name)(INPUT, HIDDEN, **{option: 1})


def test_registry_covers_every_option():
    """Each layer and cell option has values here, the first being the signature's default."""
    for cls in LAYERS:
        for name, default in _options(cls, _LAYER_SIZES).items():
            assert name in LAYER_VALUES, f"{cls.__name__}({name}=) has no values in LAYER_VALUES"
            assert LAYER_VALUES[name][0] == default, f"{cls.__name__}({name}=): default {default!r}"
    for cls in LEAVES + WRAPPERS:
        for name, default in _options(cls, _CELL_SIZES).items():
            assert name in CELL_VALUES or name in CELL_FUNCTIONS, f"{cls.__name__}({name}=) has no values"
            if name in CELL_VALUES:
                assert CELL_VALUES[name][0] == default, f"{cls.__name__}({name}=): default {default!r}"
    names = {c.__name__ for c in LEAVES + WRAPPERS + TORCH_STEPS}
    assert {"BasicRNNCell", "BasicLSTMCell", "LSTMCell", "GRUCell", "LayerNormBasicLSTMCell"} <= names
    assert {"MultiRNNCell", "DropoutWrapper", "ResidualWrapper"} <= names


def test_pairwise_covers_every_pair_the_layers_accept():
    """The only pairs of layer options no case has are the ones the constructors refuse, by design."""
    refused = {
        "LSTM": {("layer_norm", "peepholes"), ("layer_norm", "cell_clip"), ("cell_clip", "layer_norm"),
                 ("peepholes", "layer_norm"), ("num_layers", "dropout")},
        "GRU": {("num_layers", "dropout")},
        "RNN": {("num_layers", "dropout")},
    }  # fmt: skip
    for cls in LAYERS:
        defaults = _options(cls, _LAYER_SIZES)
        values = {name: LAYER_VALUES[name] for name in defaults}
        _, unreachable = _pairwise(values, lambda c, cls=cls: _accepts(lambda: cls(INPUT, HIDDEN, **c)))
        assert unreachable, cls
        assert all(len(pair) == 2 for pair in unreachable), unreachable  # every single value is accepted
        assert {(a, b) for (a, _), (b, _) in unreachable} <= refused[cls.__name__], (cls, unreachable)


# -- helpers ---------------------------------------------------------------------------------------------------
def _perturb(module: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial values for every parameter (layer-norm gains and shifts too, which start at 1 and 0)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return module


def _build_layer(case) -> torch.nn.Module:
    cls, opts = case
    return _perturb(cls(INPUT, HIDDEN, **opts))


def _hidden(layer, batch: int = BATCH) -> tuple[torch.Tensor, ...]:
    stacked = layer.num_layers * (2 if layer.bidirectional else 1)
    h0 = torch.randn(stacked, batch, getattr(layer, "proj_size", 0) or layer.hidden_size)
    return (h0, torch.randn(stacked, batch, layer.hidden_size)) if isinstance(layer, rnnkit.LSTM) else (h0,)


def _input(layer, steps: int = STEPS) -> torch.Tensor:
    return torch.randn((BATCH, steps, INPUT) if layer.batch_first else (steps, BATCH, INPUT))


def _run(layer, x, hidden, lengths=None, seed: int | None = None) -> list[torch.Tensor]:
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        out, h_n = layer(x, hidden if len(hidden) > 1 else hidden[0], lengths=lengths)
    return [out, *(h_n if isinstance(h_n, tuple) else (h_n,))]


def _session(path_or_model) -> ort.InferenceSession:
    source = path_or_model if isinstance(path_or_model, str) else path_or_model.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def _ort_run(session, x, hidden, lengths=None) -> list[torch.Tensor]:
    names = [i.name for i in session.get_inputs()]
    feeds = {"input": x.numpy()}
    feeds.update({n: h.numpy() for n, h in zip(("h_0", "c_0"), hidden, strict=False) if n in names})
    if "sequence_lens" in names:
        feeds["sequence_lens"] = np.asarray(lengths, np.int32)
    return [torch.from_numpy(o) for o in session.run(None, feeds)]


def _close(got, want, atol: float = TOL) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=atol)


def _equal(got, want) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w), (g - w).abs().max()


def _convert(capsys, *argv) -> tuple[int, str, str]:
    code = convert_main(["convert", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- layers ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", LAYER_CASES, ids=_case_id)
def test_layer_save_load_is_exact(case, tmp_path):
    layer = _build_layer(case)
    x, hidden = _input(layer), _hidden(layer)
    for training in (False, True):
        layer.train(training)
        save(layer, tmp_path / "m.safetensors")
        again = load(tmp_path / "m.safetensors")
        assert type(again) is type(layer) and again.training == training
        assert again.extra_repr() == layer.extra_repr()
        _equal(list(again.state_dict().values()), list(layer.state_dict().values()))
        _equal(_run(again, x, hidden, LENGTHS, seed=7), _run(layer, x, hidden, LENGTHS, seed=7))


@pytest.mark.parametrize("case", LAYER_CASES, ids=_case_id)
def test_layer_onnx_matches_eval_output_with_lengths_and_fed_back_states(case, tmp_path):
    layer = _build_layer(case).eval()
    session = _session(export_onnx(layer, sequence_lens=True))
    hidden = _hidden(layer)
    for lengths in (LENGTHS, [STEPS] * BATCH):  # the second chunk starts from the first one's final states
        x = _input(layer)
        want, got = _run(layer, x, hidden, lengths), _ort_run(session, x, hidden, lengths)
        _close(got, want)
        hidden = tuple(got[1:])
    plain = _session(export_onnx(layer, initial_states=False))
    x = _input(layer)
    _close(_ort_run(plain, x, ()), _run(layer, x, tuple(torch.zeros_like(h) for h in _hidden(layer))))


_TORCH_NN_OPTIONS = ("num_layers", "nonlinearity", "bias", "batch_first", "dropout", "bidirectional", "proj_size")


def _torch_nn_refusals(cls: type, opts: dict[str, Any]) -> list[str]:
    """What the command must name when a ``.pt`` (a torch.nn state dict) cannot hold the layer's function."""
    reasons = [k for k in ("peepholes", "cell_clip", "layer_norm", "zoneout") if opts.get(k)]
    if opts.get("reset_after") is False:
        reasons.append("reset_after=False")
    if not reasons and opts.get("forget_bias") and opts.get("bias") is False:  # nowhere to fold the forget bias
        reasons.append("forget_bias=0.7 without biases")
    return reasons


def _tf_cells_refusal(cls: type, opts: dict[str, Any]) -> str | None:
    """Why ``--as cells`` (TF1-style cells) cannot hold the layer, or None when it can."""
    if opts.get("zoneout"):  # checked first: the layer's own option, before its weights
        return "zoneout"
    if cls is rnnkit.GRU and opts.get("reset_after", True):
        return "no TF GRUCell equivalent"
    if opts.get("layer_norm") and opts.get("proj_size"):
        return "LayerNormBasicLSTMCell has no projection"
    if opts.get("layer_norm") and opts.get("bias", True):
        return "non-zero bias_ih"
    return None


@pytest.mark.parametrize("case", LAYER_CASES, ids=_case_id)
def test_layer_convert_command_round_trips(case, tmp_path, capsys):
    cls, opts = case
    layer = _build_layer(case).eval()
    x, hidden = _input(layer), _hidden(layer)
    want = _run(layer, x, hidden, LENGTHS)
    src = tmp_path / "src.safetensors"
    save(layer, src)

    code, out, err = _convert(capsys, src, tmp_path / "copy.safetensors")
    assert code == 0, err
    _equal(_run(load(tmp_path / "copy.safetensors"), x, hidden, LENGTHS), want)

    code, out, err = _convert(capsys, src, tmp_path / "m.onnx", "--sequence-lens")
    assert code == 0, err
    _close(_ort_run(_session(str(tmp_path / "m.onnx")), x, hidden, LENGTHS), want)
    code, out, err = _convert(capsys, tmp_path / "m.onnx", tmp_path / "back.safetensors")
    assert code == 0, err
    back = load(tmp_path / "back.safetensors")
    assert back.batch_first == layer.batch_first
    _close(_run(back, x, hidden, LENGTHS), want)

    code, out, err = _convert(capsys, src, tmp_path / "cells.safetensors", "--as", "cells")
    refusal = _tf_cells_refusal(cls, opts)
    if refusal is not None:
        assert code == 2 and refusal in err and not (tmp_path / "cells.safetensors").exists(), err
    else:
        assert code == 0, err
        zeros = tuple(torch.zeros_like(h) for h in hidden)
        batch_major = x if layer.batch_first else x.transpose(0, 1)  # TF's runners read (batch, time, depth)
        full = _run(layer, x, zeros, LENGTHS)[0]
        with torch.no_grad():
            got = load(tmp_path / "cells.safetensors").run(batch_major, LENGTHS)[0]
        _close([got], [full if layer.batch_first else full.transpose(0, 1)])

    code, out, err = _convert(capsys, src, tmp_path / "m.pt")
    refusals = _torch_nn_refusals(cls, opts)
    if refusals:
        assert code == 2 and not (tmp_path / "m.pt").exists()
        assert err.startswith("rnnkit convert: error: ") and len(err.strip().splitlines()) == 1
        for reason in refusals:
            assert reason in err, (reason, err)
        return
    assert code == 0, err
    nn_kwargs = {k: v for k, v in opts.items() if k in _TORCH_NN_OPTIONS}
    reference = getattr(torch.nn, cls.__name__)(INPUT, HIDDEN, **nn_kwargs)
    reference.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    reference.eval()
    with torch.no_grad(), warnings.catch_warnings():  # torch.nn has no lengths=: compare on full-length sequences
        # torch.nn.LSTM(proj_size=) says once per process that oneDNN cannot project (its own loop runs).
        warnings.filterwarnings("ignore", message=".*projections is not supported with oneDNN")
        got, h_n = reference(x, hidden if len(hidden) > 1 else hidden[0])
    _close([got, *(h_n if isinstance(h_n, tuple) else (h_n,))], _run(layer, x, hidden))
    extra = ["--nonlinearity", "relu"] if opts.get("nonlinearity") == "relu" else []
    extra += ["--batch-first"] if opts.get("batch_first") else []
    code, out, err = _convert(capsys, tmp_path / "m.pt", tmp_path / "from_pt.safetensors", *extra)
    assert code == 0, err
    _close(_run(load(tmp_path / "from_pt.safetensors"), x, hidden, LENGTHS), want)


def test_python_dash_m_rnnkit_convert_layer_norm_with_projection(tmp_path):
    """The installed command line (a subprocess), on the case that was refused: layer_norm with proj_size."""
    layer = _perturb(rnnkit.LSTM(INPUT, HIDDEN, num_layers=2, proj_size=2, layer_norm=True, bidirectional=True))
    layer.eval()
    save(layer, tmp_path / "m.safetensors")
    result = run_cli("convert", str(tmp_path / "m.safetensors"), str(tmp_path / "m.onnx"), "--sequence-lens")
    assert result.returncode == 0, result.stderr
    assert "proj_size=2" in result.stdout and "layer_norm=True" in result.stdout
    x, hidden = _input(layer), _hidden(layer)
    _close(_ort_run(_session(str(tmp_path / "m.onnx")), x, hidden, LENGTHS), _run(layer, x, hidden, LENGTHS))


# -- TF-style cell trees ---------------------------------------------------------------------------------------
_KIND = {"BasicRNNCell": "RNN", "GRUCell": "GRU", "BasicLSTMCell": "LSTM", "LSTMCell": "LSTM",
         "LayerNormBasicLSTMCell": "LSTM"}  # fmt: skip


def _leaf(cls: type, opts: dict[str, Any], depth: int | None = INPUT, units: int = HIDDEN) -> RNNCell:
    cell = cls(units, input_size=depth, **opts)
    return _perturb(cell) if depth is not None else cell


# Cell values no rnnkit layer computes (so no ONNX or .pt either): a second pairwise set leaves them out.
NOT_A_LAYER = {"proj_clip": 0.4, "activation": "relu"}  # relu is a layer's only for BasicRNNCell


def _leaf_cases() -> list[tuple[type, dict[str, Any]]]:
    cases: list[tuple[type, dict[str, Any]]] = []
    for cls in LEAVES:
        defaults = _options(cls, _CELL_SIZES)
        values = {name: CELL_VALUES[name] for name in defaults}
        layer_values = {
            k: tuple(v for v in vs if NOT_A_LAYER.get(k, object()) != v or cls is rnnkit.BasicRNNCell)
            for k, vs in values.items()
        }
        for option_values in (values, layer_values):
            chosen, _ = _pairwise(
                option_values, lambda c, cls=cls: _accepts(lambda: cls(HIDDEN, input_size=INPUT, **c))
            )
            cases += [(cls, _non_default(c, defaults)) for c in chosen if (cls, _non_default(c, defaults)) not in cases]
    return cases


def _tree_cases() -> dict[str, Any]:
    """``{id: () -> cell tree}``: every leaf case alone and in a two-layer MultiRNNCell, every DropoutWrapper
    option pair, a ResidualWrapper around every leaf class, mixed and nested trees, and unbuilt cells."""
    trees: dict[str, Any] = {}
    for case in _leaf_cases():
        cls, opts = case
        name = _case_id(case)
        trees[name] = lambda cls=cls, opts=opts: _leaf(cls, opts)

        def multi(cls=cls, opts=opts):
            first = _leaf(cls, opts)
            return MultiRNNCell([first, _leaf(cls, opts, depth=first.output_size)])

        trees[f"MultiRNNCell[2 x {name}]"] = multi
    multi_defaults = _options(MultiRNNCell, _CELL_SIZES)
    assert set(multi_defaults) == {"state_is_tuple"}
    concat = {"state_is_tuple": False}
    trees["MultiRNNCell(state_is_tuple=False)[BasicLSTMCell, GRUCell]"] = lambda: MultiRNNCell(
        [_leaf(rnnkit.BasicLSTMCell, concat), _leaf(rnnkit.GRUCell, {}, depth=HIDDEN)], state_is_tuple=False
    )
    trees["MultiRNNCell(state_is_tuple=False)[2 x BasicLSTMCell]"] = lambda: MultiRNNCell(
        [_leaf(rnnkit.BasicLSTMCell, concat), _leaf(rnnkit.BasicLSTMCell, concat, depth=HIDDEN)], state_is_tuple=False
    )
    dropout_defaults = _options(rnnkit.DropoutWrapper, _CELL_SIZES)
    values = {k: CELL_VALUES[k] for k in dropout_defaults if k in CELL_VALUES}
    chosen, _ = _pairwise(values, lambda c: True)
    for k, combo in enumerate(chosen):
        cls = LEAVES[k % len(LEAVES)]
        opts = _non_default(combo, dropout_defaults)
        name = f"DropoutWrapper({','.join(f'{a}={b}' for a, b in opts.items())})[{cls.__name__}]"
        trees[name] = lambda cls=cls, opts=opts: rnnkit.DropoutWrapper(_leaf(cls, {}), **opts)
    for cls in LEAVES:  # a residual needs the cell's output size to be its input depth
        trees[f"ResidualWrapper[{cls.__name__}]"] = lambda cls=cls: rnnkit.ResidualWrapper(_leaf(cls, {}, units=INPUT))
        trees[f"unbuilt {cls.__name__}"] = lambda cls=cls: _leaf(cls, {}, depth=None)
    trees["MultiRNNCell[BasicLSTMCell, GRUCell, BasicRNNCell]"] = lambda: MultiRNNCell(
        [_leaf(rnnkit.BasicLSTMCell, {}), _leaf(rnnkit.GRUCell, {}, depth=HIDDEN), _leaf(rnnkit.BasicRNNCell, {},
         depth=HIDDEN)]
    )  # fmt: skip
    trees["MultiRNNCell[DropoutWrapper[LSTMCell(num_proj=2)], ResidualWrapper[LSTMCell(num_proj=2)]]"] = (
        lambda: MultiRNNCell([
            rnnkit.DropoutWrapper(_leaf(rnnkit.LSTMCell, {"num_proj": 2}), 0.9, 0.8),
            rnnkit.ResidualWrapper(_leaf(rnnkit.LSTMCell, {"num_proj": 2}, depth=2)),
        ])
    )  # fmt: skip
    trees["MultiRNNCell[DropoutWrapper[GRUCell], DropoutWrapper[GRUCell]]"] = lambda: MultiRNNCell(
        [rnnkit.DropoutWrapper(_leaf(rnnkit.GRUCell, {}), 0.8), rnnkit.DropoutWrapper(_leaf(rnnkit.GRUCell, {},
         depth=HIDDEN), output_keep_prob=0.7, variational_recurrent=True)]
    )  # fmt: skip
    trees["unbuilt MultiRNNCell[2 x BasicLSTMCell]"] = lambda: MultiRNNCell(
        [_leaf(rnnkit.BasicLSTMCell, {}, depth=None), _leaf(rnnkit.BasicLSTMCell, {}, depth=None)]
    )
    return trees


TREES = _tree_cases()


def _walk(cell: RNNCell) -> list[RNNCell]:
    """Every cell of the tree, depth first."""
    if isinstance(cell, MultiRNNCell):
        return [cell, *(c for child in cell.cells for c in _walk(child))]
    if isinstance(cell, RNNCellWrapper):
        return [cell, *_walk(cell.cell)]
    return [cell]


def _layer_refusal(tree: RNNCell) -> str | None:
    """The reason (a phrase of the message) why no rnnkit layer computes this tree, or None when one does."""
    cells = _walk(tree)
    leaves = [c for c in cells if not isinstance(c, (MultiRNNCell, RNNCellWrapper))]
    if not all(c.built for c in leaves):
        return "not built"
    if any(isinstance(c, rnnkit.ResidualWrapper) for c in cells):
        return "changes the cell's function"
    if len({_KIND[type(c).__name__] for c in leaves}) > 1:
        return "differ in kind"
    leaf = leaves[0]
    if _KIND[type(leaf).__name__] != "RNN" and leaf.activation is not torch.tanh:
        return "activation"
    if getattr(leaf, "proj_clip", None) is not None:
        return "proj_clip"
    return None


def _torch_nn_refusal(tree: RNNCell) -> str | None:
    """The reason why no torch.nn layer computes this tree (given that an rnnkit layer does), or None."""
    leaf = _walk(tree)[-1]
    if isinstance(leaf, rnnkit.GRUCell):
        return "reset gate before"
    if getattr(leaf, "use_peepholes", False):
        return "peepholes"
    if getattr(leaf, "cell_clip", None) is not None:
        return "cell_clip"
    if isinstance(leaf, rnnkit.LayerNormBasicLSTMCell) and leaf.layer_norm:
        return "layer.norm"  # the command says layer_norm (the rnnkit option), the API layer norm (TF's cell)
    return None


def _flat(state: Any) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    return [t for part in state for t in _flat(part)]


def _run_cells(cell: RNNCell, x: torch.Tensor, lengths=None, seed: int | None = None) -> list[torch.Tensor]:
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        outputs, state = rnnkit.dynamic_rnn(cell, x, sequence_length=lengths)
    return [outputs, *_flat(state)]


@pytest.mark.parametrize("name", TREES)
def test_cell_tree_save_load_is_exact(name, tmp_path):
    tree = TREES[name]()
    built = all(c.built for c in _walk(tree))
    x = torch.randn(BATCH, STEPS, INPUT)
    for training in (False, True):
        tree.train(training)
        save(tree, tmp_path / "c.safetensors")
        again = load(tmp_path / "c.safetensors")
        assert module_config(again) == module_config(tree)
        assert [type(c) for c in _walk(again)] == [type(c) for c in _walk(tree)]
        assert all(c.training == training for c in _walk(again))
        if not built:  # no weights yet: the reloaded tree is unbuilt too, and builds on its first inputs
            assert not any(c.built for c in _walk(again) if not isinstance(c, (MultiRNNCell, RNNCellWrapper)))
            continue
        _equal(list(again.state_dict().values()), list(tree.state_dict().values()))
        _equal(_run_cells(again, x, LENGTHS, seed=3), _run_cells(tree, x, LENGTHS, seed=3))


@pytest.mark.parametrize("name", TREES)
def test_cell_tree_convert_command_round_trips_or_refuses(name, tmp_path, capsys):
    tree = TREES[name]().eval()
    save(tree, tmp_path / "src.safetensors")
    if not all(c.built for c in _walk(tree)):
        code, out, err = _convert(capsys, tmp_path / "src.safetensors", tmp_path / "m.onnx")
        assert code == 2 and "not built" in err and not (tmp_path / "m.onnx").exists()
        return
    x = torch.randn(BATCH, STEPS, INPUT)
    want = _run_cells(tree, x, LENGTHS)

    code, out, err = _convert(capsys, tmp_path / "src.safetensors", tmp_path / "copy.safetensors")
    assert code == 0, err
    _equal(_run_cells(load(tmp_path / "copy.safetensors"), x, LENGTHS), want)

    refusal = _layer_refusal(tree)
    code, out, err = _convert(capsys, tmp_path / "src.safetensors", tmp_path / "m.onnx", "--sequence-lens")
    if refusal is not None:
        assert code == 2 and re.search(refusal, err) and not (tmp_path / "m.onnx").exists(), err
        with pytest.raises(ValueError, match=refusal):
            cells_to_torch(tree)
        return
    assert code == 0, err
    session = _session(str(tmp_path / "m.onnx"))
    hidden = tuple(torch.zeros(int(i.shape[0]), BATCH, int(i.shape[2])) for i in session.get_inputs()[1:3]
                   if i.name in ("h_0", "c_0"))  # fmt: skip
    _close(_ort_run(session, x, hidden, LENGTHS)[:1], want[:1])
    code, out, err = _convert(capsys, tmp_path / "m.onnx", tmp_path / "back.safetensors")
    assert code == 0, err
    back = load(tmp_path / "back.safetensors")
    assert back.batch_first
    _close(_run(back, x, hidden, LENGTHS)[:1], want[:1])

    code, out, err = _convert(capsys, tmp_path / "src.safetensors", tmp_path / "m.pt")
    refusal = _torch_nn_refusal(tree)
    if refusal is not None:
        assert code == 2 and re.search(refusal, err) and not (tmp_path / "m.pt").exists(), err
        with pytest.raises(ValueError, match=refusal):
            cells_to_torch(tree, target="torch.nn")
        return
    assert code == 0, err
    leaf = _walk(tree)[-1]
    kind = _KIND[type(leaf).__name__]
    kwargs = {"num_layers": len(tree.cells) if isinstance(tree, MultiRNNCell) else 1, "batch_first": True}
    if kind == "LSTM":
        kwargs["proj_size"] = getattr(leaf, "num_proj", None) or 0
    if kind == "RNN":
        kwargs["nonlinearity"] = "relu" if leaf.activation is torch.relu else "tanh"
    reference = getattr(torch.nn, kind)(INPUT, leaf.num_units, **kwargs)
    reference.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*projections is not supported with oneDNN")
        got = reference(x)[0]
    _close([got], _run_cells(tree, x)[:1])


def test_cells_that_hold_functions_or_torch_layout_steps_are_refused_by_save(tmp_path):
    """A function (``dropout_state_filter_visitor``, ``residual_fn``) is not serialisable; the torch-layout step
    cells (``TorchLSTMCell`` ...) belong to a layer, which is what to save."""
    for cls in WRAPPERS:
        for option, fn in CELL_FUNCTIONS.items():
            if option in _options(cls, _CELL_SIZES):
                cell = cls(_leaf(rnnkit.GRUCell, {}, units=INPUT), **{option: fn})
                with pytest.raises(ValueError, match=f"{option}, a function that is not serialisable"):
                    save(cell, tmp_path / "f.safetensors")
    for cls in TORCH_STEPS:
        layer = {"TorchLSTMCell": rnnkit.LSTM, "TorchGRUCell": rnnkit.GRU, "TorchRNNCell": rnnkit.RNN}[cls.__name__]
        step = layer(INPUT, HIDDEN)._cell(0, 0)
        assert type(step) is cls
        with pytest.raises(TypeError, match=f"cannot save a {cls.__name__}"):
            save(step, tmp_path / "f.safetensors")
    assert not (tmp_path / "f.safetensors").exists()


# -- forget_bias: what a TF1 checkpoint does not store -----------------------------------------------------------
TF_CKPT = Path(__file__).parent / "fixtures" / "tf_ckpt"  # real TF 2.21 compat.v1 checkpoints and outputs
_ASSUMED = (
    r"forget_bias=1.0 assumed for the \w+ at '[\w/]+' .* Pass forget_bias= \(rnnkit convert: --forget-bias\) with the "
    r"value the TF code used"
)


def _tf_readers(case: str) -> dict[str, Any]:
    """Every reader of TF1 variables that needs a forget bias, as ``name: (**options) -> result``."""
    variables = read_tf_checkpoint(TF_CKPT / case)
    return {
        "load_tf_checkpoint": lambda **kw: load_tf_checkpoint(TF_CKPT / case, **kw),
        "cells_from_tf_variables": lambda **kw: cells_from_tf_variables(variables, **kw),
        "tf_to_torch": lambda **kw: tf_to_torch(variables, **kw),
    }


@pytest.mark.parametrize("case", ["multi_basic_lstm", "bidirectional_lstm", "lstm_peephole_proj"])
def test_tf_readers_warn_once_when_they_assume_the_forget_bias(case):
    meta = json.loads((TF_CKPT / case / "meta.json").read_text())
    options = {k: meta[k] for k in ("cell_clip",) if k in meta}  # proj_clip: no torch layout for tf_to_torch
    for name, read in _tf_readers(case).items():
        with pytest.warns(AssumedForgetBiasWarning, match=_ASSUMED) as record:
            assumed = read(**options)
        assert len(record) == 1 and record[0].filename == __file__, (name, [str(w.message) for w in record])
        assert str(record[0].message).startswith(f"{name}: ")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # passing it, whatever value, silences the warning
            explicit = read(forget_bias=1.0, **options)
            read(forget_bias=0.0, **options)
        if name == "tf_to_torch":
            assert assumed[1] == explicit[1] and assumed[1].forget_bias == 1.0
        else:
            assert [c.forget_bias for c in assumed.cells_fw + assumed.cells_bw] == [1.0] * len(assumed.cells_fw) * (
                2 if assumed.cells_bw else 1
            )


def test_the_assumed_forget_bias_is_wrong_for_a_model_trained_with_another():
    """TF ran lstm_peephole_proj with forget_bias=0.7: assuming 1.0 is off, passing 0.7 matches TF (1e-5)."""
    expected = np.load(TF_CKPT / "lstm_peephole_proj" / "expected.npz")
    x, lengths = torch.from_numpy(expected["inputs"]), expected["sequence_length"]
    want = torch.from_numpy(expected["outputs"])
    clips = {"cell_clip": 0.5, "proj_clip": 0.4}
    with pytest.warns(AssumedForgetBiasWarning):
        assumed = load_tf_checkpoint(TF_CKPT / "lstm_peephole_proj", **clips)
    assert (assumed.run(x, lengths)[0] - want).abs().max() > 1e-3
    passed = load_tf_checkpoint(TF_CKPT / "lstm_peephole_proj", forget_bias=0.7, **clips)
    torch.testing.assert_close(passed.run(x, lengths)[0], want, rtol=0, atol=TOL)


def test_tf_readers_do_not_warn_for_stacks_without_lstm_cells():
    for case in ("gru", "basic_rnn"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for read in _tf_readers(case).values():
                read()


def test_convert_command_reports_the_assumed_forget_bias(tmp_path, capsys):
    src = TF_CKPT / "multi_basic_lstm"
    code, out, err = _convert(capsys, src, tmp_path / "a.safetensors")  # no Python warning escapes (filter: error)
    assert code == 0, err
    warning_lines = [line.strip() for line in out.splitlines() if "assumed" in line]
    assert len(warning_lines) == 1 and re.fullmatch("warning: cells_from_tf_variables: " + _ASSUMED, warning_lines[0])
    assert load(tmp_path / "a.safetensors").forget_bias == 1.0
    code, out, err = _convert(capsys, src, tmp_path / "b.safetensors", "--forget-bias", "0.0")
    assert code == 0, err
    assert "assumed" not in out and "warning" not in out
    assert load(tmp_path / "b.safetensors").forget_bias == 0.0
    code, out, err = _convert(capsys, TF_CKPT / "gru", tmp_path / "c.safetensors")
    assert code == 0 and "assumed" not in out and "warning" not in out, out


def test_layer_norm_with_projection_has_no_tf_cell():
    """TF's LayerNormBasicLSTMCell has no projection: the TF converters refuse the layer instead of dropping W_hr."""
    layer = rnnkit.LSTM(INPUT, HIDDEN, proj_size=2, layer_norm=True, bias=False)
    config = LayerConfig.from_module(layer)
    assert (config.layer_norm, config.proj_size) == (True, 2)
    with pytest.raises(ValueError, match=r"LSTM\(layer_norm=True, proj_size=2\) has no TF1 cell"):
        torch_to_tf(layer.state_dict(), config)
    with pytest.raises(ValueError, match=r"LSTM\(layer_norm=True, proj_size=2\) has no TF1 cell"):
        torch_to_cells(layer.state_dict(), config)
    params = {k[: -len("_l0")]: v for k, v in layer.state_dict().items()}
    with pytest.raises(ValueError, match="weight_hr .*no projection"):
        torch_ln_lstm_to_tf(params)
