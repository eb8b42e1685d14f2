"""TF's kernels as the fused and torch kernels take them: row blocks for the fused kernels, torch's layout
for oneDNN/cuDNN. Each is one autograd node whose backward is the same re-layout of the gradient.

* ``split_kernel``: a TF kernel ``(I + R, N)`` -> ``w_x (I, N)``, ``w_h (R, N)``, views.
* ``tf_lstm_as_torch``: TF's LSTM ``kernel (I + P, 4H)`` (i, j, f, o) + ``bias`` + ``forget_bias`` -> torch's
  ``w_ih, w_hh, b_ih, b_hh(, w_hr)``, cached without autograd until a parameter changes.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor

__all__ = ["split_kernel", "tf_lstm_as_torch"]


class _SplitKernel(torch.autograd.Function):
    """TF kernel ``(I + R, N)`` -> ``w_x (I, N)``, ``w_h (R, N)``: two views, one autograd node.

    Its backward returns the two gradients joined as the kernel's without a copy when they are adjacent rows of
    one buffer (the fused kernels write them so). Slicing under autograd instead gives each slice a zero-filled
    gradient of the whole kernel and then adds them: at small sizes those fills cost more than the recurrent
    kernel's own backward over a step.
    """

    @staticmethod
    def forward(ctx: Any, depth: int, kernel: Tensor) -> Any:
        ctx.depth, ctx.shape = depth, kernel.shape
        return kernel[:depth], kernel[depth:]

    @staticmethod
    def backward(ctx: Any, g_x: Tensor | None, g_h: Tensor | None) -> Any:
        joined = _joined_rows(g_x, g_h)
        if joined is not None:
            return None, joined
        like = g_x if g_x is not None else g_h
        assert like is not None
        rows, width = ctx.shape
        g_x = g_x if g_x is not None else like.new_zeros(ctx.depth, width)
        g_h = g_h if g_h is not None else like.new_zeros(rows - ctx.depth, width)
        return None, torch.cat([g_x, g_h])  # (I + R, N)


def _joined_rows(top: Tensor | None, bottom: Tensor | None) -> Tensor | None:
    """``cat([top, bottom])`` without a copy when ``bottom``'s rows directly follow ``top``'s in memory."""
    if top is None or bottom is None or not (top.is_contiguous() and bottom.is_contiguous()):
        return None
    same = top.untyped_storage().data_ptr() == bottom.untyped_storage().data_ptr()
    if not same or top.shape[1] != bottom.shape[1] or bottom.storage_offset() != top.storage_offset() + top.numel():
        return None
    return top.as_strided((top.shape[0] + bottom.shape[0], top.shape[1]), top.stride(), top.storage_offset())


def split_kernel(depth: int, kernel: Tensor) -> tuple[Tensor, Tensor]:
    """``(w_x (I, N), w_h (R, N))``: the row blocks of a TF kernel ``(I + R, N)``, as views."""
    if torch.is_grad_enabled() and kernel.requires_grad:
        return _SplitKernel.apply(depth, kernel)
    return kernel[:depth], kernel[depth:]


_SWAP_JF: dict[torch.device, Tensor] = {}


def _swap_jf(device: torch.device) -> Tensor:
    """Block permutation TF (i, j, f, o) <-> torch (i, f, g, o): swaps blocks 1 and 2, so it is its own inverse."""
    idx = _SWAP_JF.get(device)
    if idx is None:
        idx = _SWAP_JF[device] = torch.tensor([0, 2, 1, 3], device=device)
    return idx


class _TFKernelAsTorch(torch.autograd.Function):
    """TF's LSTM ``kernel (I + P, 4H)``, ``bias (4H,)`` -> torch's ``w_ih (4H, I)``, ``w_hh (4H, P)``, ``b_ih (4H,)``.

    One autograd node instead of a graph of slices and cats (per call, the graph's own bookkeeping cost more
    than the copies at small sizes): forward is a block gather on the contiguous kernel plus one transposing
    copy per weight; backward is the same permutation applied to the gradients (it is its own inverse).
    ``forget_bias`` is added to torch's forget block (index 1), as ``b_f + forget_bias`` in TF's cell.
    """

    @staticmethod
    def forward(ctx: Any, kernel: Tensor, bias: Tensor, depth: int, forget_bias: float) -> Any:
        ctx.depth, ctx.width = depth, kernel.shape[0]
        n = bias.shape[0] // 4
        perm = _swap_jf(kernel.device)
        k = kernel.contiguous().view(kernel.shape[0], 4, n).index_select(1, perm)  # (I + P, 4, H), torch's blocks
        k = k.view(kernel.shape[0], 4 * n)  # (I + P, 4H)
        w_ih = k[:depth].t().contiguous()  # (4H, I)
        w_hh = k[depth:].t().contiguous()  # (4H, P)
        b_ih = bias.view(4, n).index_select(0, perm)  # (4, H)
        if forget_bias:
            b_ih[1] += forget_bias
        return w_ih, w_hh, b_ih.view(4 * n)

    @staticmethod
    def backward(ctx: Any, g_ih: Tensor | None, g_hh: Tensor | None, g_b: Tensor | None) -> Any:
        depth, width = ctx.depth, ctx.width
        like = next(g for g in (g_ih, g_hh, g_b) if g is not None)
        rows = like.shape[0]
        g_ih = g_ih if g_ih is not None else like.new_zeros(rows, depth)
        g_hh = g_hh if g_hh is not None else like.new_zeros(rows, width - depth)
        g_b = g_b if g_b is not None else like.new_zeros(rows)
        # Differentiable ops, so that double backward works too.
        perm = _swap_jf(like.device)
        g = torch.cat([g_ih, g_hh], 1)  # (4H, I + P) in torch's blocks
        g_kernel = g.t().reshape(width, 4, rows // 4).index_select(1, perm).reshape(width, rows)  # (I + P, 4H)
        g_bias = g_b.view(4, -1).index_select(0, perm).view(-1)
        return (
            g_kernel if ctx.needs_input_grad[0] else None,
            g_bias if ctx.needs_input_grad[1] else None,
            None,
            None,
        )


_TORCH_WEIGHTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tf_lstm_as_torch(cell: Any, forget_bias: float, has_proj: bool) -> list[Tensor]:
    """TF kernel ``(I + P, 4H)`` (i, j, f, o) + bias + forget_bias -> torch's ``w_ih, w_hh, b_ih, b_hh(, w_hr)``.

    Exact: ``W_ih = reorder(kernel[:I]).T``, ``W_hh = reorder(kernel[I:]).T``, ``b_ih = reorder(bias + forget_bias
    on f)``, ``b_hh = 0``. Without autograd the result is cached per cell until a parameter changes.
    """
    kernel, bias = cell.kernel, cell.bias
    proj = cell.projection.kernel if has_proj else None
    grad = torch.is_grad_enabled() and (
        kernel.requires_grad or bias.requires_grad or (proj is not None and proj.requires_grad)
    )
    if not grad:
        key = (id(kernel), kernel._version, id(bias), bias._version, forget_bias)
        if proj is not None:
            key += (id(proj), proj._version)
        hit = _TORCH_WEIGHTS.get(cell)
        if hit is not None and hit[0] == key:
            return hit[1]
    w_ih, w_hh, b_ih = _TFKernelAsTorch.apply(kernel, bias, cell.input_depth, forget_bias)
    params = [w_ih, w_hh, b_ih, torch.zeros_like(b_ih)]
    if proj is not None:
        params.append(proj.t())
    if not grad:
        _TORCH_WEIGHTS[cell] = (key, params)
    return params
