"""Trace a cell's step: ``cell.call(inputs, state)`` as an aten graph (``capture`` then partitions it).

The step is traced with ``make_fx`` over fake tensors (no arithmetic runs) as a function of
``(cell tensors..., x, state leaves...)``: the cell's parameters, buffers and plain tensor attributes (a mask drawn per
sequence in ``begin_sequence`` and stored as ``self.mask``) are *inputs* of the graph, never baked constants. The batch
dimension (dim 0 of ``x``, of every state leaf and of per-sequence attributes) is one symbol; every other dimension is
static. Composite ops are decomposed (``DECOMPOSED``) into the ops the partition knows (``STAGE_OPS``).

What cannot be captured is *said*, as an ``Unsupported`` naming the construct: Python control flow on a tensor's value
(``if x.sum() > 0``, ``.item()``) or on the batch size, per-step random ops, writes into the state or the cell.

Example::

    >>> import torch, rnnkit
    >>> from rnnkit.engine.compiler.trace import trace
    >>> traced = trace(rnnkit.BasicRNNCell(8, input_size=4), 4, torch.float32, "cpu", None)
    >>> traced.tensor_names, traced.state_widths
    (('kernel', 'bias'), (8,))
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch._decomp import get_decompositions
from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException, FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx

from ..._structure import flatten, pack_as
from .draws import Draw, widen_for_draws
from .program import Unsupported

__all__ = ["trace", "cell_tensors", "tensors_of", "Traced", "DECOMPOSED"]

aten = torch.ops.aten

#: Composite ops rewritten into ``STAGE_OPS`` while tracing (linear's ``addmm``, layer norm, the smooth activations).
DECOMPOSED = (
    aten.addmm, aten.native_layer_norm, aten.silu, aten.hardswish, aten.mish, aten.gelu, aten.lerp, aten.addcmul,
    aten.addcdiv, aten.glu, aten._softmax, aten._log_softmax, aten.std, aten.relu6, aten.celu, aten.selu,
    aten.threshold, aten.hardshrink, aten.softshrink, aten._fused_rms_norm, aten.linalg_vector_norm,
)  # fmt: skip
_DECOMPOSITIONS = get_decompositions(list(DECOMPOSED))
_TORCH_DIR = os.path.dirname(torch.__file__)
_HERE = os.path.dirname(__file__)


_MODULE_DICTS = ("_parameters", "_buffers", "_modules")


def _entries(cell: nn.Module) -> list[tuple[str, Tensor, dict | None, Any]]:
    """``(name, tensor, holder, key)`` for each tensor of the cell, once: parameters and buffers (``holder`` None),
    then plain tensor attributes and tensors in dict attributes (``holder[key]``) of the cell and its submodules."""
    out: list[tuple[str, Tensor, dict | None, Any]] = []
    seen: set[int] = set()
    for name, t in [*cell.named_parameters(), *cell.named_buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            out.append((name, t, None, None))
    for prefix, module in cell.named_modules():
        for key, value in list(vars(module).items()):
            name = f"{prefix}.{key}" if prefix else key
            items = [(name, vars(module), key, value)]
            if isinstance(value, dict) and key not in _MODULE_DICTS:
                items = [(f"{name}.{k}", value, k, v) for k, v in value.items() if isinstance(k, (str, int))]
            for item_name, holder, k, v in items:
                if isinstance(v, Tensor) and not isinstance(v, nn.Parameter) and id(v) not in seen:
                    seen.add(id(v))
                    out.append((item_name, v, holder, k))
    return out


def cell_tensors(cell: nn.Module, batch: int | None = None) -> tuple[list[tuple[str, Tensor]], list[str]]:
    """The cell's tensors ``[(name, tensor)]``: parameters, buffers, then plain tensor attributes of the cell and its
    submodules and tensors in their dict attributes (each tensor once, under its first name); and the names among
    them that are per-sequence rows: plain 2-D tensors of ``batch`` rows (what ``begin_sequence(batch)`` drew), when
    ``batch`` is given."""
    entries = _entries(cell)
    seq = [n for n, t, holder, _ in entries if holder is not None and batch is not None and t.dim() == 2
           and t.shape[0] == batch]  # fmt: skip
    return [(n, t) for n, t, _, _ in entries], seq


class _Kept:
    """The cell's Python state (every module's attributes, and the contents of its dict and list attributes), put
    back after the trace: tracing runs ``call``, which may cache a (fake) tensor or count steps on the cell."""

    def __init__(self, cell: nn.Module):
        self.saved = [
            (vars(m), dict(vars(m)), {k: (v.copy()) for k, v in vars(m).items() if isinstance(v, (dict, list))})
            for m in cell.modules()
        ]

    def restore(self) -> None:
        for now, attrs, contents in self.saved:
            now.clear()
            now.update(attrs)
            for key, content in contents.items():
                holder = attrs[key]
                holder.clear()
                if isinstance(holder, dict):
                    holder.update(content)
                else:
                    holder.extend(content)


def tensors_of(cell: nn.Module, names: tuple[str, ...]) -> list[Tensor]:
    """The cell's current tensors named ``names`` (``StepProgram.tensor_names``), for ``prepare`` and the runners."""
    found = dict(cell_tensors(cell)[0])
    missing = [n for n in names if n not in found]
    if missing:
        raise KeyError(f"{type(cell).__name__}: the compiled step reads tensors the cell no longer has: {missing}")
    return [found[n] for n in names]


