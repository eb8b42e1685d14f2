"""TF's kernels as the engine reads them: the LSTM kernel in torch's layout (the torch path's weight map, one
autograd node), and the fused path's views of the GRU's two kernels.

It must equal the plain definition exactly (pure data movement, plus ``forget_bias`` on the forget
block): ``W_ih = reorder(kernel[:I]).T``, ``W_hh = reorder(kernel[I:]).T``, ``b_ih = reorder(bias)``
with TF blocks (i, j, f, o) -> torch rows (i, f, g, o); and so must their gradients.
"""

from __future__ import annotations

import importlib

import pytest
import torch

_tf_weights = importlib.import_module("rnnkit.gates")  # the engine's TF weight map lives there


def _definition(kernel, bias, depth, forget_bias):
    n = bias.shape[0] // 4

    def reorder(w):
        return torch.cat([w[:n], w[2 * n : 3 * n], w[n : 2 * n], w[3 * n :]])

    b = torch.cat([bias[:n], bias[2 * n : 3 * n] + forget_bias, bias[n : 2 * n], bias[3 * n :]])
    return reorder(kernel[:depth].t()), reorder(kernel[depth:].t()), b


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(70, 30, 40), (7, 3, 5), (9, 9, 2), (9, 0, 2)])  # (I + P, I, H)
def test_weight_map_is_exact_with_gradients(dtype, shape):
    width, depth, hidden = shape
    torch.manual_seed(0)
    kernel = torch.randn(width, 4 * hidden, dtype=dtype, requires_grad=True)
    bias = torch.randn(4 * hidden, dtype=dtype, requires_grad=True)
    ref = _definition(kernel, bias, depth, 0.7)
    upstream = [torch.randn_like(r) for r in ref]
    ref_grads = torch.autograd.grad(ref, (kernel, bias), upstream)
    got = _tf_weights._TFKernelAsTorch.apply(kernel, bias, depth, 0.7)
    for a, b in zip(got, ref, strict=True):
        assert a.is_contiguous() and torch.equal(a, b)
    grads = torch.autograd.grad(got, (kernel, bias), upstream)
    for a, b in zip(grads, ref_grads, strict=True):
        assert torch.equal(a, b)
    # Only one output used: the others' gradients are zeros.
    (g_kernel,) = torch.autograd.grad(got[1].sum(), (kernel,))
    assert torch.equal(g_kernel, torch.autograd.grad(ref[1].sum(), (kernel,))[0])


def test_weight_map_second_order():
    kernel = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(8, dtype=torch.float64, requires_grad=True)
    fn = lambda k, b: _tf_weights._TFKernelAsTorch.apply(k, b, 4, 0.5)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (kernel, bias))
    assert torch.autograd.gradgradcheck(fn, (kernel, bias))


def _saved_bytes(fn, exclude):
    """Bytes of distinct storages autograd keeps for backward during ``fn()``, ``exclude`` left out."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in skip:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def test_tf_gru_keeps_its_kernels_not_their_copies_for_backward():
    """TF's GRUCell has two kernels; the fused kernel reads each where it is (its row blocks, views), so backward
    keeps the kernels themselves, no copy: what stays is the activations only, here by formula
    G (T*B, 3H) + y (T*B, H) float32 (the input is excluded; h0 (B, H) and the biases (3H) do not grow with T)."""
    import rnnkit as rk
    from rnnkit import engine

    T, B, I, H = 20, 2, 6, 8
    cell = rk.GRUCell(H)
    cell.build(I)
    x = torch.randn(T, B, I)
    with engine.use("fused"):
        saved, (out, _) = _saved_bytes(lambda: rk.dynamic_rnn(cell, x, time_major=True), [x, *cell.parameters()])
    activations = 4 * (T * B * 3 * H + T * B * H)
    # + h0 (B, H) and the joined biases (3H): a higher-order backward recomputes the forward from them
    assert activations <= saved <= activations + 4 * B * H + 4 * 3 * H + 4 * 16
    with engine.use("reference"):
        ref, _ = rk.dynamic_rnn(cell, x, time_major=True)
    grads = torch.autograd.grad(out.pow(2).sum(), list(cell.parameters()))
    ref_grads = torch.autograd.grad(ref.pow(2).sum(), list(cell.parameters()))
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with engine.use("fused"):
        out, _ = rk.dynamic_rnn(cell, x, time_major=True)
    with torch.no_grad():
        cell.candidate.kernel.add_(1.0)  # an optimizer step before backward: refused, as autograd refuses it
    with pytest.raises(RuntimeError, match="inplace"):
        out.sum().backward()
