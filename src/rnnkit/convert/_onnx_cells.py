"""ONNX export of any ``RNNCell`` run by ``dynamic_rnn``: the cell's compiled step (``StepProgram``) in a ``Scan``.

`export_onnx` sends every cell here (a user's TF1-protocol or torch-style cell, or one of rnnkit's). The cell's
``call`` is captured as the engine's compiler captures it (``rnnkit.engine.compiler``), in eval mode, and written as:

* outside the loop, ``prepare`` over all ``T * B`` input rows: the work on the cell's weights alone is computed now,
  in torch, and stored as initializers; the multiplies and pointwise work that read only the inputs become ONNX
  nodes (one ``MatMul`` over all steps);
* one ``Scan`` over time whose state variables are the state leaves (TF's flattened order) and whose scan input is
  each step's slice of the prepared inputs; its body is the program's steps in order: a ``MatMul`` by a recurrent
  weight (an outer initializer) for each ``MatMul``, each ``Stage``'s aten ops one by one (``_onnx_aten.OPS``).

Graph inputs and outputs (float32; ``S_k`` the width of state leaf ``k``, ``O`` the cell's ``output_size``)::

    inputs   input           (batch, max_time, depth)     ((max_time, batch, depth) with time_major)
             state_0 ...     (batch, S_k)                 initial_states=True (False: zeros)
             sequence_lens   (batch,) int32               sequence_lens=True: dynamic_rnn's sequence_length
    outputs  output          (batch, max_time, O)         ((max_time, batch, O) with time_major)
             state_out_0 ... (batch, S_k)

With ``sequence_lens`` each sequence's state stops at its last step and its outputs past it are zeros, as
``dynamic_rnn`` (and the layers' Scan export). A cell whose step uses an op with no ONNX translation is refused with
``NotImplementedError`` naming the op; a cell the compiler cannot capture at all, with the compiler's reason.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from ..engine.compiler.capture import capture
from ..engine.compiler.program import MatMul, StepProgram, Unsupported
from ..engine.compiler.trace import tensors_of
from ._onnx_aten import Emitter, emit_graph, record
from ._onnx_graph import Graph, value_info, zeros
from ._onnx_io import onnx_module as _onnx

__all__ = ["export_cell"]


def _program(cell: Any, depth: int) -> StepProgram:
    """The cell's step captured in eval mode (the cell's own mode is left as it was)."""
    name = type(cell).__name__
    params = list(cell.parameters())
    dtype = params[0].dtype if params else torch.get_default_dtype()
    device = params[0].device if params else torch.device("cpu")
    was_training = cell.training
    cell.eval()
    try:
        program = capture(cell, depth, dtype, device)
    finally:
        cell.train(was_training)
    if isinstance(program, Unsupported):
        raise NotImplementedError(f"export_onnx: the step of {name} cannot be captured for ONNX: {program}")
    if program.draws:
        raise NotImplementedError(
            f"export_onnx: {name} draws random numbers at every step in eval mode ({len(program.draws)} draws); "
            "ONNX export computes a deterministic inference function"
        )
    if program.seq_names:
        raise NotImplementedError(
            f"export_onnx: {name} draws per-sequence tensors {list(program.seq_names)} in eval mode (random masks); "
            "ONNX export computes a deterministic inference function"
        )
    return program


def _probe_stream() -> torch.Generator:
    """The probes' own random numbers: exporting must not move the user's random stream."""
    return torch.Generator().manual_seed(0)


def _probe(tensors: list[torch.Tensor], depth: int) -> torch.Tensor:
    """Two rows of inputs like the cell's tensors (the probe runs record shapes and fold the weight-only work)."""
    like = tensors[0] if tensors else torch.empty(0)
    return torch.rand(2, depth, dtype=like.dtype, generator=_probe_stream()).to(like.device)


def _prepare(
    g: Graph, program: StepProgram, tensors: list[torch.Tensor], rows: str, depth: int, where: str, opset: int
) -> str:
    """``prepare``'s step inputs over ``rows`` ``(N, depth)`` -> an ONNX name ``(N, step_width)``; the weight-only
    part (every node not reading the inputs) is evaluated now and written as constants."""
    gm = program.prepare.graph_module
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    x_node = placeholders[-1]
    values = record(gm, *tensors, _probe(tensors, depth))
    reads_x = {x_node}
    for n in gm.graph.nodes:
        if any(a in reads_x for a in n.all_input_nodes):
            reads_x.add(n)
    folded = {n for n in gm.graph.nodes if n.op == "call_function" and n not in reads_x}
    e = Emitter(g, f"{where} (the work before the time loop)", opset, values, rows=rows)
    step = emit_graph(e, gm, [*tensors, rows], folded)[0]  # a tensor read by input work is written on first use
    return e.t(step) if not isinstance(step, str) else step


