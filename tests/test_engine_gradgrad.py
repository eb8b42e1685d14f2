"""Second-order gradients on the default engine (``auto``): every layer family and every registry cell.

The fused kernels' backward is hand-written; a backward asked for with ``create_graph=True`` must still give a
differentiable gradient (gradient penalties, MAML, Hessian-vector products). ``gradgradcheck`` compares the
analytic second derivatives with finite differences of the first (float64); the reference loop (plain autograd)
is the second oracle, and no second-order gradient may come back ``None``.
"""

from __future__ import annotations

import pytest
import torch

import rnnkit as rk
from cell_registry import CELLS, INPUT_DEPTH
from rnnkit._structure import flatten, pack_as

B, T = 3, 3
# fast_mode: finite differences along random directions (torch checks every input and output in each), so the
# whole matrix of second derivatives is not built column by column.
TOL = {"eps": 1e-6, "atol": 1e-5, "rtol": 1e-4, "fast_mode": True}


def _uniform(*tensors: torch.Tensor, bound: float = 0.8) -> None:
    with torch.no_grad():
        for t in tensors:
            t.uniform_(-bound, bound)


def _cell(name: str) -> rk.RNNCell:
    cell = CELLS[name]()
    cell.build(INPUT_DEPTH)
    cell.double().eval()
    _uniform(*cell.parameters())
    return cell


def _second_order(fn, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor | None]:
    """d/d(inputs) of |d(sum out^2)/d(inputs)|^2: a gradient-penalty-shaped second derivative."""
    outputs = fn(*inputs)
    loss = sum(o.pow(2).sum() for o in outputs)
    grads = torch.autograd.grad(loss, inputs, create_graph=True, allow_unused=True)
    penalty = sum(g.pow(2).sum() for g in grads if g is not None)
    return list(torch.autograd.grad(penalty, inputs, allow_unused=True))


def _check(fn, inputs: tuple[torch.Tensor, ...]) -> None:
    second = _second_order(fn, inputs)
    assert all(g is not None for g in second), [k for k, g in enumerate(second) if g is None]
    with rk.engine.use("reference"):
        expected = _second_order(fn, inputs)
    for got, want in zip(second, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-7)
    assert torch.autograd.gradgradcheck(fn, inputs, **TOL)


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("lengths", [None, [3, 1, 0]])
def test_gradgrad_dynamic_rnn(name, lengths):
    """Every registry cell through ``dynamic_rnn``, w.r.t. inputs, initial state and every parameter."""
    cell = _cell(name)
    x = torch.randn(B, T, INPUT_DEPTH, dtype=torch.float64, requires_grad=True)
    s0 = [leaf.requires_grad_() for leaf in flatten(cell.zero_state(B, torch.float64))]
    _uniform(*s0, bound=0.5)
    params = list(cell.parameters())

    def fn(x, *rest):
        initial = pack_as(cell.state_size, rest[: len(s0)])
        out, state = rk.dynamic_rnn(cell, x, sequence_length=lengths, initial_state=initial)
        return (out, *flatten(state))

    _check(fn, (x, *s0, *params))


@pytest.mark.parametrize("runner", ["bidirectional_dynamic_rnn", "stack_bidirectional_dynamic_rnn"])
@pytest.mark.parametrize("lengths", [None, [3, 2, 1]])
def test_gradgrad_bidirectional_runners(runner, lengths):
    fw, bw = rk.BasicLSTMCell(3, input_size=INPUT_DEPTH), rk.GRUCell(2, input_size=INPUT_DEPTH)
    for c in (fw, bw):
        c.double()
        _uniform(*c.parameters())
    x = torch.randn(B, T, INPUT_DEPTH, dtype=torch.float64, requires_grad=True)
    params = [*fw.parameters(), *bw.parameters()]

    def fn(x, *_params):
        if runner == "bidirectional_dynamic_rnn":
            (out_fw, out_bw), states = rk.bidirectional_dynamic_rnn(fw, bw, x, sequence_length=lengths, dtype=x.dtype)
            return (out_fw, out_bw, *flatten(states))
        out, s_fw, s_bw = rk.stack_bidirectional_dynamic_rnn([fw], [bw], x, sequence_length=lengths, dtype=x.dtype)
        return (out, *flatten(s_fw), *flatten(s_bw))

    _check(fn, (x, *params))


