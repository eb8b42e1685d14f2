"""The `RNNCell` contract: TF1's ``(output, next_state) = cell(input, state)`` as a torch module."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from .._structure import (
    autocast_operands,
    check_float_dtype,
    check_placement,
    check_state,
    named_leaves,
    zero_state_for,
)
from ..errors import ArgumentTypeError, NotATensorError, NotBuiltError, ShapeError
from .protocol import TFCellProtocol
from .registry import register_cell
from .shape import TensorShape, depth_and_batch
from .variables import forget_variables, glorot_uniform_

__all__ = [
    "ACTIVATIONS",
    "LayerRNNCell",
    "RNNCell",
    "Dense",
    "ParamFormula",
    "SingleStateCell",
    "get_activation",
    "glorot_uniform_",
    "check_units",
    "dropout_mask",
    "register_frame_runner",
    "edit_counts",
]

# One parameter described by formulas: (name, one expression per dimension, the expressions' variables, gate blocks).
ParamFormula = tuple[str, tuple[str, ...], dict[str, int], str]

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "elu": nn.functional.elu,
    "linear": lambda x: x,
}


# How a built cell runs one step when called outside autograd (``cell(inputs, state)``): ``runner(cell, inputs, state)``
# returns ``(output, next_state)`` for arguments it has checked as ``forward`` would (the state's structure, shapes,
# dtypes and devices), or ``None`` (anything else: its predicate says no, or an argument is off, which ``forward``'s
# own checks then report), and the step is ``call``'s. The engine registers its frame
# (``rnnkit.engine.frame.cell_frame``) on import: the cells do not import the engine.
_FRAME_RUNNER: list[Callable[[Any, torch.Tensor, Any], Any]] = []


def register_frame_runner(runner: Callable[[Any, torch.Tensor, Any], Any]) -> None:
    """Make ``runner`` the way a checked cell call may run (``rnnkit.engine`` registers its frame)."""
    _FRAME_RUNNER[:] = [runner]


def edit_counts(module: nn.Module) -> tuple[int, ...]:
    """How many attribute sets each cell among ``module``'s modules has seen (0 for a module that is not a cell), then
    the identities of their parameters: a cache of what follows from a cell's configuration compares these instead
    of reading every attribute again. (One walk of the module tree, cheaper than ``modules()`` and ``parameters()``:
    this runs at every frame of a streamed cell.)"""
    counts: list[int] = []
    ids: list[int] = []
    todo = [module]
    while todo:
        m = todo.pop()
        counts.append(m.__dict__.get("_edits", 0))
        ids.extend(map(id, m._parameters.values()))
        todo.extend(m._modules.values())
    return (*counts, -1, *ids)


def get_activation(activation: Any, default: Callable = torch.tanh) -> Callable:
    """``None`` -> ``default``; a name from ``tanh, sigmoid, relu, elu, linear``; or a callable."""
    if activation is None:
        return default
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)} or a callable, got {activation!r}")
        return ACTIVATIONS[activation]
    if not callable(activation):
        raise TypeError(f"activation: expected a callable or a name, got {type(activation).__name__}")
    return activation


def dropout_mask(
    shape: tuple[int, ...], keep: float, like: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """An inverted-dropout mask of ``shape``: 0 with probability ``1 - keep``, else ``1 / keep``.

    The one draw of every variational (per-sequence) mask, in the cells and in the engine alike, so that the
    fused paths consume the random stream exactly as the reference loop does. ``generator``: a seeded stream
    of the mask's own (``DropoutWrapper(seed=)``) instead of torch's global one.
    """
    probs = torch.full(shape, keep, dtype=like.dtype, device=like.device)
    return torch.bernoulli(probs, generator=generator) / keep


def check_units(value: Any, name: str, component: str) -> int:
    """``value`` if it is a positive ``int``: ``ArgumentTypeError`` for another type (``bool`` included, a
    ``TypeError`` as torch.nn raises for ``hidden_size=2.0``), ``ValueError`` for ``value <= 0``."""
    # The messages keep torch.nn's words ("should be of type int", "must be greater than zero"), which code and
    # tests written against torch.nn match.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(
            f"{component}: {name} should be of type int, got: {type(value).__name__} ({value!r}); "
            "expected a positive int"
        )
    if value <= 0:
        raise ValueError(f"{component}: {name} must be greater than zero (a positive int), got {value!r}")
    return value


@register_cell(kind="base")
class RNNCell(TFCellProtocol):
    """Base class of every rnnkit cell: the math of one time step.

    Contract (TF1's ``tf.nn.rnn_cell.RNNCell``):

    * ``output, new_state = cell(inputs, state)`` with ``inputs`` ``(batch, input_depth)`` and
      ``state`` a structure matching ``state_size``; ``cell.call(inputs, state)`` does the same
      without the argument checks.
    * ``state_size`` (an int or nested tuple/namedtuple of ints), ``output_size`` (an int).
    * ``zero_state(batch_size, dtype)``: zeros in the structure of ``state_size``.
    * Parameters are created lazily on the first call from the inputs' shape (TF's ``build(inputs_shape)``), or
      eagerly by ``build(input_depth)`` or ``input_size=``; ``input_depth`` records the depth built for.

    A user's cell follows TF1's protocol: it implements ``state_size``, ``output_size``, ``build(self,
    inputs_shape)`` (a ``TensorShape`` of ``(batch, input_depth)``; ``inputs_shape[-1]``, ``inputs_shape[1].value``
    and ``int(...)`` all give the depth) creating its variables with ``self.add_variable(name, shape,
    initializer=...)`` or ``add_weight``, and ``call(self, inputs, state)`` in torch ops; ``self.built = True`` is
    accepted and not needed. Or it is torch-style: parameters made in ``__init__`` (``nn.Linear``,
    ``nn.Parameter``), no ``build``. rnnkit's own cells implement ``_build(input_depth)`` instead of ``build`` and
    begin ``call`` with ``self._build_for(inputs)``. For ``rnnkit.describe`` (``rnnkit explain``) a cell may set
    ``family`` and implement ``parameter_formulas``. ``name``, ``trainable`` and ``_reuse`` are TF1's
    arguments: ``name`` is kept (``_tf_name``), ``trainable=False`` makes ``add_variable``'s default
    ``trainable=False``, ``_reuse`` is ignored (a torch module is shared by sharing the object).
    """

    #: The gate family of the step ("rnn", "lstm" or "gru"; None for none): ``rnnkit.describe`` adds its notes.
    family: ClassVar[str | None] = None

    def __init__(
        self,
        *,
        input_size: int | None = None,
        dtype: torch.dtype | None = None,
        device: Any = None,
        name: str | None = None,
        trainable: bool = True,
        _reuse: Any = None,
    ):
        super().__init__()
        before = self.__dict__.get("_factory") or {}  # a `self.dtype = ...` before this call
        self._factory = {"dtype": dtype or before.get("dtype"), "device": device}
        self._tf_name = name
        self._trainable = bool(trainable)
        self.input_depth: int | None = None
        if input_size is not None:
            if self.__dict__.get("_constructing") and hasattr(type(self).build, "_tf_build"):
                self.__dict__["_pending_input_size"] = input_size  # built once the user's __init__ returns
            else:
                self.build(input_size)

    # -- the contract (state_size and output_size: see TFCellProtocol) ---------------------------
    def call(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def _build(self, input_depth: int) -> None:
        """Create the parameters for inputs of depth ``input_depth`` (rnnkit's cells; users write ``build``)."""

    def parameter_formulas(self, input_depth: int) -> list[ParamFormula]:
        """Each parameter ``_build(input_depth)`` creates, as ``(name, formulas, variables, gate blocks)``.

        E.g. ``("kernel", ("input_depth + num_units", "num_units"), {"input_depth": 100, "num_units": 128},
        "rows x then h")``: one expression per dimension in the variables given. ``rnnkit.describe`` checks them
        against the built parameters; a cell that gives none has its parameters listed with no formula.
        """
        return []

    # -- shared machinery ----------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        # Every attribute set counts (options, mode, parameters, submodules): what is computed from a cell's
        # configuration (the engine's frame plans) compares the counts (`edit_counts`) instead of the attributes.
        self.__dict__["_edits"] = self.__dict__.get("_edits", 0) + 1
        super().__setattr__(name, value)

    @property
    def _name(self) -> str:
        return type(self).__name__

    def build(self, inputs_shape: int | TensorShape | tuple[int | None, ...]) -> None:
        """Create the parameters eagerly: for inputs of depth ``inputs_shape`` (an int), or of shape
        ``inputs_shape`` (``(batch, input_depth)``; TF's ``build``). A built cell only checks the depth."""
        depth, batch = depth_and_batch(inputs_shape, self._name)
        if self.__dict__.get("_building"):  # a user build's `super().build(inputs_shape)`: the parent's variables
            self._build(depth)
        else:
            self._build_as(depth, batch)

    build._rnnkit_build = True  # type: ignore[attr-defined]  # rnnkit's own, not a user's build to adapt

    def _build_as(self, input_depth: int, batch: int | None = None) -> None:
        """The one build: check the depth, run the cell's build once (a user's ``build`` gets the shape ``(batch,
        input_depth)``; rnnkit's ``_build`` the depth), then record ``input_depth``."""
        input_depth = check_units(input_depth, "input_depth", self._name)
        if self.built:
            if input_depth != self.input_depth:
                raise ShapeError(
                    f"{self._name}: built for input depth {self.input_depth}, got inputs of depth {input_depth}"
                )
            return
        user_build = getattr(type(self).build, "_tf_build", None)  # set by protocol.adapt_build
        if user_build is None:
            self._build(input_depth)
        else:
            self.__dict__["_building"] = True
            made = len(self.__dict__.get("_tf_variables", ()))
            try:
                user_build(self, TensorShape([batch, input_depth]))
            except BaseException:
                forget_variables(self, made)  # a build that raised leaves no half of its variables behind
                raise
            finally:
                self.__dict__["_building"] = False
        self.input_depth = int(input_depth)

    def _build_child(self, child: RNNCell, input_depth: int) -> None:
        """Build a sub-cell with this cell's dtype and device where the child was given none."""
        child._factory = {key: child._factory[key] or self._factory[key] for key in self._factory}
        child.build(input_depth)

    def _build_for(self, inputs: torch.Tensor) -> None:
        if self.input_depth is None:
            self._factory = {
                "dtype": self._factory["dtype"] or inputs.dtype,
                "device": self._factory["device"] or inputs.device,
            }
            # inputs: a step (batch, depth), or the runners' time-major (time, batch, depth)
            self._build_as(inputs.shape[-1], inputs.shape[-2] if inputs.dim() >= 2 else None)

    def _new_parameter(
        self, *shape: int, init: Callable[[torch.Tensor], Any] | float = glorot_uniform_
    ) -> nn.Parameter:
        """A parameter of TF's ``shape``, initialised by ``init`` (a function or a constant)."""
        data = torch.empty(*shape, **self._factory)
        if callable(init):
            init(data)
        else:
            data.fill_(init)
        return nn.Parameter(data)

    def _check_inputs(self, inputs: Any) -> None:
        if not isinstance(inputs, torch.Tensor):
            raise NotATensorError(f"{self._name}: expected inputs to be a torch.Tensor, got {type(inputs).__name__}")
        check_float_dtype(inputs.dtype, f"{self._name} inputs")
        if inputs.dim() != 2:
            raise ShapeError(
                f"{self._name}: expected inputs of rank 2 (batch, input_depth), got shape {tuple(inputs.shape)}"
            )
        if self.built and inputs.shape[-1] != self.input_depth:
            raise ShapeError(
                f"{self._name}: built for input depth {self.input_depth}, got inputs of shape {tuple(inputs.shape)}"
            )

    def forward(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """Check ``inputs`` and ``state``, build if needed, and run one step: ``call``, or in inference the engine's
        frame of the same math (``rnnkit.engine.frame``: one kernel call for a lowered cell or stack)."""
        self._check_inputs(inputs)
        if _FRAME_RUNNER and self.built:  # the runner takes only arguments it has checked itself, else None
            framed = _FRAME_RUNNER[0](self, inputs, state)
            if framed is not None:
                return framed
        state = check_state(state, self.state_size, inputs.shape[0], self._name)
        self._build_for(inputs)
        check_placement(self._name, self, [("inputs", inputs), *named_leaves(state, "state")])
        return self.call(*autocast_operands(self, inputs, state))  # (a bf16/fp16 input under autocast: float32)

    def __getattr__(self, name: str) -> Any:
        # nn.Module.__getattr__ finds parameters and submodules; before the lazy build there are none, so say why
        # (still an AttributeError: hasattr() and getattr(cell, name, default) keep their meaning).
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or self.__dict__.get("input_depth", 0) is not None:
                raise
        raise NotBuiltError(
            f"'{type(self).__name__}' object has no attribute '{name}': the cell is not built yet. rnnkit's cells "
            "create their parameters lazily on their first call, from the depth of the inputs (TF's build); to "
            f"build it now, pass input_size= to the constructor ({type(self).__name__}(..., input_size=depth)) "
            "or call cell.build(depth)",
            name=name,
            obj=self,
        )

    def zero_state(self, batch_size: int, dtype: torch.dtype | None = None, device: Any = None) -> Any:
        """Zeros ``(batch_size, size)`` in the structure of ``state_size``, on the cell's device."""
        if device is None:
            params = list(self.parameters())
            device = params[0].device if params else self._factory["device"]
        return zero_state_for(self.state_size, batch_size, dtype or self._factory["dtype"], device)

    def count_params(self) -> int:
        """The number of scalars in the cell's parameters (TF's ``count_params``)."""
        params = list(self.parameters())
        if not self.built and not params:  # (a torch-style cell has its parameters before any build)
            raise ValueError(
                f"{self._name}: not built yet, so it has no parameters to count; call it on inputs, "
                "or pass input_size= / call build(input_depth) first"
            )
        return sum(p.numel() for p in params)

    def begin_sequence(self, batch_size: int) -> None:
        """Called by the runners before each unroll; cells with per-sequence randomness resample here."""
        for child in self.children():
            if isinstance(child, RNNCell):
                child.begin_sequence(batch_size)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        own = {*self._parameters, *self._buffers}  # a torch-style cell's, made before any build, load as torch's do
        if not self.built and any(
            k.startswith(prefix) and k[len(prefix) :] not in own
            for k in state_dict
            if not self._owned_by_child(k, prefix)
        ):
            raise ValueError(
                f"{self._name}: cannot load parameters into a cell that is not built yet; pass input_size= "
                "to the constructor or call build(input_depth) first"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _owned_by_child(self, key: str, prefix: str) -> bool:
        rest = key[len(prefix) :]
        return "." in rest and rest.split(".", 1)[0] in dict(self.named_children())

    def extra_repr(self) -> str:
        sizes = f"state_size={self.state_size}, output_size={self.output_size}"
        return sizes + (f", input_depth={self.input_depth}" if self.built else ", unbuilt")


@register_cell(kind="base", namespaces=("contrib.rnn",))
class LayerRNNCell(RNNCell):
    """TF1's ``LayerRNNCell`` (``tf.contrib.rnn.LayerRNNCell``): the base TF1's own cells and many users' derive
    from, a cell that is a layer, building its variables in ``build(inputs_shape)`` with ``add_variable``.

    rnnkit's ``RNNCell`` already is all of that (see ``rnnkit.cells.protocol``), so this adds nothing: it is the
    name that TF1 code subclasses.
    """


class SingleStateCell(RNNCell):
    """Base of the TF cells whose state and output are one ``(batch, num_units)`` tensor, the new ``h``
    (``BasicRNNCell``, ``GRUCell``): ``num_units`` and an ``activation`` (a name, a callable, or ``None`` for tanh)."""

    def __init__(self, num_units: int, activation: Any = None, **kwargs: Any):
        self.num_units = check_units(num_units, "num_units", type(self).__name__)
        self.activation = get_activation(activation)
        super().__init__(**kwargs)

    # Both are num_units: the state is the output.
    state_size = output_size = property(operator.attrgetter("num_units"))


class Dense(nn.Module):
    """A TF variable scope holding ``kernel`` ``(in, out)`` and optionally ``bias`` ``(out,)``.

    Gives GRU's ``gates.kernel`` / ``candidate.kernel`` and LSTMCell's ``projection.kernel`` their
    TF names; it computes ``x @ kernel + bias`` and nothing else.
    """

    def __init__(self, kernel: nn.Parameter, bias: nn.Parameter | None = None):
        super().__init__()
        self.kernel = kernel
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.kernel if self.bias is None else torch.addmm(self.bias, x, self.kernel)