def _body(
    g: Graph, program: StepProgram, weights: list[str], params: list[str], masked: bool, where: str, opset: int,
    shapes: dict[int, dict],
) -> Any:  # fmt: skip
    """The Scan body (a ``GraphProto``): state leaves and the step's inputs (and mask) in, new leaves and output out."""
    onnx = _onnx()
    b = Graph(g.root, prefix="step_")
    x_t = b.fresh("step_inputs_t")
    mask_t = b.fresh("mask_t") if masked else None
    old = [b.fresh(f"state_in_{k}") for k in range(len(program.state_widths))]
    e = Emitter(b, f"{where} (the step)", opset, {}, rows=x_t)
    slots: dict[str, str] = {}
    for slot in program.slots.values():
        if slot.kind == "step":
            start, stop = b.ints([slot.index]), b.ints([slot.index + slot.width])
            slots[slot.name] = b.op("Slice", [x_t, start, stop, b.ints([1])])
        elif slot.kind == "state_in":
            slots[slot.name] = old[slot.index]
        elif slot.kind == "param":
            slots[slot.name] = params[slot.index]
            e.narrow.add(params[slot.index])
    for step in program.steps:
        if isinstance(step, MatMul):
            slots[step.out] = b.op("MatMul", [e.full(slots[step.lhs]), weights[step.weight]])
            continue
        e.values = shapes[id(step)]
        results = emit_graph(e, step.graph, [slots[name] for name in step.inputs])
        slots.update(zip(step.outputs, (e.t(r) if not isinstance(r, str) else r for r in results), strict=True))
    new = [e.full(slots[s.name]) for s in program.slots_of("state_out")]
    out = e.full(slots[program.slots_of("output")[0].name])
    if mask_t:  # past a sequence's end: keep the state, output zeros
        new = [b.op("Where", [mask_t, v, o]) for v, o in zip(new, old, strict=True)]
        out = b.op("Where", [mask_t, out, b.const(0.0)])
    finals = [b.op("Identity", [v]) for v in new]
    y_t = b.op("Identity", [out])
    widths = program.state_widths
    inputs = [value_info(o, ["batch", w]) for o, w in zip(old, widths, strict=True)]
    inputs.append(value_info(x_t, ["batch", program.step_width]))
    if mask_t:
        inputs.append(value_info(mask_t, ["batch", 1], onnx.TensorProto.BOOL))
    outputs = [value_info(f, ["batch", w]) for f, w in zip(finals, widths, strict=True)]
    outputs.append(value_info(y_t, ["batch", program.output_width]))
    return onnx.helper.make_graph(b.nodes, "step", inputs, outputs)


def _stage_shapes(program: StepProgram, step_inputs: torch.Tensor, weights: list, params: list) -> dict[int, dict]:
    """Each stage's node values on a probe step of 2 rows (the feature widths its translation needs)."""
    rows = 2
    slots: dict[str, torch.Tensor] = {}
    for slot in program.slots.values():
        if slot.kind == "step":
            slots[slot.name] = step_inputs[:rows, slot.index : slot.index + slot.width]
        elif slot.kind == "state_in":
            slots[slot.name] = torch.rand(rows, slot.width, dtype=step_inputs.dtype, generator=_probe_stream()).to(
                step_inputs.device
            )
        elif slot.kind == "param":
            slots[slot.name] = params[slot.index].expand(rows, slot.width)
    shapes: dict[int, dict] = {}
    for step in program.steps:
        if isinstance(step, MatMul):
            slots[step.out] = slots[step.lhs] @ weights[step.weight]
            continue
        shapes[id(step)] = values = record(step.graph, *(slots[name] for name in step.inputs))
        output = next(n for n in step.graph.graph.nodes if n.op == "output")
        slots.update(zip(step.outputs, (values[a] for a in output.args[0]), strict=True))
    return shapes


