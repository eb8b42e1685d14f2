"""TF's ``add_variable`` / ``add_weight`` for user cells: named parameters, TF's initializers, TF's scopes.

A variable is an ``nn.Parameter`` registered on the cell under its TF name, with ``/`` as ``.``:
``add_variable("kernel", ...)`` is the parameter ``kernel`` (state-dict key ``kernel``), and
``add_variable("gates/kernel", ...)`` is ``kernel`` inside the sub-scope ``gates`` (a ``VariableScope``
module; key ``gates.kernel``, attribute ``cell.gates.kernel``), the names rnnkit's TF converters map to TF's
``.../gates/kernel``. ``trainable=False`` makes a parameter with ``requires_grad=False``: it stays in
``parameters()``, the state dict and ``count_params`` (as in Keras), and gets no gradient.

The initializer rule (``initial_value``), on the variable's TF shape:

* ``None``: TF's default, Glorot-uniform (``glorot_uniform_``, also rnnkit's own cells' default);
* a number: that constant;
* a name: ``zeros``, ``ones``, ``glorot_uniform``, ``glorot_normal``, ``he_uniform``, ``he_normal``,
  ``lecun_uniform``, ``lecun_normal``, ``orthogonal``, ``random_uniform`` (U(-0.05, 0.05)),
  ``random_normal`` and ``truncated_normal`` (std 0.05), with Keras's fans (``fan_in = shape[-2] * r``,
  ``fan_out = shape[-1] * r``, ``r`` the product of the leading dims; a 1-D shape's fans are its length);
* a tensor or NumPy array: its values (``shape`` may then be ``None``);
* a callable taking the shape (TF/Keras style: its first parameter is named ``shape``, or it takes ``dtype``
  or ``**kwargs``; Keras's initializer objects do): called as ``init(shape, dtype=dtype)``, it returns the
  values;
* any other callable (torch style, ``torch.nn.init.orthogonal_``): called on the empty tensor of the TF
  shape, which it fills in place (torch's functions then apply torch's fan conventions to that shape).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .._structure import as_torch_dtype
from ..errors import ArgumentTypeError, DtypeError, ShapeError, VariableNameError

__all__ = [
    "glorot_uniform_",
    "VariableScope",
    "create_variable",
    "initial_value",
    "tf_fans",
    "INITIALIZERS",
    "forget_variables",
    "variable",
    "variable_path",
]


class VariableScope(nn.Module):
    """A TF variable scope inside a cell (``gates`` of ``gates/kernel``): it holds variables, computes nothing."""


def tf_fans(shape: Sequence[int]) -> tuple[int, int]:
    """Keras's ``(fan_in, fan_out)`` of a TF-shaped variable: ``(rows, cols)`` for a matrix."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def glorot_uniform_(tensor: torch.Tensor) -> torch.Tensor:
    """TF's default initializer, on the variable's full TF shape.

    ``U(-l, l)`` with ``l = sqrt(6 / (fan_in + fan_out))``, the fans of ``tf_fans``: a 2-D ``(rows, cols)``
    variable has ``fan_in = rows``, ``fan_out = cols`` and a 1-D ``(n,)`` one has ``fan_in = fan_out = n``.
    """
    fan_in, fan_out = tf_fans(tensor.shape)
    limit = math.sqrt(6.0 / max(1, fan_in + fan_out))
    with torch.no_grad():
        return tensor.uniform_(-limit, limit)


def _scaled(scale: float, mode: str, distribution: str) -> Callable[[torch.Tensor], Any]:
    """Keras's ``VarianceScaling``: variance ``scale / n``, ``n`` the fan in, or the fans' mean."""

    def init(t: torch.Tensor) -> Any:
        fan_in, fan_out = tf_fans(t.shape)
        n = max(1.0, fan_in if mode == "fan_in" else (fan_in + fan_out) / 2)
        if distribution == "uniform":
            limit = math.sqrt(3.0 * scale / n)
            return nn.init.uniform_(t, -limit, limit)
        std = math.sqrt(scale / n) / 0.87962566103423978  # the std of a unit normal cut at +-2
        return nn.init.trunc_normal_(t, 0.0, std, -2 * std, 2 * std)

    return init


