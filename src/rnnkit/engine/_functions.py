"""Autograd for the fused kernels: one ``autograd.Function`` for every kernel family.

Each family (``lstm``, ``lnlstm``, ``gru``, ``rnn``) is a pair of kernels with one calling convention::

    <family>_forward(x, w_x, bias, batch_sizes, *rest, *cfg, save[, mask_r])
        -> (y, h_T[, c_T], *saved)            # saved: the activations backward needs (only when save)
    <family>_backward(dy, dh_T[, dc_T], x, w_x, bias, batch_sizes, *rest, y, *saved, *cfg, need_dx[, mask_r])
        -> one gradient per input tensor but the trailing masks

where ``rest`` ends with the family's per-sequence masks: the state masks, then the recurrent-dropout mask
``mask_r``, which the LSTMs' and the RNN's kernels take last (it came after their first signature, defaulting to
None; absent, it is not passed, and they run as before it existed); the GRU's take it after ``mask_h``. A layer
is one forward call over the packed sequence (saving the activations once per step) and one backward call
(backpropagation through time, weight gradients as single matmuls over all steps). ``kern`` is the compiled op
namespace or the pure-PyTorch twin module: both expose the same functions. When no input needs a gradient the
forward kernel runs directly, saving nothing. A layer in bfloat16 or float16 runs them on its inputs widened to float32
and returns its outputs in its own dtype (``rnnkit.engine.precision``).

Higher-order gradients: autograd runs a backward in grad mode exactly when it was asked for a differentiable
gradient (``create_graph=True``). Then, and only then, the layer's gradient is taken through its forward
recomputed in differentiable torch ops (``_autodiff``) instead of the backward kernel, so gradient penalties,
Hessian-vector products and ``gradgradcheck`` see exact second derivatives on every path. Under functorch's
transforms (``torch.func.vmap/grad/jacrev``, gradcheck's batched gradients) the same torch-ops forward runs, since
the compiled kernels have no batching rules.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from . import _autodiff
from .precision import LOW_PRECISION, all_widened, bf16_multiplies, multiplies_dtype, narrowed

__all__ = ["lstm_layer", "lnlstm_layer", "gru_layer", "rnn_layer", "needs_grad"]


class _Family(NamedTuple):
    name: str  # the kernels' prefix
    outputs: int  # what a layer returns: (y, h_T) or (y, h_T, c_T)
    masks: int  # trailing mask tensors among the inputs (never differentiated), mask_r the last
    mask_r_last: bool = True  # the kernels take mask_r as their last argument (see above)

    @property
    def forward(self) -> str:
        return f"{self.name}_forward"

    def split(self, rest: tuple) -> tuple[tuple, tuple]:
        """``rest`` (the inputs after x, w_x, bias) as the kernels take it: ``(before cfg, after the flag)``."""
        if not self.mask_r_last:
            return rest, ()
        return rest[:-1], (() if rest[-1] is None else rest[-1:])


_LSTM = _Family("lstm", 3, 3)  # ..., mask_h, mask_c, mask_r
_LNLSTM = _Family("lnlstm", 3, 3)
_GRU = _Family("gru", 2, 2, mask_r_last=False)  # x, w_x, bias_x, h0, w_h, bias_h, w_xn, w_hn, mask_h, mask_r
_RNN = _Family("rnn", 2, 2)  # ..., mask_h, mask_r


def needs_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd must track a call on ``tensors``."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class _FusedLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kern, family, cfg, batch_sizes, *inputs):  # noqa: ANN001
        x, w_x, bias, *rest = inputs
        rest, tail = family.split(tuple(rest))
        out = getattr(kern, family.forward)(x, w_x, bias, batch_sizes, *rest, *cfg, True, *tail)
        ctx.kern, ctx.family, ctx.cfg, ctx.batch_sizes, ctx.n_inputs = kern, family, cfg, batch_sizes, len(inputs)
        ctx.multiplies = multiplies_dtype()  # a bf16 layer's backward multiplies as its forward did
        # The inputs (the biases too: a higher-order backward recomputes the forward from them), y and the
        # activations the backward kernel reads.
        ctx.save_for_backward(*inputs, out[0], *out[family.outputs :])
        return tuple(out[: family.outputs])

    @staticmethod
    def backward(ctx, *grads):  # noqa: ANN001
        saved = ctx.saved_tensors
        inputs, activations = saved[: ctx.n_inputs], saved[ctx.n_inputs :]
        family = ctx.family
        # create_graph=True (the gradient must itself be differentiable), or a vmap over this backward
        if torch.is_grad_enabled() or _transformed(grads):
            input_grads = _differentiable_grads(ctx, inputs, grads)
        else:
            x, w_x, bias, *rest = inputs
            rest, tail = family.split(tuple(rest))
            backward = getattr(ctx.kern, f"{family.name}_backward")
            cfg, need_dx = ctx.cfg, ctx.needs_input_grad[4]
            args = (*grads, x, w_x, bias, ctx.batch_sizes, *rest, *activations, *cfg, need_dx, *tail)
            if ctx.multiplies is None:  # (a float32 layer's: no scope to enter, on every backward)
                input_grads = backward(*args)
            else:
                with bf16_multiplies(ctx.kern, ctx.multiplies):
                    input_grads = backward(*args)
            input_grads = [_laid_out_as(g, t) for g, t in zip(input_grads, inputs, strict=False)]
        return (None, None, None, None, *input_grads, *([None] * family.masks))


def _laid_out_as(grad: Tensor | None, like: Tensor | None) -> Tensor | None:
    """``grad`` with the strides of its input ``like`` when that is a transposed matrix (torch-layout weights reach
    the kernels as ``weight.t()``): after autograd transposes it back, the parameter's gradient is contiguous, as
    torch.nn's are (a copy of one weight-sized matrix per backward)."""
    if grad is None or like is None or like.dim() != 2 or like.is_contiguous() or not like.t().is_contiguous():
        return grad
    return grad.t().contiguous().t()


