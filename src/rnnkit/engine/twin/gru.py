"""The GRU family in torch ops (both GRUs): the steps are the cells' (``gru_reset_after_pointwise``,
``gru_reset_before_step``), the loop :mod:`.loop`'s. The twin's forward saves the input side ``x W_x + b_x``; its
backward recomputes the gates of all steps at once from the previous states, then runs the step backward."""

from __future__ import annotations

import torch
from torch import Tensor

from ...cells.gru import gru_reset_after_pointwise, gru_reset_before_step
from .loop import affine, backward_loop, forward_loop, input_grads, masked_rows, previous

__all__ = ["gru_sequence", "gru_forward", "gru_backward"]


def _joined(w_x: Tensor, w_h: Tensor, w_xn: Tensor | None, w_hn: Tensor | None) -> tuple[Tensor, Tensor]:
    """``W_x, W_h`` with the candidate's columns, when they come apart (TF's GRUCell keeps them in a kernel apart)."""
    if w_xn is None:
        return w_x, w_h
    return torch.cat([w_x, w_xn], 1), torch.cat([w_h, w_hn], 1)


def gru_sequence(
    x, w_x, bias_x, batch_sizes, h0, w_h, bias_h, w_xn, w_hn, mask_h, mask_r, reset_after, gx: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """A GRU layer over packed ``x``: ``(y, h_T)`` (see ``_functions.gru_layer``); ``gx``: ``x W_x + b_x`` when
    the caller has it."""
    w_x, w_h = _joined(w_x, w_h, w_xn, w_hn)
    hidden = h0.shape[1]
    gx = affine(x, w_x, bias_x) if gx is None else gx
    w_hn = w_h[:, 2 * hidden :]

    def step(off: int, n: int, h: Tensor) -> tuple[Tensor, tuple[Tensor]]:
        hm = h if mask_r is None else h * mask_r[:n]  # what the recurrent matmuls read
        g = gx[off : off + n]
        if reset_after:
            new_h = gru_reset_after_pointwise(g, affine(hm, w_h, bias_h), h)
        else:
            gates = g[:, : 2 * hidden] + hm @ w_h[:, : 2 * hidden]
            x_n = g[:, 2 * hidden :]
            new_h = gru_reset_before_step(gates, h, lambda rh: x_n + rh @ w_hn, h_recurrent=hm)
        return new_h, (new_h,)

    y, (h,) = forward_loop(batch_sizes, (h0,), (mask_h,), step)
    return y, h


def gru_forward(x, w_x, bias_x, batch_sizes, h0, w_h, bias_h, w_xn, w_hn, mask_h, mask_r, reset_after, save):
    gx = affine(x, _joined(w_x, w_h, w_xn, w_hn)[0], bias_x)
    y, h = gru_sequence(x, w_x, bias_x, batch_sizes, h0, w_h, bias_h, w_xn, w_hn, mask_h, mask_r, reset_after, gx)
    return [y, h, gx, x.new_empty(0)] if save else [y, h]


def gru_backward(
    dy, dh_t, x, w_x, bias_x, batch_sizes, h0, w_h, bias_h, w_xn, w_hn, mask_h, mask_r, y, gx, _unused,
    reset_after, need_dx,
):
    apart = w_xn is not None
    w_x, w_h = _joined(w_x, w_h, w_xn, w_hn)
    hidden = h0.shape[1]
    h_prev = previous(batch_sizes, h0, y, mask_h)
    hm_prev = masked_rows(batch_sizes, h_prev, mask_r)  # the matmuls' h: masked by the recurrent-dropout mask
    # The gates of every step at once, from the states they read.
    a_all = affine(hm_prev, w_h, bias_h) if reset_after else None
    if reset_after:
        r, z = torch.sigmoid(gx[:, : 2 * hidden] + a_all[:, : 2 * hidden]).chunk(2, 1)
        nn = torch.tanh(gx[:, 2 * hidden :] + r * a_all[:, 2 * hidden :])
    else:
        r, z = torch.sigmoid(gx[:, : 2 * hidden] + hm_prev @ w_h[:, : 2 * hidden]).chunk(2, 1)
        nn = torch.tanh(gx[:, 2 * hidden :] + (r * hm_prev) @ w_h[:, 2 * hidden :])
    d_all = torch.empty_like(gx)
    e_all = torch.empty_like(gx) if reset_after else None

    def step(rows: slice, n: int, d: Tensor) -> tuple[Tensor]:
        dn = d * (1 - z[rows]) * (1 - nn[rows] * nn[rows])
        dz = d * (h_prev[rows] - nn[rows]) * z[rows] * (1 - z[rows])
        d_all[rows, hidden : 2 * hidden] = dz
        d_all[rows, 2 * hidden :] = dn
        dhn = d * z[rows]
        if reset_after:
            dr = dn * a_all[rows, 2 * hidden :] * r[rows] * (1 - r[rows])
            d_all[rows, :hidden] = dr
            e_all[rows] = torch.cat([dr, dz, dn * r[rows]], 1)
            dhm = e_all[rows] @ w_h.t()
        else:
            drh = dn @ w_h[:, 2 * hidden :].t()
            d_all[rows, :hidden] = drh * hm_prev[rows] * r[rows] * (1 - r[rows])
            dhm = drh * r[rows] + d_all[rows, : 2 * hidden] @ w_h[:, : 2 * hidden].t()
        return (dhn + (dhm * mask_r[:n] if mask_r is not None else dhm),)

    (dh,) = backward_loop(batch_sizes, dy, (dh_t,), (mask_h,), step)
    if reset_after:
        dwh = hm_prev.t() @ e_all
    else:
        dwh = torch.cat([hm_prev.t() @ d_all[:, : 2 * hidden], (r * hm_prev).t() @ d_all[:, 2 * hidden :]], 1)
    dx, dwx = input_grads(x, w_x, d_all, need_dx)
    dbx = d_all.sum(0) if bias_x is not None else None
    dbh = None
    if bias_h is not None:
        dbh = e_all.sum(0) if reset_after else d_all.new_zeros(d_all.shape[1])  # (3H,): bias_h may be a marker
    if not apart:
        return [dx, dwx, dbx, dh, dwh, dbh, None, None]
    rz = 2 * hidden
    return [dx, dwx[:, :rz], dbx, dh, dwh[:, :rz], dbh, dwx[:, rz:], dwh[:, rz:]]
