"""Pure-PyTorch twins of the compiled kernels: the same algorithm, the time loop in Python.

Each function has the signature and results of the ``torch.ops.rnnkit`` op of the same name
(``csrc/ops.h``), so the engine swaps one for the other. They run where the compiled kernels
cannot be built, and on any device. They are called without autograd (inside an
``autograd.Function``, or on inputs that need no gradient) and write into their buffers in place.

Layout: packed rows (``total, features``); step ``t`` owns rows ``off[t] : off[t] + n[t]``, where
``n = batch_sizes`` is non-increasing (sequences sorted longest first). Weights are ``(in, out)``
(``x @ W``); LSTM ``gate_order`` gives the blocks of ``(i, g, f, o)``; GRU blocks are ``r, z, n``.

Example::

    >>> x, bs = torch.randn(6, 3), torch.tensor([2, 1])   # 2 steps, batch 2 then 1
    >>> w_x, w_h = torch.randn(3, 4), torch.randn(4, 4)
    >>> y, h = rnn_forward(x[:3], w_x, None, bs, torch.zeros(2, 4), w_h, None, False, False)
    >>> tuple(y.shape), tuple(h.shape)
    ((3, 4), (2, 4))
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "lstm_forward",
    "lstm_backward",
    "lnlstm_forward",
    "lnlstm_backward",
    "gru_forward",
    "gru_backward",
    "rnn_forward",
    "rnn_backward",
]


def _schedule(batch_sizes: Tensor) -> list[tuple[int, int]]:
    steps, off = [], 0
    for n in batch_sizes.tolist():
        if n == 0:
            break
        steps.append((off, n))
        off += n
    return steps


def _blocks(g: Tensor, order, h: int) -> list[Tensor]:
    return [g[:, k * h : (k + 1) * h] for k in order]


def _clip(x: Tensor, limit: float) -> Tensor:
    return x.clamp(-limit, limit) if limit > 0 else x


def _previous(steps, h0: Tensor, y: Tensor, mask: Tensor | None) -> Tensor:
    rows = []
    for t, (_off, n) in enumerate(steps):
        if t == 0:
            rows.append(h0[:n])
        else:
            prev = y[steps[t - 1][0] : steps[t - 1][0] + n]
            rows.append(prev * mask[:n] if mask is not None else prev)
    return torch.cat(rows) if rows else h0[:0]


def _input_grads(x: Tensor, w_x: Tensor, d: Tensor, need_dx: bool) -> tuple[Tensor | None, Tensor]:
    return (d @ w_x.t() if need_dx else None), x.t() @ d


# ---- LSTM -----------------------------------------------------------------------------------


def lstm_forward(
    x,
    w_x,
    bias,
    batch_sizes,
    h0,
    c0,
    w_h,
    peep,
    w_proj,
    mask_h,
    mask_c,
    gate_order,
    forget_bias,
    cell_clip,
    proj_clip,
    save,
):
    steps = _schedule(batch_sizes)
    hidden = c0.shape[1]
    g_all = x @ w_x  # (total, 4H)
    if bias is not None:
        g_all += bias
    hs, cs = h0.clone(), c0.clone()
    y = x.new_empty(x.shape[0], h0.shape[1])
    c_all = x.new_empty(x.shape[0], hidden) if save else None
    for off, n in steps:
        g = g_all[off : off + n]
        g += hs[:n] @ w_h
        i, j, f, o = _blocks(g, gate_order, hidden)
        cp = cs[:n]
        if peep is not None:
            i += peep[0] * cp
            f += peep[1] * cp
        i.sigmoid_()
        f.add_(forget_bias).sigmoid_()
        j.tanh_()
        cn = _clip(f * cp + i * j, cell_clip)
        if peep is not None:
            o += peep[2] * cn
        o.sigmoid_()
        m = o * torch.tanh(cn)
        h = _clip(m @ w_proj, proj_clip) if w_proj is not None else m
        y[off : off + n] = h
        if save:
            c_all[off : off + n] = cn
        cs[:n] = cn * mask_c[:n] if mask_c is not None else cn
        hs[:n] = h * mask_h[:n] if mask_h is not None else h
    if not save:
        return [y, hs, cs]
    return [y, hs, cs, g_all, c_all]


def lstm_backward(
    dy,
    dh_t,
    dc_t,
    x,
    w_x,
    bias,
    batch_sizes,
    h0,
    c0,
    w_h,
    peep,
    w_proj,
    mask_h,
    mask_c,
    y,
    g_all,
    c_all,
    gate_order,
    forget_bias,
    cell_clip,
    proj_clip,
    need_dx,
):
    steps = _schedule(batch_sizes)
    hidden = c0.shape[1]
    h_prev = _previous(steps, h0, y, mask_h)
    c_prev = _previous(steps, c0, c_all, mask_c)
    si, sg, sf, so = _blocks(g_all, gate_order, hidden)
    m_all = so * torch.tanh(c_all) if w_proj is not None else None
    p_pre = m_all @ w_proj if (w_proj is not None and proj_clip > 0) else None
    dp_all = torch.empty_like(y) if w_proj is not None else None
    dg_all = torch.empty_like(g_all)
    di_all, dg_blk, df_all, do_all = _blocks(dg_all, gate_order, hidden)
    dh, dc = dh_t.clone(), dc_t.clone()
    for off, n in reversed(steps):
        rows = slice(off, off + n)
        d = dy[rows] + (mask_h[:n] * dh[:n] if mask_h is not None else dh[:n])
        if w_proj is not None:
            if p_pre is not None:
                d = d * (p_pre[rows].abs() <= proj_clip)
            dp_all[rows] = d
            d = d @ w_proj.t()
        sc = torch.tanh(c_all[rows])
        d_o = d * sc * so[rows] * (1 - so[rows])
        dcn = (dc[:n] * mask_c[:n] if mask_c is not None else dc[:n]) + d * so[rows] * (1 - sc * sc)
        if peep is not None:
            dcn = dcn + d_o * peep[2]
        cp = c_prev[rows]
        if cell_clip > 0:
            dcn = dcn * ((sf[rows] * cp + si[rows] * sg[rows]).abs() <= cell_clip)
        d_i = dcn * sg[rows] * si[rows] * (1 - si[rows])
        d_f = dcn * cp * sf[rows] * (1 - sf[rows])
        di_all[rows] = d_i
        dg_blk[rows] = dcn * si[rows] * (1 - sg[rows] * sg[rows])
        df_all[rows] = d_f
        do_all[rows] = d_o
        dprev = dcn * sf[rows]
        if peep is not None:
            dprev = dprev + d_i * peep[0] + d_f * peep[1]
        dc[:n] = dprev
        dh[:n] = dg_all[rows] @ w_h.t()
    dx, dwx = _input_grads(x, w_x, dg_all, need_dx)
    dbias = dg_all.sum(0) if bias is not None else None
    dpeep = None
    if peep is not None:
        dpeep = torch.stack([(di_all * c_prev).sum(0), (df_all * c_prev).sum(0), (do_all * c_all).sum(0)])
    dwp = m_all.t() @ dp_all if w_proj is not None else None
    return [dx, dwx, dbias, dh, dc, h_prev.t() @ dg_all, dpeep, dwp]


# ---- layer-normalised LSTM ------------------------------------------------------------------


def _norm(v: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    mean = v.mean(1, keepdim=True)
    var = (v - mean).pow(2).mean(1, keepdim=True)
    rstd = (var + eps).rsqrt()
    return (v - mean) * rstd, rstd


def _norm_backward(da: Tensor, xhat: Tensor, gamma: Tensor, rstd: Tensor) -> Tensor:
    dxh = da * gamma
    return rstd * (dxh - dxh.mean(1, keepdim=True) - xhat * (dxh * xhat).mean(1, keepdim=True))


def lnlstm_forward(
    x, w_x, bias, batch_sizes, h0, c0, w_h, gamma, beta, mask_h, mask_c, gate_order, forget_bias, eps, save
):
    steps = _schedule(batch_sizes)
    hidden = c0.shape[1]
    xh_all = x @ w_x
    if bias is not None:
        xh_all += bias
    hs, cs = h0.clone(), c0.clone()
    y = x.new_empty(x.shape[0], hidden)
    ch_all = x.new_empty(x.shape[0], hidden) if save else None
    rs_all = x.new_empty(x.shape[0], 5) if save else None
    for off, n in steps:
        g = xh_all[off : off + n]
        g += hs[:n] @ w_h
        acts = []
        for q, blk in enumerate(_blocks(g, gate_order, hidden)):
            xhat, rstd = _norm(blk, eps)
            blk.copy_(xhat)
            if save:
                rs_all[off : off + n, q] = rstd[:, 0]
            acts.append(xhat * gamma[q] + beta[q])
        si, sg, sf, so = torch.sigmoid(acts[0]), torch.tanh(acts[1]), torch.sigmoid(acts[2] + forget_bias), acts[3]
        chat, rstd_c = _norm(sf * cs[:n] + si * sg, eps)
        cn = chat * gamma[4] + beta[4]
        h = torch.tanh(cn) * torch.sigmoid(so)
        y[off : off + n] = h
        if save:
            ch_all[off : off + n] = chat
            rs_all[off : off + n, 4] = rstd_c[:, 0]
        cs[:n] = cn * mask_c[:n] if mask_c is not None else cn
        hs[:n] = h * mask_h[:n] if mask_h is not None else h
    if not save:
        return [y, hs, cs]
    return [y, hs, cs, xh_all, ch_all, rs_all]


def lnlstm_backward(
    dy,
    dh_t,
    dc_t,
    x,
    w_x,
    bias,
    batch_sizes,
    h0,
    c0,
    w_h,
    gamma,
    beta,
    mask_h,
    mask_c,
    y,
    xh_all,
    ch_all,
    rs_all,
    gate_order,
    forget_bias,
    eps,
    need_dx,
):
    steps = _schedule(batch_sizes)
    hidden = c0.shape[1]
    cn_all = ch_all * gamma[4] + beta[4]
    h_prev = _previous(steps, h0, y, mask_h)
    c_prev = _previous(steps, c0, cn_all, mask_c)
    xhats = _blocks(xh_all, gate_order, hidden)
    acts = [xhats[q] * gamma[q] + beta[q] for q in range(4)]
    si, sg, sf, so = torch.sigmoid(acts[0]), torch.tanh(acts[1]), torch.sigmoid(acts[2] + forget_bias), acts[3]
    so = torch.sigmoid(so)
    dg_all = torch.empty_like(xh_all)
    dgs = _blocks(dg_all, gate_order, hidden)
    da_all = [torch.empty_like(ch_all) for _ in range(4)]
    dcn_all = torch.empty_like(ch_all)
    dh, dc = dh_t.clone(), dc_t.clone()
    for off, n in reversed(steps):
        rows = slice(off, off + n)
        d = dy[rows] + (mask_h[:n] * dh[:n] if mask_h is not None else dh[:n])
        sc = torch.tanh(cn_all[rows])
        da_all[3][rows] = d * sc * so[rows] * (1 - so[rows])
        dcn = (dc[:n] * mask_c[:n] if mask_c is not None else dc[:n]) + d * so[rows] * (1 - sc * sc)
        dcn_all[rows] = dcn
        dcpre = _norm_backward(dcn, ch_all[rows], gamma[4], rs_all[rows, 4:5])
        da_all[0][rows] = dcpre * sg[rows] * si[rows] * (1 - si[rows])
        da_all[1][rows] = dcpre * si[rows] * (1 - sg[rows] * sg[rows])
        da_all[2][rows] = dcpre * c_prev[rows] * sf[rows] * (1 - sf[rows])
        dc[:n] = dcpre * sf[rows]
        for q in range(4):
            dgs[q][rows] = _norm_backward(da_all[q][rows], xhats[q][rows], gamma[q], rs_all[rows, q : q + 1])
        dh[:n] = dg_all[rows] @ w_h.t()
    dgamma = torch.stack([(da_all[q] * xhats[q]).sum(0) for q in range(4)] + [(dcn_all * ch_all).sum(0)])
    dbeta = torch.stack([da.sum(0) for da in da_all] + [dcn_all.sum(0)])
    dx, dwx = _input_grads(x, w_x, dg_all, need_dx)
    dbias = dg_all.sum(0) if bias is not None else None
    return [dx, dwx, dbias, dh, dc, h_prev.t() @ dg_all, dgamma, dbeta]


# ---- GRU ------------------------------------------------------------------------------------


def gru_forward(x, w_x, bias_x, batch_sizes, h0, w_h, bias_h, w_xn, w_hn, mask_h, mask_r, reset_after, save):
    if w_xn is not None:  # the candidate's columns apart: w_x, w_h hold r, z only
        w_x, w_h = torch.cat([w_x, w_xn], 1), torch.cat([w_h, w_hn], 1)
    steps = _schedule(batch_sizes)
    hidden = h0.shape[1]
    g_all = x @ w_x  # (total, 3H)
    if bias_x is not None:
        g_all += bias_x
    hs = h0.clone()
    y = x.new_empty(x.shape[0], hidden)
    s_all = x.new_empty(x.shape[0], hidden) if (save and reset_after) else None
    for off, n in steps:
        g = g_all[off : off + n]
        hp = hs[:n]
        hm = hp * mask_r[:n] if mask_r is not None else hp  # the matmuls' h (recurrent dropout)
        if reset_after:
            a = hm @ w_h
            if bias_h is not None:
                a += bias_h
            g[:, : 2 * hidden] += a[:, : 2 * hidden]
            g[:, : 2 * hidden].sigmoid_()
            an = a[:, 2 * hidden :]
            g[:, 2 * hidden :] += g[:, :hidden] * an
            if save:
                s_all[off : off + n] = an
        else:
            g[:, : 2 * hidden] += hm @ w_h[:, : 2 * hidden]
            g[:, : 2 * hidden].sigmoid_()
            g[:, 2 * hidden :] += (g[:, :hidden] * hm) @ w_h[:, 2 * hidden :]
        g[:, 2 * hidden :].tanh_()
        z, nn = g[:, hidden : 2 * hidden], g[:, 2 * hidden :]
        h = nn + z * (hp - nn)
        y[off : off + n] = h
        hs[:n] = h * mask_h[:n] if mask_h is not None else h
    if not save:
        return [y, hs]
    return [y, hs, g_all, s_all if s_all is not None else x.new_empty(0)]


def gru_backward(
    dy, dh_t, x, w_x, bias_x, batch_sizes, h0, w_h, bias_h, w_xn, w_hn, mask_h, mask_r, y, g_all, s_all, reset_after,
    need_dx,
):
    apart = w_xn is not None
    if apart:
        w_x, w_h = torch.cat([w_x, w_xn], 1), torch.cat([w_h, w_hn], 1)
    steps = _schedule(batch_sizes)
    hidden = h0.shape[1]
    h_prev = _previous(steps, h0, y, mask_h)
    hm_prev = h_prev  # the matmuls' h: masked by the recurrent-dropout mask when there is one
    if mask_r is not None:
        hm_prev = torch.cat([h_prev[off : off + n] * mask_r[:n] for off, n in steps]) if steps else h_prev
    r, z, nn = g_all[:, :hidden], g_all[:, hidden : 2 * hidden], g_all[:, 2 * hidden :]
    d_all = torch.empty_like(g_all)
    e_all = torch.empty_like(g_all) if reset_after else None
    dh = dh_t.clone()
    for off, n in reversed(steps):
        rows = slice(off, off + n)
        d = dy[rows] + (mask_h[:n] * dh[:n] if mask_h is not None else dh[:n])
        dn = d * (1 - z[rows]) * (1 - nn[rows] * nn[rows])
        dz = d * (h_prev[rows] - nn[rows]) * z[rows] * (1 - z[rows])
        d_all[rows, hidden : 2 * hidden] = dz
        d_all[rows, 2 * hidden :] = dn
        dhn = d * z[rows]
        if reset_after:
            dr = dn * s_all[rows] * r[rows] * (1 - r[rows])
            d_all[rows, :hidden] = dr
            e_all[rows] = torch.cat([dr, dz, dn * r[rows]], 1)
            dhm = e_all[rows] @ w_h.t()
        else:
            drh = dn @ w_h[:, 2 * hidden :].t()
            d_all[rows, :hidden] = drh * hm_prev[rows] * r[rows] * (1 - r[rows])
            dhm = drh * r[rows] + d_all[rows, : 2 * hidden] @ w_h[:, : 2 * hidden].t()
        dh[:n] = dhn + (dhm * mask_r[:n] if mask_r is not None else dhm)
    if reset_after:
        dwh = hm_prev.t() @ e_all
    else:
        dwh = torch.cat([hm_prev.t() @ d_all[:, : 2 * hidden], (r * hm_prev).t() @ d_all[:, 2 * hidden :]], 1)
    dx, dwx = _input_grads(x, w_x, d_all, need_dx)
    dbx = d_all.sum(0) if bias_x is not None else None
    dbh = None
    if bias_h is not None:
        dbh = e_all.sum(0) if reset_after else d_all.new_zeros(d_all.shape[1])  # (3H,): bias_h may be a marker
    if not apart:
        return [dx, dwx, dbx, dh, dwh, dbh, None, None]
    rz = 2 * hidden
    return [dx, dwx[:, :rz], dbx, dh, dwh[:, :rz], dbh, dwx[:, rz:], dwh[:, rz:]]


# ---- vanilla RNN ----------------------------------------------------------------------------


def rnn_forward(x, w_x, bias, batch_sizes, h0, w_h, mask_h, relu, save):
    steps = _schedule(batch_sizes)
    y = x @ w_x
    if bias is not None:
        y += bias
    hs = h0.clone()
    for off, n in steps:
        g = y[off : off + n]
        g += hs[:n] @ w_h
        g.relu_() if relu else g.tanh_()
        hs[:n] = g * mask_h[:n] if mask_h is not None else g
    return [y, hs]


def rnn_backward(dy, dh_t, x, w_x, bias, batch_sizes, h0, w_h, mask_h, y, relu, need_dx):
    steps = _schedule(batch_sizes)
    h_prev = _previous(steps, h0, y, mask_h)
    d_all = torch.empty_like(y)
    dh = dh_t.clone()
    for off, n in reversed(steps):
        rows = slice(off, off + n)
        d = dy[rows] + (mask_h[:n] * dh[:n] if mask_h is not None else dh[:n])
        d = d * (y[rows] > 0) if relu else d * (1 - y[rows] * y[rows])
        d_all[rows] = d
        dh[:n] = d @ w_h.t()
    dx, dwx = _input_grads(x, w_x, d_all, need_dx)
    return [dx, dwx, d_all.sum(0) if bias is not None else None, dh, h_prev.t() @ d_all]
