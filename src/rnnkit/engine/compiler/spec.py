"""A compiled user cell as a leaf of the engine: ``ProgramSpec`` and the per-configuration cache of captures.

``lowering_for`` falls back to ``compiled_spec(cell)`` for a leaf cell that no table entry lowers (a user's cell,
or one of rnnkit's with options no kernel family computes). The capture runs once per cell and configuration
(dtype, device, input depth, training mode, the cell's plain attributes); what it gives is kept on the cell. A
capture that fails says why (``Unsupported``), and the cell runs on the reference loop: ``why_not(cell)``.

On the fused path the leaf runs its program: ``prepare`` in torch (weights, the hoisted input multiplies), then the
time loop natively (generated step code inside the engine's loop) or, with the pure-PyTorch kernels, the
program's interpreter.

Example::

    >>> import torch, rnnkit
    >>> from rnnkit.engine.compiler.spec import compiled_spec
    >>> class Elman(rnnkit.RNNCell):
    ...     state_size = output_size = 4
    ...     def build(self, inputs_shape):
    ...         self.kernel = self.add_variable("kernel", [inputs_shape[-1] + 4, 4])
    ...     def call(self, inputs, state):
    ...         h = torch.relu(torch.cat([inputs, state], 1) @ self.kernel)
    ...         return h, h
    >>> cell = Elman(input_size=3)
    >>> spec = compiled_spec(cell)
    >>> spec.program.info["hoisted_multiplies"], spec.program.info["recurrent_multiplies"]
    (1, 1)
"""

from __future__ import annotations

import copy
import weakref
from typing import Any

import torch
from torch import Tensor

from ..._structure import flatten, pack_as
from .._leaf_specs import Spec
from ..precision import COMPUTE_DTYPE, LOW_PRECISION, all_widened, narrowed, widened
from . import build, interpret
from .capture import capture
from .draws import packed
from .program import StepProgram, Unsupported
from .trace import _entries as trace_entries
from .trace import tensors_of

__all__ = ["ProgramSpec", "compiled_spec", "why_not", "program_for", "native_runs"]

# cell -> {configuration: StepProgram | Unsupported}
_PROGRAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _configuration(cell: Any) -> tuple:
    """What the traced graph may depend on besides tensor values: placement, depth, mode, plain attributes."""
    params = [p for p in cell.parameters()]
    dtype = params[0].dtype if params else cell._factory["dtype"] or torch.get_default_dtype()
    device = params[0].device.type if params else "cpu"
    plain = tuple(
        (name, value)
        for module in cell.modules()
        for name, value in sorted(vars(module).items())
        if not name.startswith("_") and isinstance(value, (bool, int, float, str, type(None)))
    )
    return dtype, device, cell.input_depth, cell.training, plain


def program_for(cell: Any, batch: int | None = None) -> StepProgram | Unsupported:
    """The cell's captured step for its present configuration (captured on first use, then cached).

    ``batch``: the rows of the sequence about to run (after ``begin_sequence(batch)``): the cell's 2-D tensors of
    that many rows are per-sequence (``seq`` slots).
    """
    return _entry(cell, batch)[0]


def _entry(cell: Any, batch: int | None) -> tuple[StepProgram | Unsupported, Any]:
    key = _configuration(cell)
    known = _PROGRAMS.setdefault(cell, {})
    if key not in known:
        dtype, device, depth = key[0], key[1], key[2]
        if dtype in LOW_PRECISION:  # computed in float32 (``engine.precision``): the step of a float32 copy
            program = capture(_float32_copy(cell), depth, COMPUTE_DTYPE, torch.device(device), batch)
        else:
            program = capture(cell, depth, dtype, torch.device(device), batch)
        # (what is kept must not hold the cell: it is the key of a weak dictionary)
        known[key] = program, (_reader(cell, program.tensor_names) if isinstance(program, StepProgram) else None)
    return known[key]


def why_not(cell: Any) -> Unsupported | None:
    """Why ``cell`` cannot run compiled (``None``: it can, or it was never asked)."""
    entry = _PROGRAMS.get(cell, {}).get(_configuration(cell)) if cell in _PROGRAMS else None
    return entry[0] if entry is not None and isinstance(entry[0], Unsupported) else None


def compiled_spec(cell: Any, batch: int | None = None) -> ProgramSpec | None:
    """A leaf running ``cell``'s captured program, or ``None`` when the capture could not compile it."""
    program, read = _entry(cell, batch)
    return ProgramSpec(cell, program, read) if read is not None else None


