"""Cross-cutting checks driven by the one cell registry: gradcheck, dtypes, state-dict round trips, golden names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import rnnkit as rk
from cell_registry import CELLS, EXAMPLES, INPUT_DEPTH, MISSING
from rnnkit._structure import flatten, pack_as

GOLDEN = Path(__file__).parent / "golden" / "cell_params.json"
B, T = 3, 4


def test_every_registered_cell_has_examples():
    """Each cell, stack and wrapper class rnnkit registers has examples here, so it runs in every test below."""
    assert MISSING == [], f"registered cell classes without an example in tests/cell_registry.py: {MISSING}"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_examples_build_the_class_they_are_filed_under(name):
    assert {type(make()) for make in EXAMPLES[name].values()} == {rk.cells.cell_class(name)}


def _built(name: str, dtype=torch.float64) -> rk.RNNCell:
    cell = CELLS[name]()
    cell.build(INPUT_DEPTH)
    return cell.to(dtype)


def _perturb(cell: rk.RNNCell) -> None:
    """Random non-default parameters, so that zero biases and unit gains do not hide terms."""
    with torch.no_grad():
        for p in cell.parameters():
            p.uniform_(-0.8, 0.8)


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("lengths", [None, [4, 2, 0]])
def test_gradcheck_dynamic_rnn(name, lengths):
    """float64 gradcheck through dynamic_rnn, w.r.t. inputs, initial state and every parameter."""
    cell = _built(name)
    _perturb(cell)
    cell.eval()
    x = torch.randn(B, T, INPUT_DEPTH, dtype=torch.float64, requires_grad=True)
    s0 = [leaf.requires_grad_() for leaf in flatten(cell.zero_state(B, torch.float64))]
    for leaf in s0:
        with torch.no_grad():
            leaf.uniform_(-0.5, 0.5)
    params = list(cell.parameters())

    def fn(x, *leaves_and_params):
        leaves = leaves_and_params[: len(s0)]
        initial = pack_as(cell.state_size, leaves)
        out, state = rk.dynamic_rnn(cell, x, sequence_length=lengths, initial_state=initial)
        return (out, *flatten(state))

    assert torch.autograd.gradcheck(fn, (x, *s0, *params), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["dropout_wrapper", "layer_norm_lstm"])
def test_gradcheck_training_mode_with_fixed_masks(name):
    """Dropout paths differentiate too: the same seed gives the same masks on every evaluation."""
    cell = CELLS[name]() if name != "layer_norm_lstm" else rk.LayerNormBasicLSTMCell(4, dropout_keep_prob=0.6)
    cell.build(INPUT_DEPTH)
    cell.double().train()
    x = torch.randn(B, T, INPUT_DEPTH, dtype=torch.float64, requires_grad=True)

    def fn(x):
        torch.manual_seed(123)
        return rk.dynamic_rnn(cell, x, sequence_length=[4, 3, 1])[0]

    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lower_precision_tracks_float64(name, dtype):
    """The same cell in float32/bfloat16 returns that dtype and stays close to its float64 result."""
    ref = _built(name).eval()
    low = _built(name, dtype).eval()
    low.load_state_dict(ref.state_dict())
    x = torch.randn(B, T, INPUT_DEPTH, dtype=torch.float64)
    out_ref, state_ref = rk.dynamic_rnn(ref, x, sequence_length=[4, 1, 3])
    out_low, state_low = rk.dynamic_rnn(low, x.to(dtype), sequence_length=[4, 1, 3])
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    assert out_low.dtype == dtype
    torch.testing.assert_close(out_low.double(), out_ref, atol=tol, rtol=tol)
    for a, b in zip(flatten(state_low), flatten(state_ref), strict=True):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b, atol=tol, rtol=tol)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_state_dict_round_trip(name):
    """A state dict loads into a fresh cell of the same configuration, which then computes the same thing."""
    a = _built(name, torch.float32).eval()
    _perturb(a)
    b = CELLS[name]()
    b.build(INPUT_DEPTH)
    b.eval().load_state_dict(a.state_dict())
    x = torch.randn(B, T, INPUT_DEPTH)
    out_a, state_a = rk.dynamic_rnn(a, x)
    out_b, state_b = rk.dynamic_rnn(b, x)
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(p, q) for p, q in zip(flatten(state_a), flatten(state_b), strict=True))


def _param_table() -> dict:
    table = {}
    for name in sorted(CELLS):
        cell = CELLS[name]()
        cell.build(INPUT_DEPTH)
        table[name] = {k: list(v.shape) for k, v in cell.state_dict().items()}
    return table


def test_parameter_names_and_shapes_are_frozen():
    """Parameter names mirror TF's variable names; the golden file freezes them (regenerate deliberately with
    RNNKIT_REGEN_GOLDEN=1)."""
    table = _param_table()
    if os.environ.get("RNNKIT_REGEN_GOLDEN"):
        lines = [f"  {json.dumps(name)}: {json.dumps(params)}" for name, params in sorted(table.items())]
        GOLDEN.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    assert table == json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("name", sorted(CELLS))
def test_zero_state_follows_state_size(name):
    cell = _built(name, torch.float32)
    state = cell.zero_state(5, torch.float64)
    sizes = flatten(cell.state_size)
    leaves = flatten(state)
    assert [tuple(s.shape) for s in leaves] == [(5, n) for n in sizes]
    assert all(s.dtype == torch.float64 and not s.any() for s in leaves)


@pytest.mark.parametrize("name", ["multi", "dropout_wrapper", "residual_wrapper"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_lazy_build_gives_nested_cells_the_input_dtype(name, dtype):
    """A composite cell built by its first call builds every sub-cell in the inputs' dtype."""
    cell = CELLS[name]()
    out, state = rk.dynamic_rnn(cell, torch.randn(B, T, INPUT_DEPTH, dtype=dtype))
    assert out.dtype == dtype
    assert {p.dtype for p in cell.parameters()} == {dtype}
