"""Autograd for the fused kernels: one ``autograd.Function`` per kernel family.

Each runs a whole layer over a packed sequence: forward is one kernel call (saving the
activations once per step), backward one kernel call (backpropagation through time with weight
gradients as single matmuls over all steps). ``kern`` is the compiled op namespace or the
pure-PyTorch twin module: both expose the same functions. When no input needs a gradient the
forward kernel runs directly, saving nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["lstm_layer", "lnlstm_layer", "gru_layer", "rnn_layer", "needs_grad"]


def needs_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd must track a call on ``tensors``."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class _LSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kern, cfg, batch_sizes, x, w_x, bias, h0, c0, w_h, peep, w_proj, mask_h, mask_c):  # noqa: ANN001
        y, h_t, c_t, g, c = kern.lstm_forward(
            x, w_x, bias, batch_sizes, h0, c0, w_h, peep, w_proj, mask_h, mask_c, *cfg, True
        )
        ctx.kern, ctx.cfg, ctx.batch_sizes = kern, cfg, batch_sizes
        ctx.save_for_backward(x, w_x, bias, h0, c0, w_h, peep, w_proj, mask_h, mask_c, y, g, c)
        return y, h_t, c_t

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_t, dc_t):  # noqa: ANN001
        x, w_x, bias, h0, c0, w_h, peep, w_proj, mask_h, mask_c, y, g, c = ctx.saved_tensors
        dx, dwx, db, dh0, dc0, dwh, dpeep, dwp = ctx.kern.lstm_backward(
            dy,
            dh_t,
            dc_t,
            x,
            w_x,
            bias,
            ctx.batch_sizes,
            h0,
            c0,
            w_h,
            peep,
            w_proj,
            mask_h,
            mask_c,
            y,
            g,
            c,
            *ctx.cfg,
            ctx.needs_input_grad[3],
        )
        return None, None, None, dx, dwx, db, dh0, dc0, dwh, dpeep, dwp, None, None


def lstm_layer(
    kern: Any,
    batch_sizes: Tensor,
    x: Tensor,
    w_x: Tensor,
    bias: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    w_h: Tensor,
    peep: Tensor | None,
    w_proj: Tensor | None,
    mask_h: Tensor | None,
    mask_c: Tensor | None,
    gate_order: tuple[int, int, int, int],
    forget_bias: float,
    cell_clip: float,
    proj_clip: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer over packed ``x`` ``(total, I)``: outputs ``(total, P)`` and final ``h (B, P)``, ``c (B, H)``.

    ``w_x (I, 4H)``, ``w_h (P, 4H)`` with gate blocks at ``gate_order`` = blocks of (i, g, f, o);
    ``peep (3, H)`` = (w_i, w_f, w_o); ``w_proj (H, P)``; clips of 0 mean none.
    """
    cfg = (list(gate_order), float(forget_bias), float(cell_clip), float(proj_clip))
    if needs_grad(x, w_x, bias, h0, c0, w_h, peep, w_proj):
        return _LSTM.apply(kern, cfg, batch_sizes, x, w_x, bias, h0, c0, w_h, peep, w_proj, mask_h, mask_c)
    with torch.no_grad():
        y, h_t, c_t = kern.lstm_forward(
            x, w_x, bias, batch_sizes, h0, c0, w_h, peep, w_proj, mask_h, mask_c, *cfg, False
        )
    return y, h_t, c_t


class _LNLSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kern, cfg, batch_sizes, x, w_x, bias, h0, c0, w_h, gamma, beta, mask_h, mask_c):  # noqa: ANN001
        y, h_t, c_t, xh, ch, rs = kern.lnlstm_forward(
            x, w_x, bias, batch_sizes, h0, c0, w_h, gamma, beta, mask_h, mask_c, *cfg, True
        )
        ctx.kern, ctx.cfg, ctx.batch_sizes = kern, cfg, batch_sizes
        ctx.save_for_backward(x, w_x, bias, h0, c0, w_h, gamma, beta, mask_h, mask_c, y, xh, ch, rs)
        return y, h_t, c_t

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_t, dc_t):  # noqa: ANN001
        x, w_x, bias, h0, c0, w_h, gamma, beta, mask_h, mask_c, y, xh, ch, rs = ctx.saved_tensors
        dx, dwx, db, dh0, dc0, dwh, dgamma, dbeta = ctx.kern.lnlstm_backward(
            dy,
            dh_t,
            dc_t,
            x,
            w_x,
            bias,
            ctx.batch_sizes,
            h0,
            c0,
            w_h,
            gamma,
            beta,
            mask_h,
            mask_c,
            y,
            xh,
            ch,
            rs,
            *ctx.cfg,
            ctx.needs_input_grad[3],
        )
        return None, None, None, dx, dwx, db, dh0, dc0, dwh, dgamma, dbeta, None, None