@dataclass
class Traced:
    """A captured step: ``gm(*tensors, x, *state_leaves) -> (output, *new_state_leaves)`` with fake ``meta["val"]``.

    ``batch``: the symbol of the batch rows; ``mode``: the fake mode the metadata lives in (rewrites compute new
    metadata in it); ``seq``: which tensors (by position) are per-sequence rows.
    """

    gm: torch.fx.GraphModule
    tensor_names: tuple[str, ...]
    seq: tuple[int, ...]
    state_widths: tuple[int, ...]
    output_width: int
    batch: Any
    mode: FakeTensorMode
    dtype: torch.dtype
    where: str
    draws: list[Draw]  # what the step draws at random, as columns after x's (``draws.widen_for_draws``)


class _Step(nn.Module):
    """``cell.call`` as a module's forward, so that ``functional_call`` can swap parameters and buffers for graph
    inputs (the plain tensors are swapped in their holders)."""

    def __init__(self, cell: nn.Module, plain: list[tuple[str, dict, Any]]):
        super().__init__()
        self.cell = cell
        self.plain = plain
        self.moved: list[str] = []
        self.swapped: dict[int, Tensor] = {}  # id(parameter or buffer) -> what the trace reads instead

    def forward(self, x: Tensor, leaves: list[Tensor], fakes: list[Tensor]) -> tuple[Tensor, ...]:
        for (_, holder, key), fake in zip(self.plain, fakes, strict=True):
            holder[key] = fake
        _swap_held(self.cell, self.swapped)
        out, new_state = self.cell.call(x, pack_as(self.cell.state_size, leaves))
        # a tensor stored on the cell inside call (self.last = h) would carry state across steps
        self.moved = [n for (n, holder, key), f in zip(self.plain, fakes, strict=True) if holder.get(key) is not f]
        known = {n for n, _, _ in self.plain}
        ours = {id(t) for t in self.swapped.values()}
        self.moved += [n for n, t, holder, _ in _entries(self.cell)
                       if holder is not None and n not in known and id(t) not in ours]  # fmt: skip
        return (out, *flatten(new_state))


def _swap_held(cell: nn.Module, swapped: dict[int, Tensor]) -> None:
    """Point the Python containers that hold the cell's parameters or buffers (``self._norms = {"i": (gamma,
    beta)}``, a list of kernels) at the trace's tensors too: ``functional_call`` swaps only the module's own
    registries. Each such attribute is rebuilt, never changed in place, so putting the attribute back restores it."""
    for module in cell.modules():
        for key, value in list(vars(module).items()):
            if key not in _MODULE_DICTS and isinstance(value, (dict, list, tuple)):
                new = _rebuilt(value, swapped, 4)
                if new is not value:
                    vars(module)[key] = new