class ProgramSpec(Spec):
    """A leaf that runs a ``StepProgram``: the cell's state leaves (flattened, TF's order) are the kernels' state."""

    def __init__(self, cell: Any, program: StepProgram, read: Any = None):
        self.cell = cell
        self.program = program
        self._read = read or _reader(cell, program.tensor_names)  # cell -> its tensors, in the program's order
        self.recurrent_mask = None  # (the engine's per-leaf hook; a program's masks are its ``seq`` slots)

    # -- state ----------------------------------------------------------------------------------------------------
    def to_internal(self, state: Any) -> tuple[Tensor, ...]:
        return tuple(flatten(state))

    def from_internal(self, *internal: Tensor) -> Any:
        return pack_as(self.cell.state_size, list(internal)) if _is_nested(self.cell.state_size) else internal[0]

    def zero_internal(self, batch: int, like: Tensor) -> tuple[Tensor, ...]:
        return tuple(like.new_zeros(batch, w) for w in self.program.state_widths)

    def recurrent_rows(self, sort: Any) -> tuple[list[Tensor], Any]:
        """The program's per-sequence tensors (``seq`` slots), rows in the kernels' order, and ``sort`` itself (the
        step's random draws are put in that order)."""
        names = self.program.seq_names
        return ([sort(t) for t in tensors_of(self.cell, names)] if names else []), sort

    def draws_random(self) -> bool:
        """Whether the step draws random numbers (they are drawn before the loop, in the reference loop's order)."""
        return bool(self.program.draws)

    # -- running ---------------------------------------------------------------------------------------------------
    def run_fused(
        self, kern: Any, bs: Tensor, x: Tensor, internal: tuple, masks: Any, recurrent: Any
    ) -> tuple[Tensor, tuple]:
        program = self.program
        seqs, sort = recurrent
        dtype = x.dtype
        tensors = self._read(self.cell)
        if dtype in LOW_PRECISION:  # float32 inside, the caller's dtype outside (``engine.precision``)
            x, internal, tensors, seqs = widened(x), all_widened(internal), all_widened(tensors), all_widened(seqs)
        if program.draws:  # the reference loop's draws, step by step, as columns after the inputs
            x = torch.cat([x, packed(list(program.draws), bs, internal[0].shape[0], sort, x)], 1)
        step_inputs, weights, row_params = program.prepare(tensors, x)
        run = _native_runner() if native_runs(kern) else interpret.run_program
        y, finals = run(program, step_inputs, bs, list(internal), weights, row_params, seqs)
        return narrowed(y, dtype), tuple(narrowed(f, dtype) for f in finals)


def _float32_copy(cell: Any) -> Any:
    """A copy of ``cell`` whose bf16/fp16 tensors (parameters, buffers, plain tensor attributes such as a mask drawn
    per sequence) are float32: what a low-precision cell's step is captured from (the program reads the tensors by
    name, so it runs on the cell's own tensors, widened, afterwards)."""
    twin = copy.deepcopy(cell)
    twin._apply(widened)
    for _, t, holder, key in trace_entries(twin):
        if holder is not None and t.dtype in LOW_PRECISION:
            holder[key] = t.float()
    return twin


def _is_nested(size: Any) -> bool:
    return isinstance(size, (tuple, list))


def _reader(cell: Any, names: tuple[str, ...]) -> Any:
    """A function ``cell -> tensors`` reading the cell's tensors ``names`` at each call: by their paths (attributes,
    dict keys) when each path leads to the tensor ``tensors_of`` finds (checked once, here), else by ``tensors_of``."""
    found = tensors_of(cell, names)
    paths = [name.split(".") for name in names]
    if not all(_follow(cell, path) is t for path, t in zip(paths, found, strict=True)):
        return lambda c: tensors_of(c, names)
    return lambda c: [_follow(c, path) for path in paths]


def _follow(obj: Any, path: list[str]) -> Any:
    for part in path:
        if isinstance(obj, dict):
            obj = obj.get(part, obj.get(int(part)) if part.isdigit() else None)
        else:
            obj = getattr(obj, part, None)
    return obj


def native_runs(kern: Any) -> bool:
    """Whether a program runs natively with the fused kernels ``kern``: the compiled extension (not its twin) and a C
    compiler for the generated step code; else its interpreter runs it (plain torch, the same results)."""
    return getattr(kern, "__name__", "") != "rnnkit.engine.twin" and build.compiler_available()


def _native_runner() -> Any:
    from . import native  # the generated code's runner (loads the compiler on first use)

    return native.run_program_native
