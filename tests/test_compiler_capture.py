"""The compiler's capture and partition (``rnnkit.engine.compiler``): a cell's ``call`` -> ``StepProgram``, run by the
torch interpreter (``interpret``), against the reference loop (``rnnkit.engine.reference_unroll``) in values and
gradients, over packed variable-length batches; and the constructs it must refuse, named.

Tolerances: float32 values and gradients within 2e-6 (absolute, on values of order 1: the hoisted and recurrent
multiplies sum the same products in another association); float64 through ``torch.autograd.gradcheck``.
"""

from __future__ import annotations

import operator
import time

import pytest
import torch
import torch.nn.functional as F

import rnnkit
from capture_cells import CELLS, DEPTH, TFCell
from cell_registry import CELLS as RNNKIT_CELLS
from cell_registry import INPUT_DEPTH
from rnnkit._structure import flatten, map_structure
from rnnkit.engine import make_plan, reference_unroll
from rnnkit.engine.compiler import MatMul, Stage, StepProgram, Unsupported
from rnnkit.engine.compiler.capture import capture
from rnnkit.engine.compiler.interpret import run_program, unroll_program
from rnnkit.engine.compiler.program import STAGE_OPS
from rnnkit.engine.compiler.trace import tensors_of

LENGTHS = torch.tensor([5, 2, 0, 5, 3])  # a sequence of length 0, ties, and one shorter than the rest
ATOL = 2e-6


def _state(cell: rnnkit.RNNCell, batch: int, dtype: torch.dtype = torch.float32):
    return map_structure(lambda z: torch.randn_like(z).requires_grad_(), cell.zero_state(batch, dtype))


def _check_contract(program: StepProgram) -> None:
    """The intermediate form's rules (``program``'s docstring), checked on a real program."""
    written = {s.name for s in program.slots.values() if s.kind in ("step", "state_in", "param", "seq")}
    writers: dict[str, int] = {}
    for step in program.steps:
        reads = (step.lhs,) if isinstance(step, MatMul) else step.inputs
        assert set(reads) <= written, f"read before written: {set(reads) - written}"
        outs = (step.out,) if isinstance(step, MatMul) else step.outputs
        for name in outs:
            writers[name] = writers.get(name, 0) + 1
        written |= set(outs)
        if isinstance(step, Stage):
            for node in step.graph.graph.nodes:
                if node.op == "call_function":
                    assert node.target is operator.getitem or str(node.target) in STAGE_OPS, node.target
    outs = [s.name for s in program.slots.values() if s.kind in ("state_out", "output")]
    assert sorted(outs) == sorted(["output", *(f"state_out{k}" for k in range(len(program.state_widths)))])
    assert all(writers.get(name) == 1 for name in outs), writers
    steps = program.slots_of("step")
    assert sum(s.width for s in steps) == program.step_width
    assert [s.index for s in steps] == [sum(t.width for t in steps[:i]) for i in range(len(steps))]


def _compare(cell: rnnkit.RNNCell, program: StepProgram, x, state, lengths, reverse=False, atol=ATOL) -> None:
    ref, ref_state = reference_unroll(cell, x, state, lengths, reverse)
    out, out_state = unroll_program(program, cell, x, state, lengths, reverse)
    torch.testing.assert_close(out, ref, atol=atol, rtol=0)
    for a, b in zip(flatten(out_state), flatten(ref_state), strict=True):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)
    wrt = [x, *flatten(state), *cell.parameters()]
    weights = [torch.randn_like(ref), *(torch.randn_like(s) for s in flatten(ref_state))]

    def loss(o, s):
        return sum((w * v).sum() for w, v in zip(weights, [o, *flatten(s)], strict=True))

    got = torch.autograd.grad(loss(out, out_state), wrt, allow_unused=True)
    want = torch.autograd.grad(loss(ref, ref_state), wrt, allow_unused=True)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=atol * 5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("reverse", [False, True])
def test_user_cells_match_the_reference_loop(name: str, reverse: bool) -> None:
    cell = CELLS[name]()
    batch = len(LENGTHS)
    x = torch.randn(5, batch, DEPTH, requires_grad=True)
    state = _state(cell, batch)
    cell.begin_sequence(batch)
    program = capture(cell, DEPTH, torch.float32, "cpu", batch=batch)
    assert isinstance(program, StepProgram), program
    _check_contract(program)
    _compare(cell, program, x, state, LENGTHS, reverse)


