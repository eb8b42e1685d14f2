"""TF1's custom-cell protocol on rnnkit's ``RNNCell``: ``build(inputs_shape)``, ``add_variable``/``add_weight``,
``self.built = True``, ``self.dtype``.

``RNNCell`` takes these from ``TFCellProtocol``; a user's cell gets them by subclassing ``rnnkit.RNNCell`` (or
``rnnkit.LayerRNNCell``, ``tf.nn.rnn_cell.RNNCell``, ``tf.contrib.rnn.LayerRNNCell`` after ``import rnnkit as
tf``). What rnnkit does with each:

* ``build(self, inputs_shape)``, when a subclass defines it, runs once, with a ``TensorShape`` of the inputs
  ``(batch, input_depth)`` (``batch`` is ``None`` for ``input_size=`` and ``cell.build(depth)``); rnnkit then
  records ``input_depth``, whether or not the build set ``self.built = True``. For ``input_size=`` it runs when
  the cell's ``__init__`` returns, so ``super().__init__(input_size=...)`` may come first, as in TF code.
* ``state_size`` and ``output_size``: properties (TF), or attributes set in ``__init__`` (torch style).
* ``add_variable(name, shape, ...)`` / ``add_weight``: an ``nn.Parameter`` under TF's name (``"gates/kernel"`` is
  ``gates.kernel``); see ``rnnkit.cells.variables`` for the initializer rule.
* ``self._kernel = self.add_variable("kernel", ...)``, as TF code keeps its variables, makes ``_kernel`` an alias
  of the parameter ``kernel``: the state dict holds ``kernel`` once, and ``cell._kernel`` is ``cell.kernel``.

Example::

    >>> class MinimalRNN(rnnkit.RNNCell):
    ...     def __init__(self, num_units):
    ...         super().__init__()
    ...         self._num_units = num_units
    ...     state_size = output_size = property(lambda self: self._num_units)
    ...     def build(self, inputs_shape):
    ...         depth = inputs_shape[1].value
    ...         self._kernel = self.add_variable("kernel", [depth + self._num_units, self._num_units])
    ...         self._bias = self.add_variable("bias", [self._num_units], initializer=0.0)
    ...         self.built = True
    ...     def call(self, inputs, state):
    ...         h = torch.tanh(torch.cat([inputs, state], 1) @ self._kernel + self._bias)
    ...         return h, h
    >>> cell = MinimalRNN(4)
    >>> outputs, state = rnnkit.dynamic_rnn(cell, torch.randn(2, 5, 3))
    >>> cell.input_depth, list(cell.state_dict()), cell._kernel is cell.kernel
    (3, ['kernel', 'bias'], True)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._structure import as_torch_dtype
from ..errors import ArgumentTypeError
from .shape import TensorShape, depth_and_batch
from .variables import create_variable, variable, variable_path

__all__ = ["TFCellProtocol", "adapt_build"]

# TF's and Keras's variable options that change nothing for a torch parameter.
_IGNORED_TF_OPTIONS = {
    "partitioner",
    "use_resource",
    "caching_device",
    "synchronization",
    "aggregation",
    "getter",
    "autocast",
    "experimental_autocast",
}


def adapt_build(build: Callable[..., Any]) -> Callable[..., Any]:
    """A user cell's ``build(self, inputs_shape)`` as rnnkit calls it: ``cell.build(depth)``, ``cell.build(shape)``,
    ``input_size=`` and the lazy build all go through the cell's ``_build_as`` (which runs it once with a
    ``TensorShape`` and records the depth); a ``super().build(...)`` from inside a build runs the parent's build."""

    @functools.wraps(build)
    def adapted(self: Any, inputs_shape: Any) -> None:
        depth, batch = depth_and_batch(inputs_shape, self._name)
        if self.__dict__.get("_building"):
            build(self, TensorShape([batch, depth]))
        else:
            self._build_as(depth, batch)

    adapted._tf_build = build  # type: ignore[attr-defined]
    return adapted


