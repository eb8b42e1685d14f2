"""The fused kernels' forward in differentiable torch ops: what a backward with ``create_graph=True`` differentiates.

The fused kernels' backward is hand-written and computes numbers, not a graph, so a gradient it returns cannot be
differentiated again (gradient penalties, MAML, Hessian-vector products). When autograd asks a fused layer for a
differentiable gradient (it runs the backward in grad mode exactly when ``create_graph=True``), the layer's
``autograd.Function`` recomputes its forward here, on the tensors it saved, and lets autograd differentiate that:
the gradient and everything after it are then exact to any order.

Each function takes a family's kernel inputs (see ``_functions``: packed rows ``(total, features)``, weights
``(in, out)``, per-sequence masks) and returns what the kernel returns: ``(y, h_T[, c_T])``. The step equations are
the cells' own (``lstm_pointwise``, ``layer_norm_lstm_pointwise``, the GRU steps, ``basic_rnn_pointwise``): no
equation is written again here, only the packed time loop.

Example::

    >>> x, bs = torch.randn(5, 3, dtype=torch.float64), torch.tensor([2, 2, 1])   # 3 steps, batch 2
    >>> w_x, w_h = torch.randn(3, 4, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64)
    >>> y, h = rnn(x, w_x, None, bs, torch.zeros(2, 4, dtype=torch.float64), w_h, None, False)
    >>> tuple(y.shape), tuple(h.shape)
    ((5, 4), (2, 4))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import SimpleNamespace

import torch
from torch import Tensor
from torch.nn import functional

from ..cells.basic import basic_rnn_pointwise
from ..cells.gru import gru_reset_after_pointwise, gru_reset_before_step
from ..cells.layer_norm import layer_norm_lstm_pointwise
from ..cells.lstm import lstm_pointwise

__all__ = ["lstm", "lnlstm", "gru", "rnn", "FAMILIES"]


def _steps(batch_sizes: Tensor) -> Iterator[tuple[int, int]]:
    """``(first row, rows)`` of each step of a packed sequence."""
    off = 0
    for n in batch_sizes.tolist():
        if n == 0:
            return
        yield off, n
        off += n


def _carry(new: Tensor, old: Tensor, mask: Tensor | None) -> Tensor:
    """The carried state after a step of ``n = len(new)`` running sequences (sorted first), masked as the kernels
    mask it (a DropoutWrapper's state dropout); finished sequences keep theirs."""
    n = new.shape[0]
    if mask is not None:
        new = new * mask[:n]
    return new if n == old.shape[0] else torch.cat([new, old[n:]])


def _blocks(g: Tensor, order: list[int], width: int) -> list[Tensor]:
    return [g[:, k * width : (k + 1) * width] for k in order]


def _clip(limit: float) -> float | None:
    return limit if limit > 0 else None  # the kernels' 0 means no clip


def _affine(x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
    return x @ w if bias is None else torch.addmm(bias, x, w)


def lstm(
    x, w_x, bias, batch_sizes, h0, c0, w_h, peep, w_proj, mask_h, mask_c, gate_order, forget_bias, cell_clip, proj_clip
) -> tuple[Tensor, Tensor, Tensor]:
    hidden = c0.shape[1]
    gx = _affine(x, w_x, bias)
    peepholes = None if peep is None else (peep[0], peep[1], peep[2])
    h, c, ys = h0, c0, []
    for off, n in _steps(batch_sizes):
        i, j, f, o = _blocks(gx[off : off + n] + h[:n] @ w_h, gate_order, hidden)
        new_c, m = lstm_pointwise(i, j, f, o, c[:n], forget_bias, torch.tanh, peepholes, _clip(cell_clip))
        if w_proj is not None:
            m = m @ w_proj
            if proj_clip > 0:
                m = m.clamp(-proj_clip, proj_clip)
        ys.append(m)
        h, c = _carry(m, h, mask_h), _carry(new_c, c, mask_c)
    return torch.cat(ys), h, c


def lnlstm(
    x, w_x, bias, batch_sizes, h0, c0, w_h, gamma, beta, mask_h, mask_c, gate_order, forget_bias, eps
) -> tuple[Tensor, Tensor, Tensor]:
    hidden = c0.shape[1]

    def norm(q: int) -> Callable[[Tensor], Tensor]:
        return lambda v: functional.layer_norm(v, (hidden,), gamma[q], beta[q], eps)

    # The cells' five norm scopes, in the kernels' order of gamma/beta rows: i, g, f, o, then the cell state.
    norms = SimpleNamespace(
        input=norm(0), transform=norm(1), forget=norm(2), output=norm(3), state=norm(4), training=False
    )
    gx = _affine(x, w_x, bias)
    h, c, ys = h0, c0, []
    for off, n in _steps(batch_sizes):
        i, j, f, o = _blocks(gx[off : off + n] + h[:n] @ w_h, gate_order, hidden)
        new_c, new_h = layer_norm_lstm_pointwise(i, j, f, o, c[:n], norms, forget_bias)
        ys.append(new_h)
        h, c = _carry(new_h, h, mask_h), _carry(new_c, c, mask_c)
    return torch.cat(ys), h, c


def gru(
    x, w_x, bias_x, batch_sizes, h0, w_h, bias_h, w_xn, w_hn, mask_h, mask_r, reset_after
) -> tuple[Tensor, Tensor]:
    if w_xn is not None:  # the candidate's columns apart (TF's GRUCell): w_x, w_h hold r, z only
        w_x, w_h = torch.cat([w_x, w_xn], 1), torch.cat([w_h, w_hn], 1)
    hidden = h0.shape[1]
    gx = _affine(x, w_x, bias_x)
    w_hn = w_h[:, 2 * hidden :]
    h, ys = h0, []
    for off, n in _steps(batch_sizes):
        hp = h[:n]
        hm = hp if mask_r is None else hp * mask_r[:n]  # what the recurrent matmuls read
        g = gx[off : off + n]
        if reset_after:
            new_h = gru_reset_after_pointwise(g, _affine(hm, w_h, bias_h), hp)
        else:
            gates = g[:, : 2 * hidden] + hm @ w_h[:, : 2 * hidden]
            x_n = g[:, 2 * hidden :]
            new_h = gru_reset_before_step(gates, hp, lambda rh, x_n=x_n: x_n + rh @ w_hn, h_recurrent=hm)
        ys.append(new_h)
        h = _carry(new_h, h, mask_h)
    return torch.cat(ys), h


def rnn(x, w_x, bias, batch_sizes, h0, w_h, mask_h, relu) -> tuple[Tensor, Tensor]:
    activation = torch.relu if relu else torch.tanh
    gx = _affine(x, w_x, bias)
    h, ys = h0, []
    for off, n in _steps(batch_sizes):
        new_h = basic_rnn_pointwise(gx[off : off + n] + h[:n] @ w_h, activation)
        ys.append(new_h)
        h = _carry(new_h, h, mask_h)
    return torch.cat(ys), h


#: The differentiable forward of each kernel family, by the kernels' prefix.
FAMILIES: dict[str, Callable[..., tuple[Tensor, ...]]] = {"lstm": lstm, "lnlstm": lnlstm, "gru": gru, "rnn": rnn}
