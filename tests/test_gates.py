"""rnnkit.gates: the one table of gate orders, checked against hand-written block orders of each format
(/work/shared/conventions.md, verified against the real libraries) and against the engine's kernels.

Each reference below is spelled out by hand (block indices written for the case), never derived from the table.
"""

from __future__ import annotations

import importlib

import pytest
import torch

import rnnkit
from rnnkit import gates


def _blocks(x: torch.Tensor, order: list[int], n: int) -> torch.Tensor:
    """``x``'s blocks of ``n`` rows in ``order``, by hand."""
    return torch.cat([x[k * n : (k + 1) * n] for k in order])


# (family, src, dst, the block of src at each position of dst), written from the formats' documentation
HAND_ORDERS = [
    ("LSTM", "tf", "torch", [0, 2, 1, 3]),  # i j f o -> i f g o
    ("LSTM", "torch", "tf", [0, 2, 1, 3]),
    ("LSTM", "torch", "onnx", [0, 3, 1, 2]),  # i f g o -> i o f c
    ("LSTM", "onnx", "torch", [0, 2, 3, 1]),
    ("LSTM", "keras", "torch", [0, 1, 2, 3]),  # i f c o is torch's order
    ("LSTM", "tf", "onnx", [0, 3, 2, 1]),  # i j f o -> i o f c
    ("GRU", "torch", "keras", [1, 0, 2]),  # r z n -> z r h
    ("GRU", "onnx", "torch", [1, 0, 2]),
    ("GRU", "tf", "torch", [0, 1, 2]),  # r u + candidate -> r z n
    ("GRU", "keras", "onnx", [0, 1, 2]),
    ("RNN", "tf", "onnx", [0]),
]


@pytest.mark.parametrize("family,src,dst,order", HAND_ORDERS)
def test_relayout_matches_the_hand_written_block_orders(family, src, dst, order):
    n = 3
    x = torch.randn(len(order) * n, 5)
    assert gates.permutation(family, src, dst) == tuple(order)
    assert torch.equal(gates.relayout(x, family, src, dst), _blocks(x, order, n))
    # along another axis (TF and Keras keep gates in columns)
    assert torch.equal(gates.relayout(x.t(), family, src, dst, dim=1), _blocks(x, order, n).t())
    # back again is the identity
    assert torch.equal(gates.relayout(gates.relayout(x, family, src, dst), family, dst, src), x)


def test_the_kernels_gate_order_is_what_the_engine_passes():
    # The fused kernels take `gate_order` = where each of their gates (i, g, f, o) sits in the weights they read;
    # the engine's leaves spell those for TF's and torch's layouts.
    params = importlib.import_module("rnnkit.engine.params")
    assert gates.permutation("LSTM", "tf", "kernel") == params.TF_KERNEL.gate_order == (0, 1, 2, 3)
    assert gates.permutation("LSTM", "torch", "kernel") == params.TORCH_WEIGHTS.gate_order == (0, 2, 1, 3)


def test_forget_bias_lands_on_each_layouts_forget_block():
    h = 2
    for layout, block in (("tf", 2), ("torch", 1), ("keras", 1), ("onnx", 2)):
        got = gates.add_to_gate(torch.zeros(4 * h), 1.5, "LSTM", layout, "f")
        want = torch.zeros(4 * h)
        want[block * h : (block + 1) * h] = 1.5
        assert torch.equal(got, want), layout
    x = torch.ones(8)
    assert gates.add_to_gate(x, 0.0, "LSTM", "torch", "f") is x  # nothing to add: no copy


def test_a_torch_lstm_round_trips_through_onnx_blocks_exactly():
    lstm = torch.nn.LSTM(3, 4)
    w = lstm.weight_ih_l0.detach()
    onnx_w = gates.relayout(w, "LSTM", "torch", "onnx")
    # ONNX's o block is torch's 4th, its c block torch's 3rd (by hand)
    assert torch.equal(onnx_w[4:8], w[12:16]) and torch.equal(onnx_w[12:16], w[8:12])
    assert torch.equal(gates.relayout(onnx_w, "LSTM", "onnx", "torch"), w)


def test_relayout_is_differentiable():
    x = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: gates.relayout(t, "LSTM", "tf", "onnx"), (x,))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="not 4 equal LSTM blocks"):
        gates.relayout(torch.zeros(6), "LSTM", "tf", "torch")
    with pytest.raises(ValueError, match="family must be one of"):
        gates.gate_order("LSTMx", "tf")
    with pytest.raises(ValueError, match="layout must be one of"):
        gates.gate_order("GRU", "cudnn")


def test_the_save_format_is_one_module_reached_by_every_old_name():
    assert rnnkit.save is rnnkit.saving.save is rnnkit.convert.save
    assert rnnkit.load is rnnkit.saving.load is rnnkit.convert.load
