"""bfloat16 and float16 on the engine's fused path, every lowered family, against the float32 reference loop.

Each case makes a cell (or layer) in float32, casts it to the low dtype (``low``) and takes a float32 copy of *those*
rounded weights (``ref``); inputs likewise. ``low`` runs under ``auto`` (its leaves must take the fused kernels, or
torch's where that is the route), ``ref`` under ``engine.use("reference")``. The fused path sums in float32 inside a
layer (``rnnkit.engine.precision``), so the two differ by the roundings to the low dtype at layer boundaries and, in
bf16, by the rounding of the ``h`` each step's multiply reads (a relative ``u`` into a contracting step, as the
roundings below; ``tests/test_bf16_multiplies.py`` checks that rounding exactly), whose size is derived here.

**Tolerance.** A low dtype of ``p`` significant bits rounds to nearest with a relative error of at most ``u = 2^-p``
(bf16: p = 8, u = 2^-8 = 3.9e-3; fp16: p = 11, u = 4.9e-4). The float32 compute differs from the reference loop's
by ~1e-6, which can move a value across a rounding tie: then its rounding is off by one unit in the last place,
``2u``. A value that went through ``n`` roundings (one per layer it crossed, for a gradient also the rounding of the
incoming gradient and of the parameter's own) is off by at most ``2u`` per rounding times the gain of what follows,
which is below 1 here (contracting steps: sigmoid/tanh gates, weights drawn U(-1/sqrt(H), 1/sqrt(H)) or Glorot). So
forward values are asserted within ``2 * n * u * scale`` and gradients within ``4 * n * u * scale`` (their
sums over steps and rows are float32, but each summand carries the roundings of both the forward activations it
reads and the incoming gradient), ``scale`` being the reference's largest magnitude (tanh/sigmoid outputs are
within [-1, 1]; ReLU and gradients are not, hence the scale). The largest measured errors are 0.4-0.7 of these bounds.
"""

from __future__ import annotations

import copy

import pytest
import torch

import rnnkit
from cell_registry import CELLS, INPUT_DEPTH
from rnnkit import engine
from rnnkit._structure import flatten
from rnnkit.engine.route import FUSED_MAX_BATCH, route, torch_whole_stack
from user_cells import USER_CELLS

LOW = [torch.bfloat16, torch.float16]
UNIT = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
T, B = 5, 3


def _close(got: torch.Tensor, want: torch.Tensor, bound: float, what: str) -> None:
    got, want = got.detach().float(), want.detach()
    scale = max(float(want.abs().max()), 1e-3)
    err = float((got - want).abs().max())
    assert err <= bound * scale, f"{what}: max error {err:.3g} > {bound:.3g} * {scale:.3g}"


def _pair(module: torch.nn.Module, dtype: torch.dtype) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(low, ref)``: the module in ``dtype`` and a float32 copy of the same rounded values."""
    low = copy.deepcopy(module).to(dtype)
    return low, copy.deepcopy(low).float()


def _check_grads(low: torch.nn.Module, ref: torch.nn.Module, xs: tuple, bound: float) -> None:
    for (name, p), q in zip(low.named_parameters(), ref.parameters(), strict=True):
        assert p.grad is not None and p.grad.dtype == p.dtype, name
        _close(p.grad, q.grad, bound, f"grad {name}")
    _close(xs[0].grad, xs[1].grad, bound, "grad input")


def _inputs(dtype: torch.dtype, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    x_low = torch.randn(T, B, depth).to(dtype).requires_grad_()
    return x_low, x_low.detach().float().requires_grad_()


def _cell_case(make, dtype: torch.dtype, lengths: torch.Tensor | None, layers: int) -> None:
    cell = make()
    cell.build(INPUT_DEPTH)
    cell.eval()  # (a wrapper's per-step dropout would take the reference loop; masks are tested in float32)
    low, ref = _pair(cell, dtype)
    x_low, x_ref = _inputs(dtype, INPUT_DEPTH)
    assert all(p in ("fused", "torch") for p in engine.explain(low, x_low.detach(), lengths))
    u = UNIT[dtype]
    y, state = engine.unroll(low, x_low, low.zero_state(B, dtype), lengths)
    with engine.use("reference"):
        y_ref, state_ref = engine.unroll(ref, x_ref, ref.zero_state(B, torch.float32), lengths)
    assert y.dtype == dtype and all(s.dtype == dtype for s in flatten(state))
    _close(y, y_ref, 2 * layers * u, "outputs")
    for s, s_ref in zip(flatten(state), flatten(state_ref), strict=True):
        _close(s, s_ref, 2 * layers * u, "final state")
    g = torch.randn(y_ref.shape)
    ((y.float() * g).sum() + sum(s.float().sum() for s in flatten(state))).backward()
    ((y_ref * g).sum() + sum(s.sum() for s in flatten(state_ref))).backward()
    _check_grads(low, ref, (x_low, x_ref), 4 * (layers + 1) * u)


def _layers_of(name: str) -> int:
    return 3 if name.startswith("multi") else 1


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", sorted(CELLS))
def test_registered_cells_low_precision(case, dtype):
    """Every registered cell (LSTM with peepholes, clip and projection, layer-norm LSTM, TF GRU, RNN, stacks and
    wrappers) with variable lengths: outputs, final states and gradients."""
    _cell_case(CELLS[case], dtype, torch.tensor([5, 2, 4]), _layers_of(case))


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("entry", USER_CELLS, ids=[e.name for e in USER_CELLS])
def test_compiled_user_cells_low_precision(entry, dtype):
    """Compiled user cells: the step is captured in float32 and runs on the cell's tensors widened."""
    make = lambda: entry.tf_style(4, INPUT_DEPTH)  # noqa: E731
    cell = make()
    assert engine.explain(cell.to(dtype), torch.zeros(T, B, INPUT_DEPTH, dtype=dtype), reasons=True)[0].startswith(
        "fused: compiled"
    )
    _cell_case(make, dtype, torch.tensor([5, 5, 3]), 1)