def export_cell(
    cell: Any,
    path: str | os.PathLike | None,
    *,
    input_size: int | None,
    time_major: bool,
    sequence_lens: bool,
    initial_states: bool,
    opset: int,
) -> Any:
    """`export_onnx` for an ``RNNCell`` (see the module's docstring); returns the ``ModelProto``."""
    onnx = _onnx()
    name = type(cell).__name__
    depth = cell.input_depth if cell.input_depth is not None else input_size
    if depth is None:
        raise ValueError(
            f"export_onnx: the input depth of {name} is not known yet (not built, never run); pass input_size="
        )
    if input_size is not None and input_size != depth:
        raise ValueError(f"export_onnx: {name} was built for inputs of depth {depth}, got input_size={input_size}")
    program = _program(cell, depth)
    tensors = [t.detach() for t in tensors_of(cell, program.tensor_names)]
    with torch.no_grad():
        step_probe, weight_values, param_values = program.prepare(tensors, _probe(tensors, depth))
    g = Graph()
    where = f"{name}.call"

    time_batch = ["max_time", "batch"] if time_major else ["batch", "max_time"]
    inputs = [value_info("input", [*time_batch, depth])]
    x = "input" if time_major else g.op("Transpose", ["input"], perm=[1, 0, 2])  # [T, B, D]
    rows = g.op("Reshape", [x, g.ints([-1, depth])])  # [T * B, D], time-major rows
    widths = program.state_widths
    if initial_states:
        inputs += [value_info(f"state_{k}", ["batch", w]) for k, w in enumerate(widths)]
        initial = [f"state_{k}" for k in range(len(widths))]
    else:
        initial = [zeros(g, x, w) for w in widths]
    mask = None
    if sequence_lens:
        inputs.append(value_info("sequence_lens", ["batch"], onnx.TensorProto.INT32))
        lens64 = g.op("Cast", ["sequence_lens"], to=onnx.TensorProto.INT64)
        steps = g.op("Gather", [g.op("Shape", [x]), g.ints(0)], axis=0)  # scalar T
        t = g.op("Range", [g.ints(0), steps, g.ints(1)])  # [T]
        valid = g.op("Less", [g.op("Unsqueeze", [t, g.ints([1])]), g.op("Unsqueeze", [lens64, g.ints([0])])])
        mask = g.op("Unsqueeze", [valid, g.ints([2])])  # [T, B, 1] bool: step t of sequence b is real

    if program.step_width:
        step_rows = _prepare(g, program, tensors, rows, depth, where, opset)
        time_and_batch = g.op("Slice", [g.op("Shape", [x]), g.ints([0]), g.ints([2])])
        shape = g.op("Concat", [time_and_batch, g.ints([program.step_width])], axis=0)
        step_inputs = g.op("Reshape", [step_rows, shape])  # [T, B, step_width]
    else:  # a step reading no inputs: scan over the inputs only for the number of steps
        step_inputs = x
    weights = [g.const(w.detach().to(torch.float32), f"recurrent_weight_{k}") for k, w in enumerate(weight_values)]
    params = [g.const(p.detach().to(torch.float32), f"row_param_{k}") for k, p in enumerate(param_values)]
    shapes = _stage_shapes(program, step_probe, weight_values, param_values)
    body = _body(g, program, weights, params, mask is not None, where, opset, shapes)
    scan_inputs = [step_inputs] + ([mask] if mask else [])
    results = g.op(
        "Scan", [*initial, *scan_inputs], len(widths) + 1, body=body, num_scan_inputs=len(scan_inputs),
    )  # fmt: skip
    y = results[-1]  # [T, B, O]
    out = y if time_major else g.op("Transpose", [y], perm=[1, 0, 2])
    g.nodes.append(onnx.helper.make_node("Identity", [out], ["output"]))
    outputs = [value_info("output", [*time_batch, program.output_width])]
    for k, (final, w) in enumerate(zip(results[:-1], widths, strict=True)):
        g.nodes.append(onnx.helper.make_node("Identity", [final], [f"state_out_{k}"]))
        outputs.append(value_info(f"state_out_{k}", ["batch", w]))

    graph = onnx.helper.make_graph(g.nodes, f"rnnkit_{name}", inputs, outputs, g.initializers)
    opsets = [onnx.helper.make_opsetid("", opset)]
    model = onnx.helper.make_model(graph, opset_imports=opsets, producer_name="rnnkit")
    model.ir_version = onnx.helper.find_min_ir_version_for(opsets)
    export = {"implementation": "cell", "cell": name, "state_widths": list(widths)}
    export["output_width"] = program.output_width
    export["state_structure"] = repr(cell.state_size)
    onnx.helper.set_model_props(model, {"rnnkit.export": json.dumps(export)})
    onnx.checker.check_model(model)
    if path is not None:
        onnx.save(model, os.fspath(path))
    return model