INITIALIZERS: dict[str, Callable[[torch.Tensor], Any]] = {
    "zeros": nn.init.zeros_,
    "ones": nn.init.ones_,
    "glorot_uniform": glorot_uniform_,
    "glorot_normal": _scaled(1.0, "fan_avg", "normal"),
    "he_uniform": _scaled(2.0, "fan_in", "uniform"),
    "he_normal": _scaled(2.0, "fan_in", "normal"),
    "lecun_uniform": _scaled(1.0, "fan_in", "uniform"),
    "lecun_normal": _scaled(1.0, "fan_in", "normal"),
    "orthogonal": nn.init.orthogonal_,
    "random_uniform": lambda t: nn.init.uniform_(t, -0.05, 0.05),
    "random_normal": lambda t: nn.init.normal_(t, 0.0, 0.05),
    "truncated_normal": lambda t: nn.init.trunc_normal_(t, 0.0, 0.05, -0.1, 0.1),
}


def _takes_shape(fn: Callable) -> bool:
    """Whether ``fn`` is a TF/Keras initializer (``fn(shape, dtype=None)``) rather than a torch one (``fn(tensor)``)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: torch's C functions, which take the tensor
        return False
    if any(p.name == "dtype" or p.kind is p.VAR_KEYWORD for p in params):
        return True
    return bool(params) and params[0].name == "shape"


def _accepts_dtype(fn: Callable) -> bool:
    params = inspect.signature(fn).parameters.values()
    return any(p.name == "dtype" or p.kind is p.VAR_KEYWORD for p in params)


def initial_value(
    initializer: Any, shape: tuple[int, ...] | None, dtype: torch.dtype, device: Any, component: str
) -> torch.Tensor:
    """The initial value of a variable of TF ``shape`` by the rule in this module's docstring."""
    if isinstance(initializer, (torch.Tensor, np.ndarray)):
        value = torch.as_tensor(initializer).detach().to(dtype=dtype, device=device).clone()
        if shape is not None and tuple(value.shape) != shape:
            raise ShapeError(f"{component}: the initial value has shape {tuple(value.shape)}, but shape={shape}")
        return value
    if shape is None:
        raise ValueError(f"{component}: shape is required unless the initializer is a tensor (its values)")
    data = torch.empty(shape, dtype=dtype, device=device)
    if initializer is None:
        initializer = "glorot_uniform"
    if isinstance(initializer, str):
        if initializer not in INITIALIZERS:
            raise ValueError(
                f"{component}: unknown initializer {initializer!r}; expected one of {sorted(INITIALIZERS)}, a number, "
                "a tensor or a callable"
            )
        initializer = INITIALIZERS[initializer]
    if isinstance(initializer, bool) or not (callable(initializer) or isinstance(initializer, (int, float))):
        raise ArgumentTypeError(
            f"{component}: initializer must be None, a number, a name, a tensor or a callable, got "
            f"{type(initializer).__name__} ({initializer!r})"
        )
    with torch.no_grad():
        if not callable(initializer):
            return data.fill_(initializer)
        if not _takes_shape(initializer):
            initializer(data)
            return data
        kwargs = {"dtype": dtype} if _accepts_dtype(initializer) else {}
        value = torch.as_tensor(initializer(shape, **kwargs))  # a tensor, an array or nested lists
    if tuple(value.shape) != shape:
        raise ShapeError(f"{component}: the initializer returned a value of shape {tuple(value.shape)}, not {shape}")
    return value.detach().to(dtype=dtype, device=device).clone()


def _check_shape(shape: Any, component: str) -> tuple[int, ...] | None:
    if shape is None:
        return None
    dims = [shape] if isinstance(shape, int) and not isinstance(shape, bool) else shape
    if isinstance(dims, (str, bytes)) or not (isinstance(dims, Sequence) or hasattr(dims, "as_list")):
        raise ArgumentTypeError(
            f"{component}: shape must be a sequence of ints, got {type(shape).__name__} ({shape!r})"
        )
    dims = dims.as_list() if hasattr(dims, "as_list") else list(dims)
    bad = [d for d in dims if isinstance(d, bool) or not hasattr(d, "__index__")]
    if bad:
        raise ArgumentTypeError(f"{component}: shape must be a sequence of ints, got {shape!r} ({bad[0]!r} is not)")
    dims = [d.__index__() for d in dims]
    if any(d < 0 for d in dims):
        raise ShapeError(f"{component}: shape must have non-negative dimensions, got {tuple(dims)}")
    return tuple(dims)


def _split_name(name: Any, component: str) -> list[str]:
    if not isinstance(name, str):
        raise ArgumentTypeError(f"{component}: a variable name must be a str, got {type(name).__name__} ({name!r})")
    parts = name.split("/")
    if not name or any(not p for p in parts) or "." in name:
        raise VariableNameError(
            f"{component}: variable name {name!r} is not a valid name: expected non-empty parts separated by '/' "
            "(TF's scopes), without '.' (a torch parameter name can't contain \".\")"
        )
    return parts