def _transformed(tensors: tuple[Tensor | None, ...] = ()) -> bool:
    """Whether a functorch transform is active (``torch.func.vmap/grad/jacrev``), or ``tensors`` hold the legacy
    vmap's batched tensors (gradcheck's batched-gradient check vmaps the backward so). The compiled kernels have
    no batching rule; the differentiable forward (``_autodiff``) is plain torch ops, which every transform knows.
    (The transform level is one cheap call: this runs on every fused layer call.)"""
    functorch = torch._C._functorch
    if functorch.maybe_current_level() is not None:
        return True
    return any(t is not None and functorch.is_legacy_batchedtensor(t) for t in tensors)


def _differentiable_grads(ctx: Any, inputs: tuple[Tensor | None, ...], grads: tuple[Tensor, ...]) -> list:
    """The layer's input gradients as functions of its inputs and of ``grads``, by autograd through the forward
    recomputed in torch ops (``_autodiff``) on the saved inputs, which carry their autograd history. (Also for
    batched ``grads``: a vmap over this backward, as gradcheck's batched-gradient check makes.)"""
    create_graph = torch.is_grad_enabled()
    family = ctx.family
    wanted = [
        k for k, t in enumerate(inputs[: ctx.n_inputs - family.masks]) if t is not None and ctx.needs_input_grad[4 + k]
    ]
    with torch.enable_grad():
        outputs = _torch_ops_forward(family, ctx.cfg, ctx.batch_sizes, inputs)
        found = torch.autograd.grad(
            outputs, [inputs[k] for k in wanted], grads, create_graph=create_graph, allow_unused=True
        )
    input_grads: list[Tensor | None] = [None] * (ctx.n_inputs - family.masks)
    for k, g in zip(wanted, found, strict=True):
        input_grads[k] = g
    return input_grads


def _torch_ops_forward(family: _Family, cfg: tuple, batch_sizes: Tensor, inputs: tuple) -> tuple[Tensor, ...]:
    """The family's forward in differentiable torch ops (``_autodiff``), with the kernels' arguments."""
    x, w_x, bias, *rest = inputs
    return _autodiff.FAMILIES[family.name](x, w_x, bias, batch_sizes, *rest, *cfg)


def _layer(kern: Any, family: _Family, cfg: tuple, batch_sizes: Tensor, *inputs: Tensor | None) -> Any:
    dtype = inputs[0].dtype
    if dtype in LOW_PRECISION:  # bf16/fp16: float32 sums inside, the caller's dtype outside (``precision``)
        with bf16_multiplies(kern, dtype):
            if _inference(family, inputs) and multiplies_dtype() is torch.bfloat16:
                # The compiled kernels' bf16 units read x as it came (``csrc/loop.h`` project_inputs): no widened
                # copy to write and round back, on every call.
                out = _inference_forward(kern, family, cfg, batch_sizes, (inputs[0], *all_widened(inputs[1:])))
            else:
                out = _layer(kern, family, cfg, batch_sizes, *all_widened(inputs))
        return tuple(narrowed(t, dtype) for t in out)
    if _inference(family, inputs):
        return _inference_forward(kern, family, cfg, batch_sizes, inputs)
    if _transformed():  # under torch.func transforms: the same forward in torch ops
        return _torch_ops_forward(family, cfg, batch_sizes, inputs)
    return _FusedLayer.apply(kern, family, cfg, batch_sizes, *inputs)