def lnlstm_layer(
    kern: Any,
    batch_sizes: Tensor,
    x: Tensor,
    w_x: Tensor,
    bias: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    w_h: Tensor,
    gamma: Tensor,
    beta: Tensor,
    mask_h: Tensor | None,
    mask_c: Tensor | None,
    gate_order: tuple[int, int, int, int],
    forget_bias: float,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """A layer-normalised LSTM layer; ``gamma, beta (5, H)`` for the norms of i, g, f, o and the cell state."""
    cfg = (list(gate_order), float(forget_bias), float(eps))
    if needs_grad(x, w_x, bias, h0, c0, w_h, gamma, beta):
        return _LNLSTM.apply(kern, cfg, batch_sizes, x, w_x, bias, h0, c0, w_h, gamma, beta, mask_h, mask_c)
    with torch.no_grad():
        y, h_t, c_t = kern.lnlstm_forward(
            x, w_x, bias, batch_sizes, h0, c0, w_h, gamma, beta, mask_h, mask_c, *cfg, False
        )
    return y, h_t, c_t


class _GRU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kern, reset_after, batch_sizes, x, w_x, bias_x, h0, w_h, bias_h, mask_h):  # noqa: ANN001
        y, h_t, g, s = kern.gru_forward(x, w_x, bias_x, batch_sizes, h0, w_h, bias_h, mask_h, reset_after, True)
        ctx.kern, ctx.reset_after, ctx.batch_sizes = kern, reset_after, batch_sizes
        ctx.save_for_backward(x, w_x, bias_x, h0, w_h, bias_h, mask_h, y, g, s)
        return y, h_t

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_t):  # noqa: ANN001
        x, w_x, bias_x, h0, w_h, bias_h, mask_h, y, g, s = ctx.saved_tensors
        dx, dwx, dbx, dh0, dwh, dbh = ctx.kern.gru_backward(
            dy,
            dh_t,
            x,
            w_x,
            bias_x,
            ctx.batch_sizes,
            h0,
            w_h,
            bias_h,
            mask_h,
            y,
            g,
            s,
            ctx.reset_after,
            ctx.needs_input_grad[3],
        )
        return None, None, None, dx, dwx, dbx, dh0, dwh, dbh, None


def gru_layer(
    kern: Any,
    batch_sizes: Tensor,
    x: Tensor,
    w_x: Tensor,
    bias_x: Tensor | None,
    h0: Tensor,
    w_h: Tensor,
    bias_h: Tensor | None,
    mask_h: Tensor | None,
    reset_after: bool,
) -> tuple[Tensor, Tensor]:
    """One GRU layer (blocks r, z, n): ``w_x (I, 3H)``, ``w_h (H, 3H)``; ``bias_h`` only with ``reset_after``."""
    if needs_grad(x, w_x, bias_x, h0, w_h, bias_h):
        return _GRU.apply(kern, bool(reset_after), batch_sizes, x, w_x, bias_x, h0, w_h, bias_h, mask_h)
    with torch.no_grad():
        y, h_t = kern.gru_forward(x, w_x, bias_x, batch_sizes, h0, w_h, bias_h, mask_h, bool(reset_after), False)
    return y, h_t


class _RNN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kern, relu, batch_sizes, x, w_x, bias, h0, w_h, mask_h):  # noqa: ANN001
        y, h_t = kern.rnn_forward(x, w_x, bias, batch_sizes, h0, w_h, mask_h, relu, True)
        ctx.kern, ctx.relu, ctx.batch_sizes = kern, relu, batch_sizes
        ctx.save_for_backward(x, w_x, bias, h0, w_h, mask_h, y)
        return y, h_t

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_t):  # noqa: ANN001
        x, w_x, bias, h0, w_h, mask_h, y = ctx.saved_tensors
        dx, dwx, db, dh0, dwh = ctx.kern.rnn_backward(
            dy, dh_t, x, w_x, bias, ctx.batch_sizes, h0, w_h, mask_h, y, ctx.relu, ctx.needs_input_grad[3]
        )
        return None, None, None, dx, dwx, db, dh0, dwh, None


def rnn_layer(
    kern: Any,
    batch_sizes: Tensor,
    x: Tensor,
    w_x: Tensor,
    bias: Tensor | None,
    h0: Tensor,
    w_h: Tensor,
    mask_h: Tensor | None,
    relu: bool,
) -> tuple[Tensor, Tensor]:
    """One Elman layer ``h' = act(x W_x + h W_h + b)``, ``act`` tanh or relu."""
    if needs_grad(x, w_x, bias, h0, w_h):
        return _RNN.apply(kern, bool(relu), batch_sizes, x, w_x, bias, h0, w_h, mask_h)
    with torch.no_grad():
        y, h_t = kern.rnn_forward(x, w_x, bias, batch_sizes, h0, w_h, mask_h, bool(relu), False)
    return y, h_t