def _rebuilt(value: Any, swapped: dict[int, Tensor], depth: int) -> Any:
    """``value`` with the tensors of ``swapped`` replaced, in new containers where something changed."""
    if isinstance(value, Tensor):
        return swapped.get(id(value), value)
    if depth == 0 or not isinstance(value, (dict, list, tuple)):
        return value
    if isinstance(value, dict):
        items = {k: _rebuilt(v, swapped, depth - 1) for k, v in value.items()}
        return value if all(items[k] is v for k, v in value.items()) else type(value)(items)
    items = [_rebuilt(v, swapped, depth - 1) for v in value]
    if all(a is b for a, b in zip(items, value, strict=True)):
        return value
    if isinstance(value, list):
        return items
    return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)


def _user_line(err: BaseException) -> str:
    """The innermost frame of the traceback outside torch and this package: where the user's code stopped."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if not f.filename.startswith((_TORCH_DIR, _HERE))]
    if not frames:
        return ""
    f = frames[-1]
    return f" (line {f.lineno} of {os.path.basename(f.filename)}: `{(f.line or '').strip()}`)"


def trace(
    cell: nn.Module, input_depth: int, dtype: torch.dtype, device: Any, batch: int | None
) -> Traced | Unsupported:
    """Trace ``cell.call`` over fake inputs ``(batch, input_depth)`` (``batch`` symbolic); see the module docstring."""
    where = f"{type(cell).__name__}.call"
    if not getattr(cell, "built", True):
        cell.build(input_depth)
    entries = _entries(cell)
    named, seq_names = cell_tensors(cell, batch)
    names = [n for n, _ in named]
    owned = [n for n, _, holder, _ in entries if holder is None]  # parameters and buffers
    plain = [(n, holder, key) for n, _, holder, key in entries if holder is not None]
    widths = tuple(int(w) for w in flatten(cell.state_size))
    # (symbolic_shapes imports sympy, a third of a second: only a compile needs it, not ``import rnnkit``)
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    mode = FakeTensorMode(shape_env=ShapeEnv(specialize_zero_one=False))
    rows = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC, DimDynamic.STATIC])
    x = mode.from_tensor(torch.empty(2, input_depth, dtype=dtype, device=device), symbolic_context=rows)
    b = x.shape[0]
    fakes = [None if n in seq_names else mode.from_tensor(t.detach(), symbolic_context=_static(t)) for n, t in named]
    with mode:  # (tensors of batch rows share x's symbol)
        fakes = [torch.empty(b, t.shape[1], dtype=t.dtype, device=t.device) if f is None else f
                 for f, (_, t) in zip(fakes, named, strict=True)]  # fmt: skip
        leaves = [torch.empty(b, w, dtype=dtype, device=device) for w in widths]
    step = _Step(cell, plain)
    nt, no = len(names), len(owned)

    originals = dict(named)

    def fn(*args: Tensor) -> tuple[Tensor, ...]:
        params = {f"cell.{n}": t for n, t in zip(owned, args[:no], strict=True)}
        step.swapped = {id(originals[n]): t for n, t in zip(owned, args[:no], strict=True)}
        return torch.func.functional_call(step, params, (args[nt], list(args[nt + 1 :]), list(args[no:nt])))

    inputs = [*fakes, x, *leaves]
    kept = _Kept(cell)
    try:  # (an analysis: what the tracer cannot follow is said, and the reference loop runs the cell)
        with mode:
            gm = make_fx(fn, tracing_mode="real", decomposition_table=_DECOMPOSITIONS)(*inputs)
    except _data_dependent() as err:
        return Unsupported(f"data-dependent control flow (a Python branch or number read from a tensor's value"
                           f"{_user_line(err)}); use torch.where", where)  # fmt: skip
    except Exception as err:  # (any failure of the tracer on this call is a reason not to compile it)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return Unsupported(f"the tracer cannot follow call ({type(err).__name__}: {first}){_user_line(err)}", where)
    finally:
        kept.restore()
    if step.moved:
        return Unsupported(f"call stores tensors on the cell: {step.moved} (state kept across steps)", where)
    bad = _check_ops(gm, functional=False) or _writes_input(gm, names)
    if not bad and any(_mutates(n) for n in gm.graph.nodes):  # in-place ops on the step's own values: functionalize
        with mode:
            gm = make_fx(torch.func.functionalize(gm, remove="mutations"), tracing_mode="real")(*inputs)
        bad = _check_ops(gm, functional=True)
    bad = bad or _check_shapes(mode, b.node.expr)
    found = [] if bad else widen_for_draws(gm, [n for n in gm.graph.nodes if n.op == "placeholder"][nt], mode)
    if bad or isinstance(found, str):
        return Unsupported(bad or found, where)
    seq = tuple(i for i, n in enumerate(names) if n in seq_names)
    return Traced(gm, tuple(names), seq, widths, int(cell.output_size), b.node.expr, mode, dtype, where, found)


def _static(t: Tensor) -> Any:
    from torch.fx.experimental.symbolic_shapes import DimDynamic, StatelessSymbolicContext

    return StatelessSymbolicContext(dynamic_sizes=[DimDynamic.STATIC] * t.dim())


def _data_dependent() -> tuple[type[Exception], ...]:
    """What the tracer raises at a Python branch or number read from a traced tensor's value."""
    from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

    return (GuardOnDataDependentSymNode, DataDependentOutputException, DynamicOutputShapeException)


