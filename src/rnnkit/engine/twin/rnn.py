"""The vanilla (Elman) RNN in torch ops: the step is the cells' ``basic_rnn_pointwise``, the loop :mod:`.loop`'s;
the outputs are all the twin's backward reads. ``mask_r`` (B, H), recurrent dropout: the matmul reads ``h * mask_r``;
the outputs and the carried state do not."""

from __future__ import annotations

import torch
from torch import Tensor

from ...cells.basic import basic_rnn_pointwise
from .loop import affine, backward_loop, forward_loop, input_grads, masked_rows, previous

__all__ = ["rnn_sequence", "rnn_forward", "rnn_backward"]


def rnn_sequence(x, w_x, bias, batch_sizes, h0, w_h, mask_h, mask_r, relu) -> tuple[Tensor, Tensor]:
    """An Elman layer ``h' = act(x W_x + h W_h + b)`` over packed ``x``: ``(y, h_T)``, ``act`` relu or tanh."""
    activation = torch.relu if relu else torch.tanh
    gx = affine(x, w_x, bias)

    def step(off: int, n: int, h: Tensor) -> tuple[Tensor, tuple[Tensor]]:
        hm = h if mask_r is None else h * mask_r[:n]  # what the recurrent matmul reads
        new_h = basic_rnn_pointwise(gx[off : off + n] + hm @ w_h, activation)
        return new_h, (new_h,)

    y, (h,) = forward_loop(batch_sizes, (h0,), (mask_h,), step)
    return y, h


def rnn_forward(x, w_x, bias, batch_sizes, h0, w_h, mask_h, relu, save, mask_r=None):
    return list(rnn_sequence(x, w_x, bias, batch_sizes, h0, w_h, mask_h, mask_r, relu))  # nothing more to save


def rnn_backward(dy, dh_t, x, w_x, bias, batch_sizes, h0, w_h, mask_h, y, relu, need_dx, mask_r=None):
    hm_prev = masked_rows(batch_sizes, previous(batch_sizes, h0, y, mask_h), mask_r)  # what the matmul read
    d_all = torch.empty_like(y)

    def step(rows: slice, n: int, d: Tensor) -> tuple[Tensor]:
        d = d * (y[rows] > 0) if relu else d * (1 - y[rows] * y[rows])
        d_all[rows] = d
        dhm = d @ w_h.t()
        return (dhm if mask_r is None else dhm * mask_r[:n],)

    (dh,) = backward_loop(batch_sizes, dy, (dh_t,), (mask_h,), step)
    dx, dwx = input_grads(x, w_x, d_all, need_dx)
    return [dx, dwx, d_all.sum(0) if bias is not None else None, dh, hm_prev.t() @ d_all]
