"""The native runner of a compiled step (rnnkit.engine.compiler.native): generated C stages in the engine's time loop.

Programs are written by hand here (stage graphs by make_fx of small torch functions over (n, width) inputs) and
run against a plain torch per-step loop over the same program that calls the original Python functions (not the
traced graphs): values and gradients (step inputs, initial states, weights, row parameters) must agree to 1e-5 in
float32 and 1e-10 in float64, over variable lengths, batch 1 and 37, widths that are not multiples of 8.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch.fx.experimental.proxy_tensor import make_fx

from rnnkit.engine import _ext
from rnnkit.engine.compiler import build, native
from rnnkit.engine.compiler.program import MatMul, Slot, Stage, StepProgram


@pytest.fixture(scope="module", autouse=True)
def _kernels():
    assert _ext.load() is not None, _ext.status()  # this machine has a compiler: the extension must build
    assert build.compiler_available()


def _program(slots: list[Slot], plan: list[tuple], dtype: torch.dtype, step_width: int) -> tuple[StepProgram, list]:
    """``plan``: ("mm", lhs, weight, out) or ("stage", fn, inputs, outputs); returns the program and the stage fns."""
    table = {s.name: s for s in slots}
    steps, fns = [], []
    for item in plan:
        if item[0] == "mm":
            steps.append(MatMul(*item[1:]))
            continue
        _, fn, ins, outs = item
        graph = make_fx(lambda *a, fn=fn: tuple(fn(*a)))(*[torch.randn(3, table[s].width, dtype=dtype) for s in ins])
        steps.append(Stage(graph, tuple(ins), tuple(outs)))
        fns.append(fn)
    widths = tuple(s.width for s in sorted((s for s in slots if s.kind == "state_in"), key=lambda s: s.index))
    out = next(s for s in slots if s.kind == "output")
    prog = StepProgram(table, steps, step_width, widths, out.width, (), lambda tensors, x: None)
    return prog, fns


def _reference(prog: StepProgram, fns: list, x, batch_sizes, states0, weights, params, seqs):
    """The program step by step in torch ops, calling the stages' Python functions."""
    states, ys, off = list(states0), [], 0
    outs = {s.index: s.name for s in prog.slots.values() if s.kind == "state_out"}
    y_name = next(s.name for s in prog.slots.values() if s.kind == "output")
    for n in batch_sizes.tolist():
        env = {}
        for name, s in prog.slots.items():
            if s.kind == "step":
                env[name] = x[off : off + n, s.index : s.index + s.width]
            elif s.kind == "state_in":
                env[name] = states[s.index][:n]
            elif s.kind == "param":
                env[name] = params[s.index].expand(n, s.width)
            elif s.kind == "seq":
                env[name] = seqs[s.index][:n]
        k = 0
        for st in prog.steps:
            if isinstance(st, MatMul):
                env[st.out] = env[st.lhs] @ weights[st.weight]
            else:
                env.update(zip(st.outputs, fns[k](*[env[i] for i in st.inputs]), strict=True))
                k += 1
        ys.append(env[y_name])
        states = [torch.cat([env[outs[i]], states[i][n:]]) for i in range(len(states))]
        off += n
    return torch.cat(ys), states


def _lengths(batch: int, steps: int, gen: torch.Generator) -> torch.Tensor:
    lengths = torch.randint(1, steps + 1, (batch,), generator=gen).sort(descending=True).values
    lengths[0] = steps
    return torch.tensor([int((lengths > t).sum()) for t in range(steps)])


# ---- the programs ---------------------------------------------------------------------------------------------


def lstm_like(H: int, dtype: torch.dtype):
    def step(g, xg, b, c):
        i, j, f, o = (g + xg + b).chunk(4, 1)
        c2 = torch.sigmoid(f + 1.0) * c + torch.sigmoid(i) * torch.tanh(j)
        h = torch.sigmoid(o) * torch.tanh(c2)
        return c2, h, h

    slots = [Slot("xg", "step", 4 * H), Slot("h", "state_in", H, 0), Slot("c", "state_in", H, 1),
             Slot("g", "temp", 4 * H), Slot("b", "param", 4 * H), Slot("c2", "state_out", H, 1),
             Slot("h2", "state_out", H, 0), Slot("y", "output", H)]  # fmt: skip
    plan = [("mm", "h", 0, "g"), ("stage", step, ["g", "xg", "b", "c"], ["c2", "h2", "y"])]
    return _program(slots, plan, dtype, 4 * H), [(H, 4 * H)], [4 * H], []