def _mutates(node: torch.fx.Node) -> bool:
    target = node.target
    return node.op == "call_function" and isinstance(target, torch._ops.OpOverload) and target._schema.is_mutable


def _writes_input(gm: torch.fx.GraphModule, names: list[str]) -> str:
    """The first in-place op writing into a graph input (through views), said, or ``""``."""
    phs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node in gm.graph.nodes:
        if not _mutates(node) or not node.args or not isinstance(node.args[0], torch.fx.Node):
            continue
        base = node.args[0]
        while base.op == "call_function" and getattr(base.target, "is_view", False):
            base = base.args[0]
        if base in phs:
            i = phs.index(base)
            what = "the inputs" if i == len(names) else "the state" if i > len(names) else f"the cell's {names[i]!r}"
            return f"{node.target} writes into {what} in place (write h = h * 2, not h.mul_(2))"
    return ""


def _check_ops(gm: torch.fx.GraphModule, functional: bool) -> str:
    """What op in the trace makes it unfit, or ``""``: reads of values, writes left on inputs (random draws are
    ``draws``' to judge)."""
    for node in gm.graph.nodes:
        target = node.target
        if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
            continue
        if target is aten._local_scalar_dense.default:
            return "data-dependent control flow: a tensor's value read as a Python number (.item(), float(t))"
        if functional and target is aten.copy_.default:  # (what functionalization leaves: a write into an input)
            return f"{target} writes into the state or a cell tensor in place"
    return ""


def _check_shapes(mode: FakeTensorMode, batch_symbol: Any) -> str:
    """Whether the trace fixed the batch size or branched on it (a guard from the user's code), said."""
    env = mode.shape_env
    if batch_symbol in env.replacements or batch_symbol not in env.var_to_range:
        return "a value's shape fixes the batch size (a tensor of a fixed number of rows meets the batch rows)"
    for guard in env.guards:
        loc = guard.sloc.framework_loc
        file = getattr(loc, "filename", "") or ""
        if batch_symbol in guard.expr.free_symbols and not file.startswith(_TORCH_DIR):
            line = f" (line {loc.lineno} of {os.path.basename(file)})" if file else ""
            return f"Python control flow on the batch size{line}"
    return ""
