"""Nested state structures: the one `zero_state` builder, the one state validator, the one placement check.

A *state size* is an ``int`` or a nested tuple of them (``LSTMStateTuple(c=128, h=128)``,
``(128, 128)`` for a two-layer ``MultiRNNCell``). A *state* has the same structure with a
tensor of shape ``(batch, size)`` at every leaf. Every cell, wrapper and runner in rnnkit
goes through the functions here, so that a state is built, checked and mapped one way.

``check_placement`` is the one dtype-and-device check of a run (layers, runners, cells): it compares
inputs, states, lengths and parameters before any math, so that a mismatch is named instead of
surfacing as a kernel's ``mat1 and mat2 must have the same dtype``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from .errors import DeviceError, DtypeError, ShapeError, StateStructureError

__all__ = [
    "same_nesting",
    "LSTMStateTuple",
    "flatten",
    "pack_as",
    "map_structure",
    "zero_state_for",
    "check_state",
    "check_float_dtype",
    "check_placement",
    "autocast_operands",
    "named_leaves",
    "as_torch_dtype",
]


class LSTMStateTuple(NamedTuple):
    """An LSTM's state, TF's order: the cell state ``c`` first, the hidden state ``h`` second.

    Each is ``(batch, num_units)`` (``h`` is ``(batch, num_proj)`` when a projection is used).
    torch orders the same pair ``(h, c)``; rnnkit's TF-style cells always use ``(c, h)``.
    """

    c: Any
    h: Any

    @property
    def dtype(self) -> torch.dtype:
        return self.c.dtype


def _is_sequence(x: Any) -> bool:
    return isinstance(x, (tuple, list))


def flatten(structure: Any) -> list[Any]:
    """The leaves of a nested tuple/list structure, depth first."""
    if _is_sequence(structure):
        return [leaf for item in structure for leaf in flatten(item)]
    return [structure]


def pack_as(structure: Any, flat: Sequence[Any]) -> Any:
    """Rebuild ``structure``'s nesting (named tuples included) from the leaves ``flat``."""
    return _packed(structure, iter(flat))


def _packed(s: Any, leaves: Iterator[Any]) -> Any:
    # (A module-level function: a nested one that calls itself is a reference cycle, garbage for the cyclic
    # collector at every call; its collections measured up to a fifth of a small unroll's time.)
    if _is_sequence(s):
        items = [_packed(x, leaves) for x in s]
        if isinstance(s, list):
            return items
        return type(s)(*items) if hasattr(s, "_fields") else tuple(items)
    return next(leaves)


def map_structure(fn: Callable[..., Any], structure: Any, *others: Any) -> Any:
    """Apply ``fn`` leaf-wise over ``structure`` and ``others`` (same nesting)."""
    columns = zip(flatten(structure), *(flatten(o) for o in others), strict=True)
    return pack_as(structure, [fn(*leaves) for leaves in columns])