def _inference(family: _Family, inputs: tuple) -> bool:
    """No input needs a gradient and no functorch transform runs: the forward kernel alone, saving nothing."""
    return not _transformed() and not needs_grad(*inputs[: len(inputs) - family.masks])


def _inference_forward(kern: Any, family: _Family, cfg: tuple, batch_sizes: Tensor, inputs: tuple) -> tuple:
    # No input needs a gradient, so the kernel's outputs need no graph: no no_grad() block needed around it.
    x, w_x, bias, *rest = inputs
    rest, tail = family.split(tuple(rest))
    out = getattr(kern, family.forward)(x, w_x, bias, batch_sizes, *rest, *cfg, False, *tail)
    return tuple(out[: family.outputs])


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
    mask_r: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer over packed ``x`` ``(total, I)``: outputs ``(total, P)`` and final ``h (B, P)``, ``c (B, H)``.

    ``w_x (I, 4H)``, ``w_h (P, 4H)`` with gate blocks at ``gate_order`` = blocks of (i, g, f, o);
    ``peep (3, H)`` = (w_i, w_f, w_o); ``w_proj (H, P)``; clips of 0 mean none. ``mask_h (B, P)``, ``mask_c (B, H)``
    multiply the carried state (a DropoutWrapper's); ``mask_r (B, P)`` only the ``h`` the recurrent matmul reads
    (recurrent dropout: ``g_t = x_t W_x + (h_{t-1} * mask_r) W_h + b``; outputs and final state unmasked by it).
    """
    cfg = (list(gate_order), float(forget_bias), float(cell_clip), float(proj_clip))
    return _layer(kern, _LSTM, cfg, batch_sizes, x, w_x, bias, h0, c0, w_h, peep, w_proj, mask_h, mask_c, mask_r)


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
    mask_r: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """A layer-normalised LSTM layer; ``gamma, beta (5, H)`` for the norms of i, g, f, o and the cell state; the
    masks as ``lstm_layer``'s (``mask_r (B, H)``)."""
    cfg = (list(gate_order), float(forget_bias), float(eps))
    inputs = (x, w_x, bias, h0, c0, w_h, gamma, beta, mask_h, mask_c, mask_r)
    return _layer(kern, _LNLSTM, cfg, batch_sizes, *inputs)


def gru_layer(
    kern: Any,
    batch_sizes: Tensor,
    x: Tensor,
    w_x: Tensor,
    bias_x: Tensor | None,
    h0: Tensor,
    w_h: Tensor,
    bias_h: Tensor | None,
    w_xn: Tensor | None,
    w_hn: Tensor | None,
    mask_h: Tensor | None,
    mask_r: Tensor | None,
    reset_after: bool,
) -> tuple[Tensor, Tensor]:
    """One GRU layer (blocks r, z, n): ``w_x (I, 3H)``, ``w_h (H, 3H)``; ``bias_h`` only with ``reset_after``.

    ``w_xn (I, H)``, ``w_hn (H, H)``: the candidate's columns in tensors of their own (TF's GRUCell keeps them in
    a kernel apart), then ``w_x (I, 2H)``, ``w_h (H, 2H)`` hold r, z only; both or neither. ``mask_h (B, H)``
    multiplies the carried state (a DropoutWrapper's); ``mask_r (B, H)`` only the ``h`` the matmuls read
    (recurrent dropout: ``z * h`` keeps ``h``).
    """
    inputs = (x, w_x, bias_x, h0, w_h, bias_h, w_xn, w_hn, mask_h, mask_r)
    return _layer(kern, _GRU, (bool(reset_after),), batch_sizes, *inputs)


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
    mask_r: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One Elman layer ``h' = act(x W_x + (h * mask_r) W_h + b)``, ``act`` tanh or relu; ``mask_h (B, H)``
    multiplies the carried state, ``mask_r (B, H)`` (recurrent dropout) only the ``h`` the matmul reads."""
    return _layer(kern, _RNN, (bool(relu),), batch_sizes, x, w_x, bias, h0, w_h, mask_h, mask_r)