@pytest.mark.parametrize("name", sorted(RNNKIT_CELLS))
def test_rnnkit_cells_match_the_reference_loop(name: str) -> None:
    cell = RNNKIT_CELLS[name]()
    cell.build(INPUT_DEPTH)
    cell.eval()  # (in training the dropout wrapper draws at every step: test_compiled_random_draws.py)
    x = torch.randn(4, 3, INPUT_DEPTH, requires_grad=True)
    program = capture(cell, INPUT_DEPTH)
    assert isinstance(program, StepProgram), program
    _check_contract(program)
    _compare(cell, program, x, _state(cell, 3), torch.tensor([4, 1, 3]))


@pytest.mark.parametrize("name", ["tf_minimal_gated", "coupled_zoneout", "layer_norm_lstm"])
def test_gradcheck_float64(name: str) -> None:
    cell = CELLS[name]().double()
    batch, steps = 3, 3
    cell.begin_sequence(batch)
    program = capture(cell, DEPTH, torch.float64, batch=batch)
    assert isinstance(program, StepProgram), program
    lengths = torch.tensor([3, 1, 2])
    plan = make_plan(steps, batch, lengths, False, torch.device("cpu"))
    tensors = [t.detach().clone().requires_grad_(t.requires_grad) for t in tensors_of(cell, program.tensor_names)]
    seqs = [plan.sort(tensors[program.tensor_names.index(n)]) for n in program.seq_names]
    x = torch.randn(steps, batch, DEPTH, dtype=torch.float64, requires_grad=True)
    leaves = flatten(_state(cell, batch, torch.float64))

    def run(x, *args):
        states, params = args[: len(leaves)], args[len(leaves) :]
        step, weights, rows = program.prepare(list(params), plan.pack(x))
        y, finals = run_program(program, step, plan.batch_sizes, [plan.sort(s) for s in states], weights, rows, seqs)
        return plan.unpack(y), *finals

    assert torch.autograd.gradcheck(run, (x, *leaves, *tensors))


def test_tf_concat_kernel_is_one_hoisted_multiply_and_one_recurrent() -> None:
    cell = CELLS["tf_lstm"]()
    program = capture(cell, DEPTH)
    assert program.info["hoisted_multiplies"] == 1 and program.info["recurrent_multiplies"] == 1
    matmuls = [s for s in program.steps if isinstance(s, MatMul)]
    assert [type(s) for s in program.steps] == [MatMul, Stage]
    assert program.slots[matmuls[0].lhs] == program.slots_of("state_in")[1]  # h (TF's LSTMStateTuple order: c, h)
    assert program.step_width == 16  # x @ kernel[:DEPTH], all four gates, over all the steps
    step, weights, rows = program.prepare(tensors_of(cell, program.tensor_names), torch.randn(7, DEPTH))
    torch.testing.assert_close(weights[0], cell.kernel[DEPTH:])
    assert step.shape == (7, 16) and all(r.dim() == 1 for r in rows)


def test_gru_reset_before_gives_two_multiply_levels() -> None:
    program = capture(CELLS["torch_gru"](), DEPTH)
    assert [type(s) for s in program.steps] == [MatMul, Stage, MatMul, Stage]
    assert program.info["matmul_levels"] == 2 and program.info["hoisted_multiplies"] == 1
    _, weights, _ = program.prepare(tensors_of(CELLS["torch_gru"](), program.tensor_names), torch.randn(2, DEPTH))
    # the two multiplies of h (reset and update gates) are one multiply by [W_hr^T, W_hz^T]; r * h then times W_hn^T
    assert [tuple(w.shape) for w in weights] == [(5, 10), (5, 5)]


def test_per_sequence_tensors_are_seq_slots() -> None:
    cell = CELLS["coupled_zoneout"]()
    cell.begin_sequence(5)
    program = capture(cell, DEPTH, batch=5)
    assert program.seq_names == ("zone",) and [s.width for s in program.slots_of("seq")] == [4]
    assert "keep" in program.tensor_names and "keep" not in program.seq_names  # one row for all: a row parameter