def gru_reset_before(H: int, dtype: torch.dtype):
    def gates(rz, xg, b, h):
        r, z = torch.sigmoid(rz + xg[:, : 2 * H] + b).split(H, 1)
        return r * h, z

    def update(nh, xg, z, h):
        n = torch.tanh(nh + xg[:, 2 * H :])
        h2 = (1 - z) * n + z * h
        return h2, h2

    slots = [Slot("xg", "step", 3 * H), Slot("h", "state_in", H), Slot("rz", "temp", 2 * H),
             Slot("b", "param", 2 * H), Slot("rh", "temp", H), Slot("z", "temp", H), Slot("nh", "temp", H),
             Slot("h2", "state_out", H), Slot("y", "output", H)]  # fmt: skip
    plan = [("mm", "h", 0, "rz"), ("stage", gates, ["rz", "xg", "b", "h"], ["rh", "z"]), ("mm", "rh", 1, "nh"),
            ("stage", update, ["nh", "xg", "z", "h"], ["h2", "y"])]  # fmt: skip
    return _program(slots, plan, dtype, 3 * H), [(H, 2 * H), (H, H)], [2 * H], []


def layer_norm_peephole(H: int, dtype: torch.dtype):
    def norm(v, gain, shift):
        mean = v.mean(-1, keepdim=True)
        return (v - mean) * torch.rsqrt(v.var(-1, keepdim=True, unbiased=False) + 1e-5) * gain + shift

    def step(g, xg, gamma, beta, peep, c):
        i, j, f, o = norm(g + xg, gamma, beta).chunk(4, 1)
        c2 = torch.sigmoid(f + peep * c) * c + torch.sigmoid(i) * torch.tanh(j)
        h = torch.sigmoid(o) * torch.tanh(norm(c2, 1.0, 0.0))
        return c2, h, 2.0 * h - c2.sum(-1, keepdim=True) / H

    slots = [Slot("xg", "step", 4 * H), Slot("c", "state_in", H, 0), Slot("h", "state_in", H, 1),
             Slot("g", "temp", 4 * H), Slot("gamma", "param", 4 * H, 0), Slot("beta", "param", 4 * H, 1),
             Slot("peep", "param", H, 2), Slot("c2", "state_out", H, 0), Slot("h2", "state_out", H, 1),
             Slot("y", "output", H)]  # fmt: skip
    plan = [("mm", "h", 0, "g"), ("stage", step, ["g", "xg", "gamma", "beta", "peep", "c"], ["c2", "h2", "y"])]
    return _program(slots, plan, dtype, 4 * H), [(H, 4 * H)], [4 * H, 4 * H, H], []


def activations_masked(H: int, dtype: torch.dtype):
    def step(a, x, scale, mask, h):
        u = a + x
        v = torch.where(u > 0.2, F.softplus(u), F.hardsigmoid(u * 2.0)) + torch.relu(u - 0.5) * scale
        w = v.clamp(-0.8, 1.5) - torch.abs(u).clamp(max=1.0) * 0.3 + F.elu(u) * 0.1 + F.leaky_relu(u, 0.2)
        w = w + F.hardtanh(u * 3.0) * 0.2 + torch.exp(-u * u) - torch.log(1.0 + u * u) * 0.1 + torch.sign(u) * 0.01
        h2 = torch.tanh(w) * mask + h * (1 - mask)
        return h2, h2 * scale

    slots = [Slot("x", "step", H), Slot("h", "state_in", H), Slot("a", "temp", H), Slot("scale", "param", 1),
             Slot("mask", "seq", H), Slot("h2", "state_out", H), Slot("y", "output", H)]  # fmt: skip
    plan = [("mm", "h", 0, "a"), ("stage", step, ["a", "x", "scale", "mask", "h"], ["h2", "y"])]
    return _program(slots, plan, dtype, H), [(H, H)], [1], [H]


def nested_state(H: int, dtype: torch.dtype):
    A, C = 3, H + 2

    def step(g, x, p, a, b, c):
        ga, gb, gc = g.split([A, H, C], 1)
        a2 = torch.tanh(ga + x[:, :A]) * torch.sigmoid(a)
        mid = torch.cat([a2, b], 1).mean(-1, keepdim=True)
        b2 = torch.sigmoid(gb + p) * b + (1 - torch.sigmoid(gb)) * torch.tanh(x[:, A:] - mid)
        c2 = torch.maximum(gc, c * 0.5) - torch.minimum(gc, c).amax(-1, keepdim=True) * 0.1 + c[:, :1]
        return a2, b2, c2, torch.cat([b2, a2], 1)

    slots = [Slot("x", "step", A + H), Slot("a", "state_in", A, 0), Slot("b", "state_in", H, 1),
             Slot("c", "state_in", C, 2), Slot("abc", "temp", A + H + C), Slot("g", "temp", A + H + C),
             Slot("p", "param", H), Slot("a2", "state_out", A, 0), Slot("b2", "state_out", H, 1),
             Slot("c2", "state_out", C, 2), Slot("y", "output", H + A)]  # fmt: skip

    def join(a, b, c):
        return (torch.cat([a, b, c], 1),)

    plan = [("stage", join, ["a", "b", "c"], ["abc"]), ("mm", "abc", 0, "g"),
            ("stage", step, ["g", "x", "p", "a", "b", "c"], ["a2", "b2", "c2", "y"])]  # fmt: skip
    return _program(slots, plan, dtype, A + H), [(A + H + C, A + H + C)], [H], []


