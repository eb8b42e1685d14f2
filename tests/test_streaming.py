"""Streaming (issue 14): ``layer.step``, ``layer.stream`` and a TF cell called per frame equal the whole sequence.

Reference: the layer's own ``forward`` over the whole sequence (the engine's sequence path, itself tested against
torch.nn and the reference loop elsewhere) and, for TF cells, the same per-frame calls under
``engine.use("reference")`` (``cell.call``, the oracle). Float32 outputs and states agree to 1e-6 (the frame's
multiplies sum in another order than the sequence's: about 1e-7 per step at these sizes), float64 to 1e-12. Every
case also asserts that the frame path ran (``path == "frame"``, or a count of kernel calls), so that no test
compares the sequence path with itself.
"""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit import engine
from rnnkit._structure import flatten
from rnnkit.engine import frame as frame_module
from rnnkit.errors import DtypeError, NotATensorError, ShapeError
from rnnkit.layers.stream import stack_frame_plan
from test_roundtrip_all_options import LAYER_CASES, _build_layer, _case_id

TOL = {torch.float32: 1e-6, torch.float64: 1e-12}
STEPS, BATCH = 6, 3


def _close(got, want, dtype=torch.float32) -> None:
    for g, w in zip(flatten(got), flatten(want), strict=True):
        torch.testing.assert_close(g, w, atol=TOL[dtype], rtol=TOL[dtype])


def _frames(case) -> bool:
    """Whether this layer's step runs as a frame: every option but zoneout (a compiled cell) lowers to a family."""
    return not case[1].get("zoneout")


ONE_DIRECTION = [c for c in LAYER_CASES if not c[1].get("bidirectional")]


@pytest.mark.parametrize("case", ONE_DIRECTION, ids=_case_id)
def test_stream_and_step_equal_forward(case):
    torch.manual_seed(0)
    layer = _build_layer(case).eval()
    x = torch.randn(STEPS, BATCH, layer.input_size)
    with torch.no_grad():
        want, want_state = layer(x.transpose(0, 1) if layer.batch_first else x)
        want = want.transpose(0, 1) if layer.batch_first else want
        with layer.stream(BATCH) as s:
            got = torch.stack([s(x_t) for x_t in x])
        state = None
        stepped = []
        for x_t in x:
            y, state = layer.step(x_t, state)
            stepped.append(y)
    assert s.path == ("frame" if _frames(case) else "sequence")
    _close(got, want)
    _close(s.state, want_state)
    _close(torch.stack(stepped), want)
    _close(state, want_state)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_stream_from_a_given_state_unbatched_and_in_float64(kind, dtype):
    torch.manual_seed(1)
    layer = getattr(rnnkit, kind)(5, 7, num_layers=3).to(dtype).eval()
    x = torch.randn(STEPS, 5, dtype=dtype)  # unbatched: (T, I)
    parts = [torch.randn(3, 7, dtype=dtype) for _ in range(2 if kind == "LSTM" else 1)]
    h0 = tuple(parts) if kind == "LSTM" else parts[0]
    with torch.inference_mode():
        want, want_state = layer(x, h0)
        state, ys = h0, []
        for x_t in x:
            y, state = layer.step(x_t, state)
            ys.append(y)
        with layer.stream(1, hx=tuple(p.unsqueeze(1) for p in parts) if kind == "LSTM" else parts[0].unsqueeze(1)) as s:
            streamed = torch.stack([s(x_t.unsqueeze(0))[0] for x_t in x])
    assert s.path == "frame"
    _close(torch.stack(ys), want, dtype)
    _close(state, want_state, dtype)
    _close(streamed, want, dtype)


def _tf_cases():
    i = 4
    return {
        "lstm_full": lambda: rnnkit.LSTMCell(6, use_peepholes=True, cell_clip=0.8, num_proj=3, proj_clip=0.6,
                                             input_size=i),  # fmt: skip
        "basic_lstm_concat": lambda: rnnkit.BasicLSTMCell(5, forget_bias=0.5, state_is_tuple=False, input_size=i),
        "gru": lambda: rnnkit.GRUCell(5, input_size=i),
        "rnn_relu": lambda: rnnkit.BasicRNNCell(5, activation="relu", input_size=i),
        "layer_norm_lstm": lambda: rnnkit.LayerNormBasicLSTMCell(6, input_size=i),
        "multi": lambda: rnnkit.MultiRNNCell(
            [rnnkit.LSTMCell(6, input_size=i), rnnkit.GRUCell(5, input_size=6), rnnkit.BasicRNNCell(3, input_size=5)]
        ),
        "multi_concat": lambda: rnnkit.MultiRNNCell(
            [
                rnnkit.BasicLSTMCell(4, state_is_tuple=False, input_size=i),
                rnnkit.LSTMCell(3, state_is_tuple=False, input_size=4),
            ],
            state_is_tuple=False,
        ),
    }