def test_bool_slots_travel_as_zero_one() -> None:
    program = capture(CELLS["bool_masks"](), DEPTH)
    kinds = {program.slots[name].kind for name in program.info["bool_slots"]}
    assert kinds == {"step", "temp"}, program.info["bool_slots"]


def test_no_steps_at_all() -> None:
    cell = CELLS["tf_lstm"]()
    program = capture(cell, DEPTH)
    x = torch.randn(3, 2, DEPTH)
    state = _state(cell, 2)
    out, final = unroll_program(program, cell, x, state, torch.tensor([0, 0]))
    assert out.eq(0).all() and all(a.equal(b) for a, b in zip(flatten(final), flatten(state), strict=True))
    out, final = unroll_program(program, cell, x[:0], state)
    assert out.shape == (0, 2, 4) and all(a is b for a, b in zip(flatten(final), flatten(state), strict=True))


def test_key_is_stable_and_follows_the_graph() -> None:
    a, b = capture(CELLS["tf_lstm"](), DEPTH), capture(CELLS["tf_lstm"](), DEPTH)
    assert len(a.key) == 64 and a.key == b.key
    assert capture(CELLS["tf_lstm"]().double(), DEPTH, torch.float64).key != a.key
    assert capture(CELLS["tf_minimal_gated"](), DEPTH).key != a.key


def test_capture_takes_well_under_a_second() -> None:
    capture(CELLS["peephole_lstm"](), DEPTH)  # (the first trace in a process warms torch's tracer up)
    start = time.perf_counter()
    capture(CELLS["peephole_lstm"](), DEPTH)
    assert time.perf_counter() - start < 1.0


class _InPlace(TFCell):
    """In-place arithmetic on values the step makes (the capture functionalizes it): ``+=``, ``sub_``, columns."""

    def _build(self, d: int) -> None:
        self.kernel = torch.nn.Parameter(torch.randn(d + self.num_units, self.num_units) * 0.5)

    def call(self, inputs, state):
        g = inputs @ self.kernel[: inputs.shape[1]]
        g += state @ self.kernel[inputs.shape[1] :]
        g = torch.tanh(g) * 1.5
        g[:, :2] *= 0.5
        g.sub_(0.1)
        return g, g


def test_in_place_ops_on_the_step_values_are_captured() -> None:
    cell = _InPlace(4)
    cell.build(DEPTH)
    program = capture(cell, DEPTH)
    assert isinstance(program, StepProgram), program
    x = torch.randn(4, 5, DEPTH, requires_grad=True)
    _compare(cell, program, x, _state(cell, 5), LENGTHS.clamp(max=4))


class _Probe(TFCell):
    """A cell whose step is ``body(self, inputs, state)``, with one ``(d + n, n)`` kernel."""

    def __init__(self, body, n: int = 4):
        super().__init__(n)
        self.body = body

    def _build(self, d: int) -> None:
        self.kernel = torch.nn.Parameter(torch.randn(d + self.num_units, self.num_units))

    def call(self, inputs, state):
        h = self.body(self, inputs, state)
        return h, h


def _branch(cell, x, h):
    if x.sum() > 0:
        return torch.tanh(h)
    return h


