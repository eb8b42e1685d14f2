"""The LSTM family in torch ops: the step is the cells' ``lstm_pointwise``, the loop is :mod:`.loop`'s.

``lstm_sequence`` is the differentiable forward (what ``create_graph=True`` differentiates); ``lstm_forward`` and
``lstm_backward`` are the twins of the compiled ops. What the twin's forward saves (the gates' pre-activations
``x W_x + b + h W_h`` and the cell states) is read only by the twin's backward, which activates the gates of all
steps at once and runs the hand-derived step backward. ``mask_r`` (B, P), recurrent dropout: the matmul reads
``h * mask_r``; the outputs and the carried state do not.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ...cells.lstm import lstm_pointwise
from .loop import affine, backward_loop, blocks, clip_limit, forward_loop, input_grads, masked_rows, previous

__all__ = ["lstm_sequence", "lstm_forward", "lstm_backward", "Record", "forward_saving"]

#: Sees each step's rows ``off : off + n``, gate pre-activations ``(n, 4H)`` and new cell state ``(n, H)``.
Record = Callable[[int, int, Tensor, Tensor], None]


def lstm_sequence(
    x, w_x, bias, batch_sizes, h0, c0, w_h, peep, w_proj, mask_h, mask_c, mask_r, gate_order, forget_bias,
    cell_clip, proj_clip, record: Record | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """An LSTM layer over packed ``x``: ``(y, h_T, c_T)`` (the kernels' arguments, see ``_functions.lstm_layer``)."""
    hidden = c0.shape[1]
    gx = affine(x, w_x, bias)
    peepholes = None if peep is None else (peep[0], peep[1], peep[2])

    def step(off: int, n: int, h: Tensor, c: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        hm = h if mask_r is None else h * mask_r[:n]  # what the recurrent matmul reads
        g = gx[off : off + n] + hm @ w_h
        new_c, m = lstm_pointwise(*blocks(g, gate_order, hidden), c, forget_bias, torch.tanh, peepholes,
                                  clip_limit(cell_clip))
        if record is not None:
            record(off, n, g, new_c)
        if w_proj is not None:
            m = m @ w_proj
            if proj_clip > 0:
                m = m.clamp(-proj_clip, proj_clip)
        return m, (m, new_c)

    y, (h, c) = forward_loop(batch_sizes, (h0, c0), (mask_h, mask_c), step)
    return y, h, c


def lstm_forward(
    x, w_x, bias, batch_sizes, h0, c0, w_h, peep, w_proj, mask_h, mask_c, gate_order, forget_bias, cell_clip,
    proj_clip, save, mask_r=None,
):
    args = (x, w_x, bias, batch_sizes, h0, c0, w_h, peep, w_proj, mask_h, mask_c, mask_r, gate_order, forget_bias,
            cell_clip, proj_clip)
    return forward_saving(lstm_sequence, args, save)


def forward_saving(sequence: Callable[..., tuple], args: tuple, save: bool) -> list[Tensor]:
    """An LSTM twin's forward: ``sequence(*args)``'s ``(y, h_T, c_T)`` and, when ``save``, what it recorded for the
    twin's backward: the gates' pre-activations ``(total, 4H)`` and the cell states ``(total, H)`` of every step
    (``args``: the kernels' arguments, ``x`` first and ``c0`` sixth)."""
    if not save:
        return list(sequence(*args))
    x, c0 = args[0], args[5]
    g_all, c_all = x.new_empty(x.shape[0], 4 * c0.shape[1]), x.new_empty(x.shape[0], c0.shape[1])

    def record(off: int, n: int, g: Tensor, c: Tensor) -> None:
        g_all[off : off + n] = g
        c_all[off : off + n] = c

    return [*sequence(*args, record), g_all, c_all]


def _activated_gates(g_all, c_prev, c_all, peep, gate_order, forget_bias, hidden) -> list[Tensor]:
    """``sigmoid(i), tanh(g), sigmoid(f), sigmoid(o)`` of every step, from the saved pre-activations and cell
    states, in the order of ``lstm_pointwise``'s arithmetic (peepholes first, then the forget bias)."""
    i, g, f, o = blocks(g_all, gate_order, hidden)
    if peep is not None:
        i, f, o = i + peep[0] * c_prev, f + peep[1] * c_prev, o + peep[2] * c_all
    f = f + forget_bias if forget_bias else f
    return [torch.sigmoid(i), torch.tanh(g), torch.sigmoid(f), torch.sigmoid(o)]


def lstm_backward(
    dy, dh_t, dc_t, x, w_x, bias, batch_sizes, h0, c0, w_h, peep, w_proj, mask_h, mask_c, y, g_all, c_all,
    gate_order, forget_bias, cell_clip, proj_clip, need_dx, mask_r=None,
):
    hidden = c0.shape[1]
    hm_prev = masked_rows(batch_sizes, previous(batch_sizes, h0, y, mask_h), mask_r)  # what the matmul read
    c_prev = previous(batch_sizes, c0, c_all, mask_c)
    si, sg, sf, so = _activated_gates(g_all, c_prev, c_all, peep, gate_order, forget_bias, hidden)
    m_all = so * torch.tanh(c_all) if w_proj is not None else None
    p_pre = m_all @ w_proj if (w_proj is not None and proj_clip > 0) else None
    dp_all = torch.empty_like(y) if w_proj is not None else None
    dg_all = torch.empty_like(g_all)
    di_all, dg_blk, df_all, do_all = blocks(dg_all, gate_order, hidden)

    def step(rows: slice, n: int, d: Tensor, dc: Tensor) -> tuple[Tensor, Tensor]:
        if w_proj is not None:
            if p_pre is not None:
                d = d * (p_pre[rows].abs() <= proj_clip)
            dp_all[rows] = d
            d = d @ w_proj.t()
        sc = torch.tanh(c_all[rows])
        d_o = d * sc * so[rows] * (1 - so[rows])
        dcn = dc + d * so[rows] * (1 - sc * sc)
        if peep is not None:
            dcn = dcn + d_o * peep[2]
        cp = c_prev[rows]
        if cell_clip > 0:
            dcn = dcn * ((sf[rows] * cp + si[rows] * sg[rows]).abs() <= cell_clip)
        d_i = dcn * sg[rows] * si[rows] * (1 - si[rows])
        d_f = dcn * cp * sf[rows] * (1 - sf[rows])
        di_all[rows], df_all[rows], do_all[rows] = d_i, d_f, d_o
        dg_blk[rows] = dcn * si[rows] * (1 - sg[rows] * sg[rows])
        dprev = dcn * sf[rows]
        if peep is not None:
            dprev = dprev + d_i * peep[0] + d_f * peep[1]
        dhm = dg_all[rows] @ w_h.t()  # d(h_{t-1} * mask_r): h_{t-1} feeds nothing but the matmul
        return (dhm if mask_r is None else dhm * mask_r[:n]), dprev

    dh, dc = backward_loop(batch_sizes, dy, (dh_t, dc_t), (mask_h, mask_c), step)
    dx, dwx = input_grads(x, w_x, dg_all, need_dx)
    dbias = dg_all.sum(0) if bias is not None else None
    dpeep = None
    if peep is not None:
        dpeep = torch.stack([(di_all * c_prev).sum(0), (df_all * c_prev).sum(0), (do_all * c_all).sum(0)])
    dwp = m_all.t() @ dp_all if w_proj is not None else None
    return [dx, dwx, dbias, dh, dc, hm_prev.t() @ dg_all, dpeep, dwp]