def _build_after_init(init: Callable[..., Any]) -> Callable[..., Any]:
    """A cell class's ``__init__`` that builds for ``input_size=`` once the outermost ``__init__`` has returned:
    TF code calls ``super().__init__(...)`` first and sets what its ``build`` reads after (``RNNCell.__init__``
    leaves the depth in ``_pending_input_size`` for a user's build)."""

    @functools.wraps(init)
    def init_then_build(self: Any, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_constructing"] = self.__dict__.get("_constructing", 0) + 1
        try:
            init(self, *args, **kwargs)
        finally:
            self.__dict__["_constructing"] -= 1
        if not self.__dict__["_constructing"]:
            del self.__dict__["_constructing"]
            pending = self.__dict__.pop("_pending_input_size", None)
            if pending is not None:
                self.build(pending)

    init_then_build._builds_after = True  # type: ignore[attr-defined]
    return init_then_build


class TFCellProtocol(nn.Module):
    """The TF1 protocol's half of ``RNNCell`` (see the module's docstring); the other half is ``RNNCell.build``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("build")
        if own is not None and not hasattr(own, "_tf_build") and not getattr(own, "_rnnkit_build", False):
            cls.build = adapt_build(own)
        init = cls.__dict__.get("__init__")
        if init is not None and not hasattr(init, "_builds_after"):
            cls.__init__ = _build_after_init(init)

    # state_size and output_size: a subclass defines them as properties (TF) or sets them in __init__ (torch style).
    @property
    def state_size(self) -> Any:
        if "_state_size" not in self.__dict__:
            raise NotImplementedError(f"{self._name}: a cell must define state_size")
        return self.__dict__["_state_size"]

    @state_size.setter
    def state_size(self, value: Any) -> None:
        self.__dict__["_state_size"] = value

    @property
    def output_size(self) -> Any:
        if "_output_size" not in self.__dict__:
            raise NotImplementedError(f"{self._name}: a cell must define output_size")
        return self.__dict__["_output_size"]

    @output_size.setter
    def output_size(self, value: Any) -> None:
        self.__dict__["_output_size"] = value

    @property
    def built(self) -> bool:
        """Whether the cell is built: its build has run for an input depth (``input_depth``)."""
        return self.__dict__.get("input_depth") is not None

    @built.setter
    def built(self, value: bool) -> None:
        # TF's protocol ends build with `self.built = True`; rnnkit records the depth itself once build returns.
        if not isinstance(value, bool):
            raise ArgumentTypeError(f"{self._name}: built must be a bool, got {type(value).__name__} ({value!r})")
        if not value and self.built:
            raise ValueError(f"{self._name}: a built cell cannot be marked unbuilt (its parameters exist)")

    @property
    def dtype(self) -> torch.dtype | None:
        """The dtype of the cell's parameters (TF's ``Layer.dtype``), or the one it will build with, or ``None``."""
        param = next(self.parameters(), None)
        return param.dtype if param is not None else self.__dict__.get("_factory", {}).get("dtype")

    @dtype.setter
    def dtype(self, value: Any) -> None:
        factory = self.__dict__.setdefault("_factory", {"dtype": None, "device": None})
        factory["dtype"] = None if value is None else as_torch_dtype(value)

    def add_variable(
        self,
        name: str,
        shape: Any = None,
        dtype: Any = None,
        initializer: Any = None,
        regularizer: Any = None,
        trainable: bool | None = None,
        constraint: Any = None,
        **tf_options: Any,
    ) -> nn.Parameter:
        """TF's ``add_variable``: a new ``nn.Parameter`` of TF ``shape`` named ``name`` on this cell, returned.

        ``name`` ``"gates/kernel"`` is ``kernel`` in the sub-scope ``gates`` (state-dict key ``gates.kernel``).
        ``dtype``: the cell's (the inputs' on a lazy build) by default. ``initializer``: Glorot-uniform by default;
        a number, a name (``"zeros"``, ``"orthogonal"``, ...), a tensor, a TF/Keras ``init(shape, dtype=None)``
        or a torch in-place ``init_(tensor)`` (the rule: ``rnnkit.cells.variables``). ``trainable=False``:
        ``requires_grad=False`` (default: the cell's ``trainable=``). ``regularizer``/``constraint`` are refused
        (apply them in the loss, or after the optimizer's step); TF's ``partitioner``, ``use_resource``,
        ``caching_device``, ``synchronization``, ``aggregation``, ``getter`` and Keras's ``autocast`` are
        accepted and mean nothing here.
        """
        component = f"{self._name}.add_variable"
        if regularizer is not None or constraint is not None:
            raise ValueError(
                f"{component}: regularizer= and constraint= are not supported; add the penalty to the loss, or "
                "apply the constraint after the optimizer's step"
            )
        unknown = sorted(set(tf_options) - _IGNORED_TF_OPTIONS)
        if unknown:
            raise TypeError(f"{component}() got an unexpected keyword argument {unknown[0]!r}")
        trainable = self.__dict__.get("_trainable", True) if trainable is None else trainable
        factory = self.__dict__.get("_factory", {})
        return create_variable(self, name, shape, dtype, initializer, trainable, factory, component)

    def add_weight(self, *args: Any, **kwargs: Any) -> nn.Parameter:
        """Keras's spelling of ``add_variable``: ``add_weight(name, shape, dtype, initializer, ...)`` as TF1 and
        Keras 2 order it, or ``add_weight(shape, initializer, dtype, trainable, name=...)`` as Keras 3 does (a
        first positional argument that is not a str is the shape). Unnamed: ``variable``, ``variable_1``, ..."""
        if args and not isinstance(args[0], str):
            kwargs.update(zip(("shape", "initializer", "dtype", "trainable"), args, strict=False))
            args = ()
        if not args and kwargs.get("name") is None:
            taken = set(self.__dict__.get("_tf_variables", ()))
            names = ("variable" if k == 0 else f"variable_{k}" for k in range(len(taken) + 1))
            kwargs["name"] = next(n for n in names if n not in taken)
        return self.add_variable(*args, **kwargs)

    # -- aliases: `self._kernel = self.add_variable("kernel", ...)` ---------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        aliases = self.__dict__.get("_variable_aliases")
        if isinstance(value, nn.Parameter) and "_tf_variables" in self.__dict__:
            path = variable_path(self, value)
            if path is not None and path != name and name not in self._parameters:
                # TF code keeps each variable as an attribute: registering it again would give the state dict a
                # second key for one variable, so the attribute names the variable instead.
                self.__dict__.setdefault("_variable_aliases", {})[name] = path
                self.__dict__.pop(name, None)
                return
        if aliases is not None:
            aliases.pop(name, None)
        super().__setattr__(name, value)

    def __getattr__(self, name: str) -> Any:
        aliases = self.__dict__.get("_variable_aliases")
        if aliases is not None and name in aliases:
            return variable(self, aliases[name])
        return super().__getattr__(name)

    def __delattr__(self, name: str) -> None:
        aliases = self.__dict__.get("_variable_aliases")
        if aliases is not None and name in aliases:
            del aliases[name]
        else:
            super().__delattr__(name)