def as_torch_dtype(dtype: Any) -> torch.dtype:
    """A torch dtype from a torch dtype, a NumPy dtype or scalar type, or a name (``"float32"``)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return torch.from_numpy(np.empty(0, dtype=np.dtype(dtype))).dtype
    except TypeError as err:
        raise TypeError(f"expected a torch or NumPy dtype, got {dtype!r}") from err


def check_float_dtype(dtype: torch.dtype, component: str) -> None:
    if not dtype.is_floating_point:
        raise DtypeError(  # with TF1's words, which code ported from TF matches
            f"{component}: expected a floating-point dtype, got {dtype} (RNN cell only supports floating point "
            f"inputs, but saw dtype: {dtype})"
        )


def zero_state_for(state_size: Any, batch_size: int, dtype: torch.dtype | None = None, device: Any = None) -> Any:
    """Zeros of shape ``(batch_size, size)`` at every leaf of ``state_size``."""
    if not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"zero_state: batch_size must be a non-negative int, got {batch_size!r}")
    dtype = torch.get_default_dtype() if dtype is None else as_torch_dtype(dtype)
    check_float_dtype(dtype, "zero_state")
    return map_structure(lambda n: torch.zeros(batch_size, n, dtype=dtype, device=device), state_size)


def _describe(structure: Any) -> str:
    if _is_sequence(structure):
        name = type(structure).__name__ if hasattr(structure, "_fields") else ""
        return f"{name}({', '.join(_describe(s) for s in structure)})"
    if isinstance(structure, torch.Tensor):
        return f"tensor{tuple(structure.shape)}"
    return repr(structure)


def same_nesting(state: Any, size: Any) -> bool:
    """Whether ``state`` nests like ``size`` (a ``state_size``), with a tensor at each leaf (plain tuples stand for
    named ones, as ``check_state`` accepts them)."""
    if _is_sequence(size):
        return (
            _is_sequence(state)
            and len(state) == len(size)
            and all(same_nesting(s, z) for s, z in zip(state, size, strict=True))
        )
    return isinstance(state, torch.Tensor)


def check_state(state: Any, state_size: Any, batch_size: int, component: str) -> Any:
    """Validate ``state`` against ``state_size`` and return it in ``state_size``'s structure.

    Plain tuples are accepted where a named tuple is expected (``(c, h)`` for an
    ``LSTMStateTuple``) and come back as the named tuple. Nothing is broadcast: every leaf
    must be exactly ``(batch_size, size)`` and floating point.
    """
    if not same_nesting(state, state_size):
        # TF1's words where it expects a tuple ("Expected state to be a tuple of length 2, but received: ...")
        expected = (
            f"a tuple of length {len(state_size)}" if isinstance(state_size, tuple) else "one tensor"
        )
        got = _describe(state)
        raise StateStructureError(
            f"{component}: state structure does not match state_size; expected {_describe(state_size)}, got {got} "
            f"(Expected state to be {expected}, but received: {got})"
        )
    for leaf, size in zip(flatten(state), flatten(state_size), strict=True):
        if tuple(leaf.shape) != (batch_size, size):
            raise ShapeError(
                f"{component}: expected a state of structure {_describe(state_size)} with leaves "
                f"(batch={batch_size}, size), got {_describe(state)}"
            )
        check_float_dtype(leaf.dtype, f"{component} state")
    return pack_as(state_size, flatten(state))


def named_leaves(structure: Any, prefix: str) -> list[tuple[str, Any]]:
    """``(name, leaf)`` for each leaf: ``state.c``, ``state[1].h``: the names the error messages use."""
    if not _is_sequence(structure):
        return [(prefix, structure)]
    fields = getattr(structure, "_fields", None)
    keys = [f".{f}" for f in fields] if fields else [f"[{i}]" for i in range(len(structure))]
    return [pair for key, item in zip(keys, structure, strict=True) for pair in named_leaves(item, prefix + key)]


def _parameters_of(module: torch.nn.Module) -> list[torch.Tensor]:
    """Every parameter of ``module`` and its submodules, registration order, duplicates allowed (cheaper than
    ``Module.parameters()``, which hashes each tensor; this runs on every call of a small layer)."""
    if not module._modules:
        return [p for p in module._parameters.values() if p is not None]
    out, todo = [], [module]
    while todo:
        m = todo.pop(0)
        out.extend(p for p in m._parameters.values() if p is not None)
        todo.extend(c for c in m._modules.values() if c is not None)
    return out


def _refuse_parameters(component: str, module: torch.nn.Module, tensors: Sequence[tuple[str, Any]]) -> None:
    """Name a parameter whose dtype or device differs from most of the others' (a converted one, typically);
    between places as common, the input's (the first of ``tensors``) is taken as the expected one."""
    named = list(module.named_parameters(remove_duplicate=False))
    places = Counter((p.dtype, p.device) for _, p in named)
    first = next(((t.dtype, t.device) for _, t in tensors if t is not None), None)
    dtype, device = max(places, key=lambda place: (places[place], place == first))
    example = next(name for name, p in named if (p.dtype, p.device) == (dtype, device))
    for name, p in named:
        if (p.dtype, p.device) != (dtype, device):
            error = DtypeError if p.dtype != dtype else DeviceError
            raise error(
                f"{component}: the parameters disagree: {name} is {p.dtype} on {p.device}, while {example} is "
                f"{dtype} on {device}; all parameters of a module must share one dtype and device "
                f"(convert the module with .to({dtype}) and .to('{device}'), or convert {name} back)"
            )


def _refuse_tensor(component: str, name: str, t: torch.Tensor, ref: str, dtype: Any, device: Any, module: bool) -> None:
    """``t`` (called ``name``) differs from ``ref``'s dtype or device: say which, and the ways out. ``module``:
    ``t`` is the input and ``ref`` the parameters, so converting the module is the other way out."""
    verb = "are" if ref == "the parameters" else "is"
    if t.dtype != dtype:
        said = f"{component}: {name} has dtype {t.dtype}, but {ref} {verb} {dtype}"
        if ref == "the parameters" and _autocast_state(t.dtype, dtype, t.device, False):
            # (torch.nn refuses it too, with a ValueError or a RuntimeError from its kernels: DtypeError is both)
            what = "an input" if module else "a state"
            said += f" ({what} of {t.dtype} goes with {dtype} parameters only under torch.autocast('cpu'))"
        if module and t.dtype.is_floating_point:  # and torch.nn's own words for the input against the weights
            raise DtypeError(
                f"{said} (RNN input dtype ({t.dtype}) does not match weight dtype ({dtype})). Convert input: "
                f"input.to({dtype}), or convert model: model.to({t.dtype})"
            )
        raise DtypeError(f"{said}; convert {name} ({name}.to({dtype}))")
    fix = f"move {name} (.to('{device}'))" + (f" or the module (.to('{t.device}'))" if module else "")
    raise DeviceError(f"{component}: {name} is on device {t.device}, but {ref} {verb} on {device}; {fix}")