def constants_width_one(H: int, dtype: torch.dtype):
    gains = torch.linspace(0.5, 1.5, H, dtype=dtype)  # tensor constants: get_attr nodes in the graph
    half = torch.tensor(0.5, dtype=dtype)

    def step(g, x, k, h):
        h2 = torch.tanh(g + x * gains) * half + h * torch.sigmoid(k)
        k2 = k + h2.pow(2).sum(-1, keepdim=True) * 0.01 - torch.reciprocal(1.0 + k * k)
        return h2, k2, torch.cat([k2, h2 - 1.0], 1)

    slots = [Slot("x", "step", H), Slot("h", "state_in", H, 0), Slot("k", "state_in", 1, 1), Slot("g", "temp", H),
             Slot("h2", "state_out", H, 0), Slot("k2", "state_out", 1, 1), Slot("y", "output", H + 1)]  # fmt: skip
    plan = [("mm", "h", 0, "g"), ("stage", step, ["g", "x", "k", "h"], ["h2", "k2", "y"])]
    return _program(slots, plan, dtype, H), [(H, H)], [], []


PROGRAMS = {
    f.__name__: f
    for f in (lstm_like, gru_reset_before, layer_norm_peephole, activations_masked, nested_state, constants_width_one)
}


def _inputs(prog: StepProgram, wshapes, pwidths, swidths, batch: int, steps: int, dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    bs = _lengths(batch, steps, gen)
    N = int(bs.sum())

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=dtype) * scale).requires_grad_()

    x = r(N, prog.step_width)
    states0 = [r(batch, w, scale=0.5) for w in prog.state_widths]
    weights = [r(*s, scale=s[0] ** -0.5) for s in wshapes]
    params = [r(w, scale=0.5) for w in pwidths]
    seqs = [(torch.rand(batch, w, generator=gen, dtype=dtype) > 0.3).to(dtype) for w in swidths]
    return x, bs, states0, weights, params, seqs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch,steps", [(1, 6), (37, 9)])
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_values_and_gradients_match_a_torch_loop(name, batch, steps, dtype):
    (prog, fns), wshapes, pwidths, swidths = PROGRAMS[name](5 if batch == 1 else 13, dtype)
    x, bs, states0, weights, params, seqs = _inputs(prog, wshapes, pwidths, swidths, batch, steps, dtype, 7)
    leaves = [x, *states0, *weights, *params]
    y, finals = native.run_program_native(prog, x, bs, states0, weights, params, seqs)
    y_ref, finals_ref = _reference(prog, fns, x, bs, states0, weights, params, seqs)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-10, "rtol": 1e-10}
    torch.testing.assert_close(y, y_ref, **tol)
    for got, want in zip(finals, finals_ref, strict=True):
        torch.testing.assert_close(got, want, **tol)
    gen = torch.Generator().manual_seed(3)
    dy = torch.randn(y.shape, generator=gen, dtype=dtype)
    dfin = [torch.randn(f.shape, generator=gen, dtype=dtype) for f in finals]
    got = torch.autograd.grad([y, *finals], leaves, [dy, *dfin])
    want = torch.autograd.grad([y_ref, *finals_ref], leaves, [dy, *dfin])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **tol)


@pytest.mark.parametrize("threads,batch", [(2, 37), (3, 50)])
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_row_blocks_match_a_torch_loop(name, threads, batch):
    # Forced on (set_min_step_work(1), threads >= 2): a large batch's steps run in blocks of rows, each block its
    # whole sequence on its own thread; variable lengths shrink the later blocks' rows and end some blocks early.
    ops = _ext.load()
    (prog, fns), wshapes, pwidths, swidths = PROGRAMS[name](13, torch.float32)
    x, bs, states0, weights, params, seqs = _inputs(prog, wshapes, pwidths, swidths, batch, 9, torch.float32, 11)
    leaves = [x, *states0, *weights, *params]
    previous, before = ops.set_min_step_work(1), torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            y_inf, finals_inf = native.run_program_native(prog, x, bs, states0, weights, params, seqs)
        y, finals = native.run_program_native(prog, x, bs, states0, weights, params, seqs)
        gen = torch.Generator().manual_seed(3)
        dy = torch.randn(y.shape, generator=gen)
        dfin = [torch.randn(f.shape, generator=gen) for f in finals]
        got = torch.autograd.grad([y, *finals], leaves, [dy, *dfin])
    finally:
        torch.set_num_threads(before)
        ops.set_min_step_work(previous)
    y_ref, finals_ref = _reference(prog, fns, x, bs, states0, weights, params, seqs)
    want = torch.autograd.grad([y_ref, *finals_ref], leaves, [dy, *dfin])
    # 1e-5 of each tensor's scale: the blocks multiply with another BLAS kernel (another summation order) than the
    # reference, and the weight gradients (sums over every step, up to ~1e3 here) carry that rounding.
    wanted = [y_ref, y_ref, *finals_ref, *finals_ref, *want]
    for a, b in zip([y_inf, y, *finals_inf, *finals, *got], wanted, strict=True):
        b = b.detach()
        torch.testing.assert_close(a.detach(), b, atol=1e-5 * max(1.0, float(b.abs().max())), rtol=1e-5)