LAYERS = {
    "lstm_2_layers": lambda: rnnkit.LSTM(INPUT_DEPTH, 4, num_layers=2),
    "lstm_proj": lambda: rnnkit.LSTM(INPUT_DEPTH, 5, proj_size=3),
    "lstm_peep_clip": lambda: rnnkit.LSTM(INPUT_DEPTH, 4, peepholes=True, cell_clip=0.5, forget_bias=1.0),
    "lstm_layer_norm": lambda: rnnkit.LSTM(INPUT_DEPTH, 4, layer_norm=True),
    "gru": lambda: rnnkit.GRU(INPUT_DEPTH, 4, num_layers=2),
    "gru_reset_before_bi": lambda: rnnkit.GRU(INPUT_DEPTH, 4, reset_after=False, bidirectional=True),
    "rnn_relu": lambda: rnnkit.RNN(INPUT_DEPTH, 4, nonlinearity="relu"),
    "gru_zoneout": lambda: rnnkit.GRU(INPUT_DEPTH, 4, zoneout=0.3),  # compiled, with draws in training
}


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("lengths", [None, [5, 3, 1]], ids=["full", "lengths"])
@pytest.mark.parametrize("case", sorted(LAYERS))
def test_layers_low_precision(case, lengths, dtype):
    """rnnkit.LSTM/GRU/RNN in the low dtype, training, fused (the whole-stack fused path on full sequences):
    outputs, final states and gradients of the parameters in their own dtype."""
    low, ref = _pair(LAYERS[case](), dtype)
    lengths = None if lengths is None else torch.tensor(lengths)
    x_low, x_ref = _inputs(dtype, INPUT_DEPTH)
    torch.manual_seed(1)
    y, hidden = low(x_low, lengths=lengths)
    torch.manual_seed(1)
    with engine.use("reference"):
        y_ref, hidden_ref = ref(x_ref, lengths=lengths)
    hidden, hidden_ref = flatten(hidden), flatten(hidden_ref)
    layers = low.num_layers
    u = UNIT[dtype]
    assert y.dtype == dtype and all(h.dtype == dtype for h in hidden)
    _close(y, y_ref, 2 * layers * u, "outputs")
    for h, h_ref in zip(hidden, hidden_ref, strict=True):
        _close(h, h_ref, 2 * layers * u, "final state")
    g = torch.randn(y_ref.shape)
    ((y.float() * g).sum() + sum(h.float().sum() for h in hidden)).backward()
    ((y_ref * g).sum() + sum(h.sum() for h in hidden_ref)).backward()
    _check_grads(low, ref, (x_low, x_ref), 4 * (layers + 1) * u)


def test_explain_says_fused_for_low_precision():
    x = torch.randn(T, B, INPUT_DEPTH)
    for dtype in LOW:
        for make in (lambda: rnnkit.GRUCell(4), lambda: rnnkit.LSTMCell(4, num_proj=2, use_peepholes=True),
                     lambda: rnnkit.LayerNormBasicLSTMCell(4), lambda: rnnkit.BasicRNNCell(4)):  # fmt: skip
            cell = make()
            cell.build(INPUT_DEPTH)
            assert engine.explain(cell.to(dtype), x.to(dtype)) == ["fused"]
    stack = rnnkit.GRU(INPUT_DEPTH, 4, num_layers=2).bfloat16()
    assert route(stack.engine_stack(), x.bfloat16(), None) == "fused"


@pytest.mark.parametrize("train", [False, True], ids=["inference", "training"])
def test_bf16_lstm_above_fused_max_batch_is_torch_nn(train):
    """bf16 LSTM without projection or lengths above FUSED_MAX_BATCH rows runs torch's kernel (oneDNN, faster in
    bf16 in training too: the numbers in ``route``): torch.nn.LSTM's results bit for bit, gradients included."""
    batch = FUSED_MAX_BATCH + 1
    tn = torch.nn.LSTM(INPUT_DEPTH, 6, num_layers=2).bfloat16()
    rk = rnnkit.LSTM(INPUT_DEPTH, 6, num_layers=2).bfloat16()
    rk.load_state_dict(tn.state_dict())
    x = torch.randn(T, batch, INPUT_DEPTH).bfloat16()
    with torch.set_grad_enabled(train):
        assert torch_whole_stack(rk, x)
        assert not torch_whole_stack(rk, x[:, :FUSED_MAX_BATCH])  # 1-4 rows: the fused kernels
        y, (h, c) = rk(x)
        y_t, (h_t, c_t) = tn(x)
    for got, want in ((y, y_t), (h, h_t), (c, c_t)):
        assert got.dtype == torch.bfloat16 and torch.equal(got, want)
    if train:
        y.float().sum().backward()
        y_t.float().sum().backward()
        for p, q in zip(rk.parameters(), tn.parameters(), strict=True):
            assert torch.equal(p.grad, q.grad)


def test_float16_lstm_stays_fused_at_any_batch():
    """torch's CPU half LSTM is its native loop, slower than the fused kernels' float32 compute."""
    cell = rnnkit.BasicLSTMCell(4, input_size=INPUT_DEPTH).half()
    with torch.no_grad():
        assert engine.explain(cell, torch.randn(T, 16, INPUT_DEPTH).half()) == ["fused"]