REFUSED = {
    "data_dependent_if": (_branch, "data-dependent control flow", "`if x.sum() > 0:`"),
    "item": (lambda c, x, h: h * x.max().item(), "data-dependent control flow", ".item()"),
    "batch_size_if": (lambda c, x, h: h if x.shape[0] == 1 else 2 * h, "control flow on the batch size", "line"),
    "bmm": (lambda c, x, h: torch.bmm(h.unsqueeze(1), h.unsqueeze(2)).squeeze(1) * h, "aten.bmm.default", "state"),
    "bernoulli": (lambda c, x, h: torch.bernoulli(torch.sigmoid(h)) * h, "aten.bernoulli", "random"),
    "h_times_h_transpose": (lambda c, x, h: (h @ h.T)[:, :4], "aten.mm.default", "depends on the state"),
    "input_weight": (lambda c, x, h: (h[:, :3] @ (x.T @ x))[:, :1] * h, "aten.mm.default", "depends on the inputs"),
    "across_rows": (lambda c, x, h: h + x.sum(0)[:1], "not (batch, features)", "sum"),
    "erf": (lambda c, x, h: F.gelu(h @ c.kernel[3:]), "aten.erf.default is outside the compiled op set", ""),
    "in_place_state": (lambda c, x, h: h.mul_(0.5), "writes into the state", "aten.mul_.Tensor"),
    "in_place_view": (lambda c, x, h: torch.tanh(h) + h[:, :2].zero_().sum(1, keepdim=True), "the state", "zero_"),
    "untraceable": (lambda c, x, h: h * float(torch.from_numpy(h.detach().numpy()).sum()), "tracer", "numpy"),
    "einsum": (lambda c, x, h: torch.einsum("bi,ij->bj", h, c.kernel[3:]), "aten.unsqueeze.default", "op set"),
    "flip": (lambda c, x, h: torch.flip(h, [0]), "aten.flip.default is outside the compiled op set", ""),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_cannot_be_compiled_is_named(case: str) -> None:
    body, what, detail = REFUSED[case]
    cell = _Probe(body)
    cell.build(3)
    result = capture(cell, 3)
    assert isinstance(result, Unsupported), result
    assert result.where == "_Probe.call" and what in result.what and detail in str(result), str(result)


def test_per_step_draws_become_inputs_drawn_before_the_loop() -> None:
    # (per-step dropout of a DropoutWrapper: each draw is replayed before the loop, test_compiled_random_draws.py)
    cell = rnnkit.DropoutWrapper(rnnkit.GRUCell(4), output_keep_prob=0.5)
    cell.build(3)
    result = capture(cell, 3)
    assert isinstance(result, StepProgram), result
    assert [(d.kind, d.p, d.width) for d in result.draws] == [("bernoulli_", 0.5, 4)]  # empty_like(h).bernoulli_(p)


class _Cached(TFCell):
    """Masks kept in a dict attribute, drawn per sequence; a step counter (and, with ``cache``, a tensor stored)."""

    def _build(self, d: int) -> None:
        self.kernel = torch.nn.Parameter(torch.randn(d + self.num_units, self.num_units) * 0.5)
        self.masks: dict[str, torch.Tensor] = {}
        self.calls = 0
        self.cache: dict[str, torch.Tensor] = {}

    def begin_sequence(self, batch_size: int) -> None:
        self.masks = {"keep": torch.rand(1, self.num_units), "rows": torch.rand(batch_size, self.num_units)}

    def call(self, inputs, state):
        self.calls += 1
        h = torch.tanh(torch.cat([inputs, state * self.masks["keep"]], 1) @ self.kernel) * self.masks["rows"]
        if self.cache is not None:
            self.cache["last"] = h
        return h, h


def test_tensors_in_dict_attributes_and_python_state_kept() -> None:
    cell = _Cached(4)
    cell.build(DEPTH)
    x = torch.randn(4, 5, DEPTH, requires_grad=True)
    state = _state(cell, 5)
    ref, ref_final = reference_unroll(cell, x, state, LENGTHS.clamp(max=4))  # (begin_sequence draws the masks)
    before = (dict(cell.masks), cell.calls, dict(cell.cache))
    cell.cache = None
    program = capture(cell, DEPTH, batch=5)
    cell.cache = before[2]
    assert isinstance(capture(cell, DEPTH, batch=5), Unsupported)  # it stores h on the cell: state across steps
    assert (dict(cell.masks), cell.calls, dict(cell.cache)) == before  # (the traces ran call: undone)
    assert isinstance(program, StepProgram) and program.seq_names == ("masks.rows",), program
    out, final = unroll_program(program, cell, x, state, LENGTHS.clamp(max=4))
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(final, ref_final, atol=ATOL, rtol=0)


def test_rebinding_a_tensor_attribute_is_refused_and_undone() -> None:
    def body(cell, x, h):
        cell.last = h
        return h * 2

    cell = _Probe(body)
    cell.build(3)
    cell.last = torch.zeros(1)
    keep = cell.last
    result = capture(cell, 3)
    assert isinstance(result, Unsupported) and "stores tensors on the cell: ['last']" in result.what
    assert cell.last is keep