_AUTOCAST_STATE_DTYPES = (torch.bfloat16, torch.float16)


def _autocast_state(got: torch.dtype, params: torch.dtype, device: torch.device, active: bool = True) -> bool:
    """Whether a state of dtype ``got`` goes with float32 parameters on ``device`` under autocast (``active``: the
    present one): on the CPU, a bfloat16 or float16 state (either, whatever autocast's dtype: torch.nn promotes)."""
    return (
        got in _AUTOCAST_STATE_DTYPES
        and params is torch.float32
        and device.type == "cpu"
        and (not active or torch.is_autocast_enabled("cpu"))
    )


def autocast_operands(module: torch.nn.Module, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
    """A direct cell call's ``(inputs, state)`` under an active CPU autocast with float32 parameters (checked): a
    bf16/fp16 input widened to float32 (exactly, differentiably: the engine's policy, ``engine.precision``), and a
    state of the low dtype that autocast does not run (fp16 under bf16 autocast, or the reverse) too: autocast's ops
    refuse it (``at::autocast::prioritize``), and its dtype only ever promotes with autocast's to float32. Neither
    changes the dtypes torch.nn's cells return (those of ``promote_types(low, state)``); else both as they came."""
    if not torch.is_autocast_enabled("cpu") or inputs.device.type != "cpu":
        return inputs, state
    like = next(module.parameters(), None)
    if like is None or like.dtype is not torch.float32:
        return inputs, state
    low = torch.get_autocast_dtype("cpu")
    other = torch.float16 if low is torch.bfloat16 else torch.bfloat16
    if inputs.dtype in _AUTOCAST_STATE_DTYPES:
        inputs = inputs.float()
    return inputs, map_structure(lambda t: t.float() if isinstance(t, torch.Tensor) and t.dtype is other else t, state)


def check_placement(
    component: str,
    module: torch.nn.Module | None,
    tensors: Sequence[tuple[str, Any]],
    lengths: tuple[str, Any] | None = None,
) -> None:
    """The one dtype-and-device check of a run, before any math: refuse any mismatch, naming both sides.

    * every parameter of ``module`` (``None``: none) has the dtype and device of its first parameter;
    * every tensor of ``tensors`` (``(name, tensor)`` pairs, input first; ``None`` entries skipped) has the
      parameters' dtype and device (the first tensor's when there are no parameters);
    * ``lengths`` (``(name, value)``; checked only when the value is a tensor) is on that device or on the CPU.

    Under an active CPU ``torch.autocast`` the input and the states (when ``module`` has float32 CPU parameters) may
    also be bfloat16 or float16, each on its own, as ``torch.nn`` accepts: a bf16 input, a state returned under
    autocast fed back (the engine computes in float32 and returns torch.nn's dtypes, ``rnnkit.engine.autocast``).

    Raises ``DtypeError`` or ``DeviceError``: ``ValueError`` and ``RuntimeError`` alike, as torch.nn raises for
    the same mismatches (``ValueError`` for an input against the weights, ``RuntimeError`` from its kernels).
    (Plain loops, no message built on success: a small layer runs this on every call.)
    """
    params = _parameters_of(module) if module is not None else None
    if params:
        ref, ref_name = params[0], "the parameters"
        dtype, device = ref.dtype, ref.device
        for p in params:
            if p.dtype is not dtype or p.device != device:
                _refuse_parameters(component, module, tensors)
    else:
        ref = next((t for _, t in tensors if t is not None), None)
        if ref is None:
            return
        ref_name = next(name for name, t in tensors if t is ref)
        dtype, device = ref.dtype, ref.device
    first = True
    for name, t in tensors:
        if t is None:
            continue
        misplaced = t is not ref and (t.dtype is not dtype or t.device != device)
        # (a state fed back under autocast: torch.nn takes it)
        if misplaced and (not params or t.device != device or not _autocast_state(t.dtype, dtype, device)):
            _refuse_tensor(component, name, t, ref_name, dtype, device, first and bool(params))
        first = False
    if lengths is not None and isinstance(lengths[1], torch.Tensor):
        name, where = lengths[0], lengths[1].device
        if where != device and where.type != "cpu":
            places = "the CPU" + ("" if device.type == "cpu" else f" or on {device}")
            raise DeviceError(
                f"{component}: {name} is on device {where}; expected it on {places} (the device of {ref_name}): "
                "rnnkit reads the lengths' values"
            )