class _Counting:
    """Counts the frame kernel's calls (the frame path ran) and passes them on."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = frame_module.FramePlan.__call__

        def counted(plan, x, states):
            self.calls += 1
            return real(plan, x, states)

        monkeypatch.setattr(frame_module.FramePlan, "__call__", counted)


def _frames_equal_the_reference_steps(cell, batch: int, monkeypatch) -> None:
    """``cell(x_t, state)`` per frame (each one frame kernel call) equals the same calls of ``cell.call``."""
    x = torch.randn(STEPS, batch, 4)
    counting = _Counting(monkeypatch)
    with torch.no_grad():
        state = want_state = cell.zero_state(batch, torch.float32)
        for x_t in x:
            y, state = cell(x_t, state)
        with engine.use("reference"):
            for x_t in x:
                want, want_state = cell(x_t, want_state)
    assert counting.calls == STEPS
    _close(y, want)
    _close(state, want_state)
    assert type(state) is type(want_state)


@pytest.mark.parametrize("name", list(_tf_cases()))
def test_tf_cell_per_frame_equals_the_reference_step(name, monkeypatch):
    torch.manual_seed(2)
    cell = _tf_cases()[name]()
    with torch.no_grad():
        for p in cell.parameters():
            p.add_(0.3 * torch.randn_like(p))
    _frames_equal_the_reference_steps(cell, BATCH, monkeypatch)


def test_tf_cell_in_training_with_autograd_runs_its_call(monkeypatch):
    cell = rnnkit.LSTMCell(5, input_size=4)
    counting = _Counting(monkeypatch)
    x = torch.randn(2, 4, requires_grad=True)
    y, _ = cell(x, cell.zero_state(2, torch.float32))
    y.sum().backward()
    assert counting.calls == 0 and x.grad is not None


def test_a_parameter_changed_between_frames_is_read_again():
    torch.manual_seed(3)
    layer = rnnkit.LSTM(4, 6, num_layers=2).eval()
    x = torch.randn(4, 1, 4)
    s = layer.stream(1)
    with torch.no_grad():
        s(x[0])
        s(x[1])
        before = tuple(t.clone() for t in s.state)
        layer.bias_ih_l1.add_(0.5)  # an optimizer step: same tensor, new version
        y = s(x[2])
        want, _ = layer(x[2:3], before)
    assert s.path == "frame"
    _close(y, want[0])
    other = rnnkit.LSTM(4, 6, num_layers=2)
    layer.load_state_dict(other.state_dict())
    with torch.no_grad():
        s.reset()
        got = torch.stack([s(x_t) for x_t in x])
        _close(got, layer(x)[0])
        layer.to(torch.float64)  # new storage, new dtype: the frame reads the new weights or refuses
        with pytest.raises(DtypeError):
            s(x[0])
        s.reset()
        got = torch.stack([s(x_t.double()) for x_t in x])
        _close(got, layer(x.double())[0], torch.float64)


def test_weights_made_under_inference_mode_are_read_every_frame():
    with torch.inference_mode():
        cell = rnnkit.BasicLSTMCell(5, input_size=3)  # built lazily on the first call: inference tensors
        state = cell.zero_state(1, torch.float32)
        x = torch.randn(1, 3)
        y1, _ = cell(x, state)
        cell.kernel.mul_(0.5)  # in place, no version counter to see it
        y2, _ = cell(x, state)
        with engine.use("reference"):
            want, _ = cell(x, state)
    _close(y2, want)
    assert not torch.equal(y1, y2)


def test_with_autograd_a_step_takes_the_sequence_path_and_differentiates():
    layer = rnnkit.GRU(3, 4, num_layers=2)
    x = torch.randn(2, 3, requires_grad=True)
    s = layer.stream(2)
    y = s(x)
    assert s.path == "sequence"
    y.sum().backward()
    want = torch.autograd.grad(layer(x.unsqueeze(0))[0].sum(), x)[0]
    torch.testing.assert_close(x.grad, want)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_other_backends_keep_their_path(backend):
    layer = rnnkit.LSTM(3, 4).eval()
    x = torch.randn(5, 2, 3)
    with torch.no_grad(), engine.use(backend):
        with layer.stream(2) as s:
            got = torch.stack([s(x_t) for x_t in x])
        want, _ = layer(x)
    assert s.path == "sequence"
    _close(got, want)


def test_the_twin_runs_frames_alike():
    layer = rnnkit.LSTM(3, 5, num_layers=2, proj_size=2).eval()
    x = torch.randn(4, 2, 3)
    with torch.no_grad():
        want, _ = layer(x)
        with engine.use(kernels="python"), layer.stream(2) as s:
            got = torch.stack([s(x_t) for x_t in x])
    assert s.path == "frame"
    _close(got, want)


def test_bad_frames_are_refused_with_the_layers_errors():
    layer = rnnkit.LSTM(3, 4)
    with pytest.raises(ValueError, match="bidirectional"):
        rnnkit.GRU(3, 4, bidirectional=True).stream(1)
    with pytest.raises(ValueError, match="batch must be a positive int"):
        layer.stream(0)
    s = layer.stream(2)
    with pytest.raises(ShapeError, match=r"expected x_t of shape \(batch, input_size\) = \(2, 3\), got \(2, 5\)"):
        s(torch.randn(2, 5))
    with pytest.raises(NotATensorError):
        s([1.0, 2.0, 3.0])
    with pytest.raises(DtypeError):
        s(torch.randn(2, 3, dtype=torch.float64))
    with pytest.raises(ShapeError, match="input_size"):
        layer.step(torch.randn(2, 5))
    with pytest.raises(ShapeError, match="Expected hidden"):
        layer.step(torch.randn(2, 3), (torch.zeros(1, 3, 4), torch.zeros(1, 2, 4)))
    with pytest.raises(DtypeError):
        layer.step(torch.randn(2, 3), (torch.zeros(1, 2, 4, dtype=torch.float64), torch.zeros(1, 2, 4)))


def test_the_frame_kernel_refuses_a_malformed_description():
    kern = engine._select.fused_kernels("cpu")
    x, w = torch.randn(1, 2), torch.randn(2, 2)
    with pytest.raises(RuntimeError, match="unknown family 7"):
        kern.frame_forward(x, [w, torch.empty(0), w], [torch.zeros(1, 2)], [7, 0], [])
    with pytest.raises(RuntimeError, match="fewer weights"):
        kern.frame_forward(x, [w], [torch.zeros(1, 2)], [3, 0], [])


PACKED_LAYERS = {
    "lstm": lambda: rnnkit.LSTM(5, 16, num_layers=2),
    "lstm_tf_options": lambda: rnnkit.LSTM(5, 16, num_layers=2, peepholes=True, cell_clip=0.7, forget_bias=0.5),
    "lstm_proj": lambda: rnnkit.LSTM(5, 24, num_layers=3, proj_size=8),
    "lstm_layer_norm_unpacked": lambda: rnnkit.LSTM(5, 16, num_layers=2, layer_norm=True),
    "gru": lambda: rnnkit.GRU(5, 16, num_layers=2),
    "gru_reset_before": lambda: rnnkit.GRU(5, 32, num_layers=2, reset_after=False),
    "gru_no_bias": lambda: rnnkit.GRU(5, 16, bias=False),
    "rnn_relu": lambda: rnnkit.RNN(5, 16, num_layers=2, nonlinearity="relu"),
    "rnn": lambda: rnnkit.RNN(5, 40),
}


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("name", list(PACKED_LAYERS))
def test_packed_frames_equal_forward(name, batch):
    """Widths of multiples of 8 run packed on the compiled kernels (desc ids 10, 12, 13; the layer-norm LSTM runs its
    family kernel), on one thread and two."""
    torch.manual_seed(4)
    layer = PACKED_LAYERS[name]().eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(STEPS, batch, 5)
    threads = torch.get_num_threads()
    for n in sorted({1, min(2, threads)}):
        torch.set_num_threads(n)
        try:
            with torch.no_grad(), layer.stream(batch) as s:
                got = torch.stack([s(x_t) for x_t in x])
                want, state = layer(x)
        finally:
            torch.set_num_threads(threads)
        plan = stack_frame_plan(layer.engine_stack())
        packed = bool(set(plan.arguments(True)[1]) & {10, 12, 13})
        assert s.path == "frame" and packed == (name != "lstm_layer_norm_unpacked")
        _close(got, want)
        _close(s.state, state)


@pytest.mark.parametrize("name", ["lstm_full16", "multi16"])
def test_packed_tf_cells_per_frame(name, monkeypatch):
    torch.manual_seed(5)
    cell = {
        "lstm_full16": lambda: rnnkit.LSTMCell(16, use_peepholes=True, cell_clip=0.8, num_proj=8, proj_clip=0.6,
                                               input_size=4),  # fmt: skip
        "multi16": lambda: rnnkit.MultiRNNCell(
            [rnnkit.BasicLSTMCell(16, input_size=4), rnnkit.GRUCell(24, input_size=16),
             rnnkit.BasicRNNCell(8, input_size=24)]
        ),  # fmt: skip
    }[name]()
    _frames_equal_the_reference_steps(cell, 2, monkeypatch)