def _taken(module: nn.Module, attr: str) -> bool:
    """Whether ``attr`` is already a parameter, buffer, submodule or attribute of ``module`` (properties not run)."""
    aliases = module.__dict__.get("_variable_aliases") or {}
    return (
        attr in module._parameters
        or attr in module._buffers
        or attr in module._modules
        or attr in module.__dict__
        or attr in aliases
        or hasattr(type(module), attr)
    )


def create_variable(
    cell: nn.Module,
    name: str,
    shape: Any,
    dtype: Any,
    initializer: Any,
    trainable: bool,
    factory: dict[str, Any],
    component: str,
) -> nn.Parameter:
    """Create the variable ``name`` (``a/b/c``: ``c`` inside sub-scopes ``a`` then ``b``) on ``cell``.

    ``factory``: the cell's ``{"dtype", "device"}`` defaults. Refuses a taken name (``VariableNameError``, a
    ``KeyError`` as torch's ``register_parameter`` raises), a bad shape (``ArgumentTypeError``, ``ShapeError``),
    a non-floating dtype (``DtypeError``) and a bad initializer.
    """
    if "_parameters" not in cell.__dict__:
        raise AttributeError(f"{component}: cannot create variables before Module.__init__() call")
    parts = _split_name(name, component)
    component = f"{component} variable {name!r}"
    shape = _check_shape(shape, component)
    if dtype is None:
        dtype = factory.get("dtype") or torch.get_default_dtype()
    dtype = as_torch_dtype(dtype)
    if not dtype.is_floating_point:
        raise DtypeError(f"{component}: rnnkit cells hold floating-point variables; got dtype {dtype}")
    owner = cell
    for depth, part in enumerate(parts[:-1]):
        scope = owner._modules.get(part)
        if scope is None:
            if _taken(owner, part):
                raise VariableNameError(f"{component}: {'/'.join(parts[: depth + 1])!r} is taken by an attribute")
            scope = VariableScope()
            owner.add_module(part, scope)
        elif not isinstance(scope, VariableScope):
            raise VariableNameError(
                f"{component}: {'/'.join(parts[: depth + 1])!r} is a {type(scope).__name__} submodule, not a scope"
            )
        owner = scope
    if _taken(owner, parts[-1]):
        raise VariableNameError(f"{component}: attribute or variable {name!r} already exists on this cell")
    value = initial_value(initializer, shape, dtype, factory.get("device"), component)
    param = nn.Parameter(value, requires_grad=bool(trainable))
    owner.register_parameter(parts[-1], param)
    cell.__dict__.setdefault("_tf_variables", []).append(name)
    return param


def forget_variables(cell: nn.Module, keep: int) -> None:
    """Undo ``create_variable`` back to the first ``keep`` variables (a build that raised leaves the cell as it
    found it, so that building again can succeed): the parameters, the scopes left empty, the aliases to them."""
    names = cell.__dict__.get("_tf_variables", [])
    for name in reversed(names[keep:]):
        *scopes, leaf = name.split("/")
        owners = [cell]
        for scope in scopes:
            owners.append(owners[-1]._modules[scope])
        del owners[-1]._parameters[leaf]
        for parent, scope, owner in reversed(list(zip(owners, scopes, owners[1:], strict=False))):
            if not owner._parameters and not owner._modules:
                del parent._modules[scope]
    del names[keep:]
    aliases = cell.__dict__.get("_variable_aliases") or {}
    for alias in [a for a, name in aliases.items() if name not in names]:
        del aliases[alias]


def variable(cell: nn.Module, name: str) -> Any:
    """The variable TF-named ``name`` on ``cell``: what its scope's ``_parameters`` holds now (a plain tensor while
    ``torch.func.functional_call`` swaps one in, which ``get_parameter`` would refuse)."""
    *scopes, leaf = name.split("/")
    owner = cell
    for scope in scopes:
        owner = owner._modules[scope]
    return owner._parameters[leaf]


def variable_path(cell: nn.Module, value: Any) -> str | None:
    """The TF name of the variable ``value`` if ``create_variable`` made it on ``cell`` (else ``None``)."""
    for name in cell.__dict__.get("_tf_variables", ()):
        if variable(cell, name) is value:
            return name
    return None
