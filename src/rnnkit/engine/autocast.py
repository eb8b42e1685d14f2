"""The engine under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (or float16): torch.nn's dtypes, float32 math.

What torch 2.13 does (measured): autocast casts ops, not modules. On CPU its lower-precision list has the matmuls and
``mkldnn_rnn_layer`` (oneDNN's LSTM), so ``torch.nn`` on float32 inputs and weights (from zeros or a float32
state) returns

================================================  ==========================  ===================
torch.nn layer under CPU autocast                  outputs and ``h_n``          ``c_n``
================================================  ==========================  ===================
LSTM, padded input, no projection (oneDNN)         autocast dtype              autocast dtype
LSTM with ``proj_size`` (its native loop)          autocast dtype              float32
LSTM on a PackedSequence (its native loop)         float32                     float32
GRU, either input                                  float32                     --
RNN (tanh or relu), either input                   autocast dtype              --
================================================  ==========================  ===================

(the native loops' dtypes are autocast's op rules on the step: a matmul's result is bf16, ``c' = f * c + i * g``
promotes to the float32 ``c``, GRU's ``h' = (1 - z) * n + z * h`` to the float32 ``h``, RNN's ``h' = tanh(...)`` of a
matmul stays bf16).

**A state fed back** (measured, torch 2.13 CPU, 2 layers, padded and packed, ``batch_first``, unbatched, inference
and grad mode alike): under autocast ``torch.nn`` takes ``h_0``/``c_0`` in float32, bfloat16 or float16 (either low
dtype under either autocast dtype, and mixed, as an LSTM with ``proj_size`` returns them), and a native loop carries
its state in ``promote_types(low, dtype of the state given)``; float64 states raise ``RuntimeError``:

===========================================  =========================================  ============================
torch.nn layer, initial state (h, c)          outputs and ``h_n``                        ``c_n``
===========================================  =========================================  ============================
LSTM padded, no projection (oneDNN)           autocast dtype, whatever the state's       autocast dtype
LSTM packed, no projection (native loop)      ``promote(low, c_0)``: (bf16, bf16) bf16;  as ``h_n``
                                              (f32, bf16) bf16; (bf16, f32) float32;
                                              fp16 states under bf16 autocast float32
LSTM with ``proj_size``, either input         autocast dtype                             ``promote(low, c_0)``
GRU, either input                             ``promote(low, h_0)``: bf16 from bf16,     --
                                              float32 from float32 (or fp16 under bf16)
RNN (tanh or relu), either input              autocast dtype, whatever the state's       --
===========================================  =========================================  ============================

Outside autocast, a bf16/fp16 state with float32 parameters raises ``RuntimeError`` (oneDNN's "could not create a
primitive descriptor for the LSTM forward propagation primitive", else "mat1 and mat2 must have the same dtype, but
got BFloat16 and Float"), except where promotion happens to let it through (an LSTM with a float32 ``h_0`` and a bf16
``c_0``, packed or with ``proj_size``: float32 results). rnnkit refuses every such state with ``DtypeError`` (a
``RuntimeError``) naming the state, the exception included (its padded twin refuses it in torch.nn too). Under
float16 autocast in grad mode torch.nn's padded LSTM raises (oneDNN has no fp16 LSTM training here); rnnkit runs it.

**A bf16 or fp16 input** with float32 parameters (measured likewise, both autocast dtypes, zeros or a float32, bf16 or
fp16 state): torch.nn takes it; its zeros are made in the input's dtype, so a native loop carries
``promote(low, x)`` from zeros, and its oneDNN LSTM takes a bf16 input always (where oneDNN has bf16 on the CPU) but
an fp16 one only outside grad mode (``use_mkldnn``; ``_onednn``), else its native loop:

===========================================  =========================================  ============================
torch.nn layer, bf16 autocast                 outputs and ``h_n``                        ``c_n``
===========================================  =========================================  ============================
LSTM padded, bf16 input; fp16 in inference    autocast dtype, whatever the state's       autocast dtype
LSTM padded, fp16 input with grad; packed     ``promote(low, c_0 or x)``: bf16 from a    as ``h_n``
                                              bf16 input or state, else float32
LSTM with ``proj_size``                       autocast dtype                             ``promote(low, c_0 or x)``
GRU                                           ``promote(low, h_0 or x)``                 --
RNN (tanh or relu)                            autocast dtype                             --
===========================================  =========================================  ============================

(the same under fp16 autocast, the two low dtypes' roles swapped: an fp16 input's zeros give fp16, a bf16 one's
float32). Outside autocast torch.nn refuses the input with ``ValueError`` (its dtype check; a packed LSTM, which
skips it: its matmul's ``RuntimeError``); rnnkit raises ``DtypeError``, both classes, naming the input. Where
torch.nn fails inside (fp16 autocast in grad mode on the padded LSTM's oneDNN, bf16 input as float32; a packed
bidirectional RNN meeting the other low dtype, in ``at::autocast::prioritize``) rnnkit runs, with the table's dtypes.

rnnkit's engine follows the tables, leaf family by leaf family, for its layers (``forward``, ``step``, ``stream``)
and for the TF runners alike (``rnnkit.dynamic_rnn`` & co., ``engine.unroll``): it takes a bf16/fp16 state under CPU
autocast, and a bf16/fp16 input with float32 parameters (``_structure.check_placement``), computes in float32 (input
and state widened exactly), and gives each leaf the dtypes of ``leaf_dtypes`` from the dtypes of the state it started
from (``None``: zeros, in the input's dtype) and of the input. A cell called directly runs its own step on the widened
input with autocast's ops, as torch.nn's cells do (``_structure.autocast_operands``). An LSTM leaf whose
math is torch's returns the autocast dtype on full sequences (no lengths) without projection; an LSTM with lengths,
or with clips (torch's native-loop math) carries ``c`` in ``promote(low, c_0)`` and ``h`` the same, or in the
autocast dtype with a projection; peepholes multiply float32 parameters with ``c``, so a peephole LSTM is float32; a
layer-norm LSTM float32 (layer norm is one of autocast's float32 ops); GRUs ``promote(low, h_0)``; RNNs the autocast
dtype. A ``MultiRNNCell`` gives each layer's state its family's dtype and the top layer's output dtype, a
``DropoutWrapper`` its inner cell's, a ``ResidualWrapper`` float32 outputs (the float32 input is added). A cell the
engine does not lower, and a compiled user cell, return float32.

Where the route is torch's own kernel (the oneDNN LSTM of a stack, in inference above ``route.FUSED_MAX_BATCH``
rows), bf16 autocast runs it exactly as torch.nn (same results bit for bit; under float16 autocast it runs in
float32 instead: oneDNN has no float16 LSTM on many CPUs, where torch.nn fails). Everywhere else the engine runs with
autocast off, in float32 on the float32 operands (the fused kernels are not autocast ops: nothing is rounded to
bf16 inside, so values are at least as accurate as torch's, which multiplies bf16-rounded operands), and rounds
the results the table gives in the autocast dtype once, at the end. Gradients reach the float32 parameters in
float32.

Example::

    >>> import torch, rnnkit
    >>> layer = rnnkit.GRU(4, 8)
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     out, h = layer(torch.randn(5, 2, 4))
    ...     out_rnn, h_rnn = rnnkit.RNN(4, 8)(torch.randn(5, 2, 4))
    >>> out.dtype, out_rnn.dtype, h_rnn.dtype
    (torch.float32, torch.bfloat16, torch.bfloat16)
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from ._leaf_specs import GRUSpec, LNLSTMSpec, LSTMSpec, RNNSpec, Spec
from .lowering import DropoutSpec, ResidualSpec, StackSpec
from .precision import LOW_PRECISION

__all__ = ["autocast_dtype", "leaf_dtypes", "output_dtype", "cast_state", "cast_stack"]

F32 = torch.float32


def autocast_dtype(x: Tensor, like: Tensor | None = None) -> torch.dtype | None:
    """The lower dtype of an active CPU autocast that applies to ``x`` on the CPU, else ``None``: to a float32 ``x``,
    and to a bf16/fp16 ``x`` when ``like`` (a parameter of the module it enters) is float32 (a bf16 model's own
    bf16 input is not autocast's: ``engine.precision``)."""
    if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return None
    if x.dtype != F32 and (x.dtype not in LOW_PRECISION or like is None or like.dtype != F32):
        return None
    return torch.get_autocast_dtype("cpu")


def _onednn(x_dtype: torch.dtype) -> bool:
    """Whether torch.nn's padded LSTM without projection runs oneDNN (``mkldnn_rnn_layer``, one autocast op) on a
    CPU input of ``x_dtype``, as torch's ``use_mkldnn`` decides: float32; bf16 where oneDNN has bf16 on this CPU;
    fp16 where it has fp16, outside grad mode only. Else its native loop (``_carried``)."""
    if not torch.backends.mkldnn.is_available() or not torch.backends.mkldnn.enabled:
        return False
    if x_dtype == torch.bfloat16:
        return _supported("bf16")
    if x_dtype == torch.float16:
        return not torch.is_grad_enabled() and _supported("fp16")
    return True


@functools.cache
def _supported(kind: str) -> bool:
    return bool(getattr(torch.ops.mkldnn, f"_is_mkldnn_{kind}_supported")())


def _carried(low: torch.dtype, given: torch.dtype | None, x_dtype: torch.dtype) -> torch.dtype:
    """The dtype a native loop carries a state in from an initial state of dtype ``given`` (``None``: zeros, made in
    the input's dtype ``x_dtype``, as torch.nn makes them): autocast's promotion of the step's lower-precision terms
    with it (``f * c``, ``z * h``)."""
    return torch.promote_types(low, x_dtype if given is None else given)


def leaf_dtypes(
    leaf: Spec,
    low: torch.dtype,
    has_lengths: bool,
    given: tuple[torch.dtype, ...] | None = None,
    x_dtype: torch.dtype = F32,
) -> tuple[torch.dtype, tuple[torch.dtype, ...]]:
    """``(output dtype, dtypes of the kernels' state (h[, c]))`` of a leaf under autocast to ``low`` (the tables),
    from an initial state of dtypes ``given`` (the kernels' ``(h[, c])``; ``None``: zeros) on an input of the
    stack's (or runner's) dtype ``x_dtype``."""
    if isinstance(leaf, LSTMSpec):
        if leaf.torch_mode == "LSTM" and not leaf.has_proj and not has_lengths and _onednn(x_dtype):
            return low, (low, low)  # torch's oneDNN LSTM: one autocast op, whatever the state's dtypes
        # peepholes multiply the float32 parameters with c: float32 gates and state whatever came
        c = F32 if leaf.peepholes else _carried(low, given[1] if given else None, x_dtype)
        h = low if leaf.has_proj else c
        return h, (h, c)
    if isinstance(leaf, RNNSpec):
        return low, (low,)
    if isinstance(leaf, GRUSpec):
        h = _carried(low, given[0] if given else None, x_dtype)
        return h, (h,)
    if isinstance(leaf, LNLSTMSpec):
        return F32, (F32, F32)
    return F32, ()  # (a compiled cell: float32 throughout)


def _given(spec: Spec, state: Any) -> tuple[torch.dtype, ...] | None:
    """The dtypes of a leaf's initial ``state`` as the kernels' ``(h[, c])``, or ``None`` for zeros."""
    return None if state is None else tuple(t.dtype for t in spec.to_internal(state))


def output_dtype(
    spec: Spec | None, low: torch.dtype, has_lengths: bool, given: Any = None, x_dtype: torch.dtype = F32
) -> torch.dtype:
    """The dtype of the outputs of a (possibly composite) lowered cell under autocast to ``low``, from the initial
    state ``given`` (the cell's state structure; ``None``: zeros) on an input of dtype ``x_dtype``."""
    if isinstance(spec, StackSpec):
        last = None if given is None else spec.split_state(given)[-1]
        return output_dtype(spec.layers[-1], low, has_lengths, last, x_dtype)
    if isinstance(spec, DropoutSpec):
        return output_dtype(spec.inner, low, has_lengths, given, x_dtype)
    if spec is None or isinstance(spec, ResidualSpec):
        return F32
    return leaf_dtypes(spec, low, has_lengths, _given(spec, given), x_dtype)[0]


def cast_state(
    spec: Spec | None, state: Any, low: torch.dtype, has_lengths: bool, given: Any = None, x_dtype: torch.dtype = F32
) -> Any:
    """A (float32) final state of ``spec``'s cell with each leaf's parts in its dtype under autocast to ``low``, from
    the initial state ``given`` (same structure; ``None``: zeros) on an input of dtype ``x_dtype``."""
    if spec is None:
        return state
    if isinstance(spec, StackSpec):
        parts = spec.split_state(state)
        starts = [None] * len(parts) if given is None else spec.split_state(given)
        layers = zip(spec.layers, parts, starts, strict=True)
        return spec.join_state([cast_state(leaf, p, low, has_lengths, g, x_dtype) for leaf, p, g in layers])
    if isinstance(spec, (DropoutSpec, ResidualSpec)):
        return cast_state(spec.inner, state, low, has_lengths, given, x_dtype)
    dtypes = leaf_dtypes(spec, low, has_lengths, _given(spec, given), x_dtype)[1]
    if not dtypes:
        return state
    internal = spec.to_internal(state)
    return spec.from_internal(*(t.to(d) for t, d in zip(internal, dtypes, strict=True)))


def cast_stack(
    leaf: Spec,
    y: Tensor,
    parts: Any,
    low: torch.dtype,
    has_lengths: bool,
    given: Any = None,
    x_dtype: torch.dtype = F32,
) -> tuple[Tensor, Any]:
    """A layer stack's float32 ``(outputs, stacked state parts (h[, c]))`` in the dtypes of its leaves' family, from
    the stacked initial parts ``given`` (``None``: zeros) on an input of dtype ``x_dtype``."""
    starts = None if given is None else tuple(p.dtype for p in given)
    out, dtypes = leaf_dtypes(leaf, low, has_lengths, starts, x_dtype)
    return y.to(out), tuple(p.to(d) for p, d in zip(parts, dtypes, strict=True))