LAYERS = {
    "rnn_tanh": lambda: rk.RNN(INPUT_DEPTH, 3, num_layers=2),
    "rnn_relu_bi": lambda: rk.RNN(INPUT_DEPTH, 3, nonlinearity="relu", bidirectional=True),
    "lstm": lambda: rk.LSTM(INPUT_DEPTH, 3, num_layers=2),
    "lstm_bi_proj": lambda: rk.LSTM(INPUT_DEPTH, 3, bidirectional=True, proj_size=2),
    "lstm_tf_variants": lambda: rk.LSTM(INPUT_DEPTH, 3, forget_bias=1.0, peepholes=True, cell_clip=0.9),
    "lstm_layer_norm": lambda: rk.LSTM(INPUT_DEPTH, 3, layer_norm=True),
    "gru": lambda: rk.GRU(INPUT_DEPTH, 3, num_layers=2, bidirectional=True),
    "gru_reset_before": lambda: rk.GRU(INPUT_DEPTH, 3, reset_after=False),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("lengths", [None, [3, 1, 2]])
def test_gradgrad_layers(name, lengths):
    """``rnnkit.RNN/LSTM/GRU``, multi-layer and bidirectional, w.r.t. input, initial state and every weight."""
    layer = LAYERS[name]().double().eval()
    _uniform(*layer.parameters())
    x = torch.randn(T, B, INPUT_DEPTH, dtype=torch.float64, requires_grad=True)
    directions = 2 if layer.bidirectional else 1
    h_size = getattr(layer, "proj_size", 0) or layer.hidden_size
    h0 = torch.randn(layer.num_layers * directions, B, h_size, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(layer.num_layers * directions, B, 3, dtype=torch.float64, requires_grad=True)
    lstm = isinstance(layer, rk.LSTM)
    params = list(layer.parameters())

    def fn(x, h0, *rest):
        state = (h0, rest[0]) if lstm else h0
        out, final = layer(x, state, lengths=lengths) if lengths else layer(x, state)
        return (out, *flatten(final))

    _check(fn, (x, h0, *([c0] if lstm else []), *params))


def test_gradgrad_compiled_and_twin_kernels_agree():
    """The recomputation serves both fused kernels: the compiled extension and the pure-PyTorch twin."""
    layer = rk.GRU(INPUT_DEPTH, 3, reset_after=False).double()
    _uniform(*layer.parameters())
    x = torch.randn(T, B, INPUT_DEPTH, dtype=torch.float64, requires_grad=True)

    def fn(x):
        return (layer(x)[0],)

    results = []
    for kernels in ("compiled", "python"):
        with rk.engine.use("fused", kernels=kernels):
            results.append(_second_order(fn, (x,))[0])
    torch.testing.assert_close(results[0], results[1], atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize(
    "make",
    [
        lambda: rk.DropoutWrapper(rk.LSTMCell(3, num_proj=2), 0.8, 0.7, 0.6, variational_recurrent=True),
        lambda: rk.MultiRNNCell([rk.GRUCell(3), rk.DropoutWrapper(rk.BasicRNNCell(2), 1.0, 0.7, 0.6, True)]),
    ],
)
def test_gradgrad_training_masks(make):
    """Training-time variational masks reach the kernels as saved inputs; the same seed gives the same masks on
    every evaluation, so finite differences see one function."""
    cell = make()
    cell.build(INPUT_DEPTH)
    cell.double().train()
    _uniform(*cell.parameters())
    x = torch.randn(B, T, INPUT_DEPTH, dtype=torch.float64, requires_grad=True)
    params = list(cell.parameters())

    def fn(x, *_params):
        torch.manual_seed(5)
        out, state = rk.dynamic_rnn(cell, x, sequence_length=[3, 2, 1])
        return (out, *flatten(state))

    assert rk.engine.explain(cell, x.transpose(0, 1)) != ["reference"]
    _check(fn, (x, *params))


def test_gradgrad_layer_recurrent_dropout_in_training():
    layer = rk.LSTM(INPUT_DEPTH, 3, recurrent_dropout=0.3).double().train()
    _uniform(*layer.parameters())
    x = torch.randn(T, B, INPUT_DEPTH, dtype=torch.float64, requires_grad=True)

    def fn(x, *_params):
        torch.manual_seed(5)
        out, (h, c) = layer(x)
        return out, h, c

    _check(fn, (x, *layer.parameters()))


@pytest.mark.parametrize("make", [LAYERS["lstm"], LAYERS["gru_reset_before"]])
def test_functorch_transforms_and_batched_gradients(make):
    """vmap, jacrev and gradcheck's batched-gradient check (a vmap over the backward) on the fused paths: the
    compiled kernels have no batching rule, so transforms take the same forward in torch ops."""
    layer = make().double()
    _uniform(*layer.parameters())
    x = torch.randn(T, B, INPUT_DEPTH, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: layer(x)[0], (x,), check_batched_grad=True, **TOL)
    jac = torch.func.jacrev(lambda x: layer(x)[0])(x)
    with rk.engine.use("reference"):
        want = torch.func.jacrev(lambda x: layer(x)[0])(x)
        batch = torch.randn(4, T, B, INPUT_DEPTH, dtype=torch.float64)
        want_vmap = torch.stack([layer(b)[0] for b in batch])
    torch.testing.assert_close(jac, want, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(torch.func.vmap(lambda b: layer(b)[0])(batch), want_vmap, atol=1e-10, rtol=1e-8)
