"""The layer-normalised LSTM in torch ops: the step is the cells' ``layer_norm_lstm_pointwise``, the loop
:mod:`.loop`'s; the twin's backward normalises the saved pre-activations of all steps at once."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import torch
from torch import Tensor
from torch.nn import functional

from ...cells.layer_norm import layer_norm_lstm_pointwise
from ...cells.lstm import lstm_memory
from .loop import affine, backward_loop, blocks, forward_loop, input_grads, masked_rows, previous
from .lstm import Record, forward_saving

__all__ = ["lnlstm_sequence", "lnlstm_forward", "lnlstm_backward"]


def lnlstm_sequence(
    x, w_x, bias, batch_sizes, h0, c0, w_h, gamma, beta, mask_h, mask_c, mask_r, gate_order, forget_bias, eps,
    record: Record | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """A layer-normalised LSTM layer over packed ``x``: ``(y, h_T, c_T)``; ``gamma, beta (5, H)`` for the norms
    of i, g, f, o and the cell state; ``mask_r`` (B, H): recurrent dropout on the ``h`` the matmul reads."""
    hidden = c0.shape[1]

    def norm(q: int) -> Callable[[Tensor], Tensor]:
        return lambda v: functional.layer_norm(v, (hidden,), gamma[q], beta[q], eps)

    # The cells' five norm scopes, in the kernels' order of gamma/beta rows: i, g, f, o, then the cell state.
    norms = SimpleNamespace(
        input=norm(0), transform=norm(1), forget=norm(2), output=norm(3), state=norm(4), training=False
    )
    gx = affine(x, w_x, bias)

    def step(off: int, n: int, h: Tensor, c: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        hm = h if mask_r is None else h * mask_r[:n]  # what the recurrent matmul reads
        g = gx[off : off + n] + hm @ w_h
        new_c, new_h = layer_norm_lstm_pointwise(*blocks(g, gate_order, hidden), c, norms, forget_bias)
        if record is not None:
            record(off, n, g, new_c)
        return new_h, (new_h, new_c)

    y, (h, c) = forward_loop(batch_sizes, (h0, c0), (mask_h, mask_c), step)
    return y, h, c


def lnlstm_forward(
    x, w_x, bias, batch_sizes, h0, c0, w_h, gamma, beta, mask_h, mask_c, gate_order, forget_bias, eps, save,
    mask_r=None,
):
    args = (x, w_x, bias, batch_sizes, h0, c0, w_h, gamma, beta, mask_h, mask_c, mask_r, gate_order, forget_bias, eps)
    return forward_saving(lnlstm_sequence, args, save)


def _norm(v: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``(v - mean) / sqrt(var + eps)`` over the units, and ``1 / sqrt(var + eps)`` (n, 1)."""
    mean = v.mean(1, keepdim=True)
    var = (v - mean).pow(2).mean(1, keepdim=True)
    rstd = (var + eps).rsqrt()
    return (v - mean) * rstd, rstd


def _norm_backward(da: Tensor, xhat: Tensor, gamma: Tensor, rstd: Tensor) -> Tensor:
    """d(pre) of ``a = xhat * gamma + beta`` given ``da``."""
    dxh = da * gamma
    return rstd * (dxh - dxh.mean(1, keepdim=True) - xhat * (dxh * xhat).mean(1, keepdim=True))


def lnlstm_backward(
    dy, dh_t, dc_t, x, w_x, bias, batch_sizes, h0, c0, w_h, gamma, beta, mask_h, mask_c, y, g_all, c_all,
    gate_order, forget_bias, eps, need_dx, mask_r=None,
):
    hidden = c0.shape[1]
    hm_prev = masked_rows(batch_sizes, previous(batch_sizes, h0, y, mask_h), mask_r)  # what the matmul read
    c_prev = previous(batch_sizes, c0, c_all, mask_c)
    normed = [_norm(blk, eps) for blk in blocks(g_all, gate_order, hidden)]  # (xhat, rstd) of i, g, f, o
    xhats = [xhat for xhat, _ in normed]
    acts = [xhat * gamma[q] + beta[q] for q, xhat in enumerate(xhats)]
    si, sg, so = torch.sigmoid(acts[0]), torch.tanh(acts[1]), torch.sigmoid(acts[3])
    sf = torch.sigmoid(acts[2] + forget_bias)
    ch_all, rstd_c = _norm(lstm_memory(c_prev, acts[0], sg, acts[2], forget_bias), eps)
    dg_all = torch.empty_like(g_all)
    dgs = blocks(dg_all, gate_order, hidden)
    da_all = [torch.empty_like(c_all) for _ in range(4)]
    dcn_all = torch.empty_like(c_all)

    def step(rows: slice, n: int, d: Tensor, dc: Tensor) -> tuple[Tensor, Tensor]:
        sc = torch.tanh(c_all[rows])
        da_all[3][rows] = d * sc * so[rows] * (1 - so[rows])
        dcn = dc + d * so[rows] * (1 - sc * sc)
        dcn_all[rows] = dcn
        dcpre = _norm_backward(dcn, ch_all[rows], gamma[4], rstd_c[rows])
        da_all[0][rows] = dcpre * sg[rows] * si[rows] * (1 - si[rows])
        da_all[1][rows] = dcpre * si[rows] * (1 - sg[rows] * sg[rows])
        da_all[2][rows] = dcpre * c_prev[rows] * sf[rows] * (1 - sf[rows])
        for q in range(4):
            dgs[q][rows] = _norm_backward(da_all[q][rows], xhats[q][rows], gamma[q], normed[q][1][rows])
        dhm = dg_all[rows] @ w_h.t()  # d(h_{t-1} * mask_r): h_{t-1} feeds nothing but the matmul
        return (dhm if mask_r is None else dhm * mask_r[:n]), dcpre * sf[rows]

    dh, dc = backward_loop(batch_sizes, dy, (dh_t, dc_t), (mask_h, mask_c), step)
    dgamma = torch.stack([(da_all[q] * xhats[q]).sum(0) for q in range(4)] + [(dcn_all * ch_all).sum(0)])
    dbeta = torch.stack([da.sum(0) for da in da_all] + [dcn_all.sum(0)])
    dx, dwx = input_grads(x, w_x, dg_all, need_dx)
    dbias = dg_all.sum(0) if bias is not None else None
    return [dx, dwx, dbias, dh, dc, hm_prev.t() @ dg_all, dgamma, dbeta]