def test_inference_runs_without_saving_and_equals_training():
    (prog, fns), wshapes, pwidths, swidths = lstm_like(7, torch.float32)
    x, bs, states0, weights, params, seqs = _inputs(prog, wshapes, pwidths, swidths, 4, 5, torch.float32, 1)
    with torch.no_grad():
        y, finals = native.run_program_native(prog, x, bs, states0, weights, params, seqs)
    y_t, finals_t = native.run_program_native(prog, x, bs, states0, weights, params, seqs)
    assert not y.requires_grad and y_t.requires_grad
    torch.testing.assert_close(y, y_t.detach(), atol=0, rtol=0)
    for a, b in zip(finals, finals_t, strict=True):
        torch.testing.assert_close(a, b.detach(), atol=0, rtol=0)


def test_gradcheck_float64():
    (prog, fns), wshapes, pwidths, swidths = gru_reset_before(3, torch.float64)
    x, bs, states0, weights, params, seqs = _inputs(prog, wshapes, pwidths, swidths, 3, 4, torch.float64, 5)

    def f(x, h0, w0, w1, b):
        y, (h,) = native.run_program_native(prog, x, bs, [h0], [w0, w1], [b], seqs)
        return y, h

    assert torch.autograd.gradcheck(f, (x, *states0, *weights, *params), check_batched_grad=False)


def test_second_derivatives_go_through_the_program_in_torch_ops():
    # create_graph=True: the native backward hands over to the program recomputed in torch ops, so gradgradcheck
    # (against finite differences of the first derivative) holds, with check_batched_grad's torch.func path too.
    (prog, fns), wshapes, pwidths, swidths = gru_reset_before(3, torch.float64)
    x, bs, states0, weights, params, seqs = _inputs(prog, wshapes, pwidths, swidths, 3, 4, torch.float64, 5)

    def f(x, h0, w0, w1, b):
        y, (h,) = native.run_program_native(prog, x, bs, [h0], [w0, w1], [b], seqs)
        return y, h

    assert torch.autograd.gradgradcheck(f, (x, *states0, *weights, *params))


def test_bad_inputs_are_named():
    (prog, fns), wshapes, pwidths, swidths = lstm_like(3, torch.float32)
    x, bs, states0, weights, params, seqs = _inputs(prog, wshapes, pwidths, swidths, 2, 3, torch.float32, 2)
    with pytest.raises(ValueError, match=r"step_inputs must be \(N, 12\)"):
        native.run_program_native(prog, x[:, :5], bs, states0, weights, params, seqs)
    with pytest.raises(ValueError, match="batch_sizes sum"):
        native.run_program_native(prog, x[:-1], bs, states0, weights, params, seqs)


def test_a_new_program_compiles_quickly_and_once(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNKIT_CELLS_DIR", str(tmp_path))
    salt = float(time.time_ns() % 1000003) / 1e7  # a constant no earlier unit holds: a new source, a real compile

    def step(g, x, h):
        h2 = torch.tanh(g + x) * (1.0 + salt) + h * 0.5
        return h2, h2

    slots = [Slot("x", "step", 6), Slot("h", "state_in", 6), Slot("g", "temp", 6), Slot("h2", "state_out", 6),
             Slot("y", "output", 6)]  # fmt: skip
    prog, _ = _program(slots, [("mm", "h", 0, "g"), ("stage", step, ["g", "x", "h"], ["h2", "y"])], torch.float32, 6)
    before = build.stats()["compiled"]
    start = time.perf_counter()
    native.prepare_native(prog, torch.float32, backward=True)
    assert time.perf_counter() - start < 5.0
    assert build.stats()["compiled"] == before + 1
    assert len(list(tmp_path.glob("*.so"))) == 1
    native.prepare_native(prog, torch.float32, backward=True)  # the process keeps it
    assert build.stats()["compiled"] == before + 1
