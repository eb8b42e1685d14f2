"""Packed frames (``csrc/frame.cpp``): split over threads, and in bfloat16.

References and tolerances:

* split frames: the layer's own ``forward`` on the whole sequence, as in ``test_streaming.py`` (float32 to 1e-6);
  the split is forced at these small sizes (``set_min_step_work(1)``, no one-core budget), and each case checks
  that its plan really has several chunks;
* a bf16 stream (``layer.stream``) carries float32 states between frames and rounds each layer's output once, as the
  sequence path does (``engine/precision.py``): its outputs equal the bf16 ``forward``'s to one bf16 rounding
  (relative 2^-8 of the value, 2u) -- both compute the same float32 numbers but for the summation order of the
  multiplies (about 1e-7 relative), which can move a value across a rounding boundary;
* a bf16 ``step()`` takes and returns bf16 states (torch.nn's dtypes): each call equals the float32 frame of the same
  bf16 values (the model widened with ``.float()``, the bf16 input and state widened), rounded once: to 2u again.
"""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit.engine import frame as frame_module
from rnnkit.engine.extension import load
from rnnkit.errors import DtypeError, NotATensorError, ShapeError
from rnnkit.layers.stream import stack_frame_plan

STEPS, BATCH = 5, 3
U_BF16 = 2.0**-8  # bf16's unit roundoff (8 significant bits)

# name: (class, hidden_size, options), two layers over 6 input features
LAYERS = {
    "lstm": (rnnkit.LSTM, 24, {}),
    "lstm_proj_peepholes": (rnnkit.LSTM, 32, {"proj_size": 16, "peepholes": True, "cell_clip": 0.8}),
    "gru": (rnnkit.GRU, 40, {}),
    "gru_reset_before": (rnnkit.GRU, 24, {"reset_after": False}),
    "rnn": (rnnkit.RNN, 16, {"nonlinearity": "relu"}),
}


def _layer(name: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(7)
    cls, hidden, options = LAYERS[name]
    layer = cls(6, hidden, num_layers=2, **options).eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer.to(dtype)


def _single_layers(name: str, layer: torch.nn.Module) -> list[torch.nn.Module]:
    """``layer``'s two layers as one-layer layers of the same values and dtype."""
    cls, hidden, options = LAYERS[name]
    out = []
    for k, size in enumerate((6, options.get("proj_size") or hidden)):
        one = cls(size, hidden, **options).eval()
        weights = {n.replace(f"_l{k}", "_l0"): p for n, p in layer.state_dict().items() if f"_l{k}" in n}
        one.load_state_dict(weights)
        out.append(one.to(layer.weight_ih_l0.dtype))
    return out


def _within_bf16(got: torch.Tensor, want: torch.Tensor) -> None:
    """|got - want| <= 2u |want| (+ 2u of the largest value, for values rounded near zero)."""
    got, want = got.float(), want.float()
    bound = 2 * U_BF16 * (want.abs() + want.abs().max() * 2**-8)
    assert got.dtype == want.dtype and torch.all((got - want).abs() <= bound), (got - want).abs().max()


def _parts(state) -> tuple:
    return state if isinstance(state, tuple) else (state,)


@pytest.fixture
def split_frames(monkeypatch):
    """Frames split into several chunks of units at any size (and two threads)."""
    ops = load()
    assert ops is not None, "the compiled kernels are needed here"
    monkeypatch.setattr(frame_module, "core_cache_bytes", lambda: 0)
    previous, threads = ops.set_min_step_work(1), torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    yield
    ops.set_min_step_work(previous)
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(LAYERS))
def test_split_frames_equal_forward(name, split_frames):
    layer = _layer(name)
    x = torch.randn(STEPS, BATCH, 6)
    with torch.no_grad(), layer.stream(BATCH) as s:
        got = torch.stack([s(x_t) for x_t in x])
        want, state = layer(x)
    plan = stack_frame_plan(layer.engine_stack())
    weights, desc, _ = plan.arguments(True)
    assert s.path == "frame" and any(w.dtype == torch.float32 and w.dim() == 1 for w in weights)
    starts = [0, len(desc) // 2]  # (two layers of one family: equal descriptions)
    chunks = [desc[i + (5 if desc[i] == 10 else 2)] for i in starts]
    assert min(chunks) > 1, desc
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    for g, w in zip(_parts(s.state), _parts(state), strict=True):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6)


def test_a_stack_within_half_a_core_cache_runs_on_one_core():
    """The whole stack's weights within half a core's L2: one chunk per multiply (no meeting of threads)."""
    load()
    plan = stack_frame_plan(rnnkit.LSTM(8, 64, num_layers=2).eval().engine_stack())
    assert sum(p.numel() * 4 for p in plan.params) <= frame_module.core_cache_bytes() // 2
    desc = plan.arguments(True)[1]
    assert desc[0] == 10 and desc[5:7] == [1, 1] and desc[7] == 10 and desc[12:14] == [1, 1], desc


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("name", list(LAYERS))
def test_bf16_stream_equals_the_bf16_forward(name, split, request):
    if split:
        request.getfixturevalue("split_frames")
    layer = _layer(name, torch.bfloat16)
    x = torch.randn(STEPS, BATCH, 6).bfloat16()
    with torch.no_grad(), layer.stream(BATCH) as s:
        got = torch.stack([s(x_t) for x_t in x])
        want, state = layer(x)
    assert s.path == "frame" and got.dtype == torch.bfloat16
    _within_bf16(got, want)
    for g, w in zip(_parts(s.state), _parts(state), strict=True):
        assert g.dtype == torch.bfloat16
        _within_bf16(g, w)


@pytest.mark.parametrize("name", list(LAYERS))
def test_bf16_step_is_the_sequence_kernels_step_of_each_layer(name):
    """Reference: each layer a one-layer bf16 layer of the same values, run by the sequence kernels over a sequence
    of one step (float32 sums of bf16 operands, engine.precision), its output and state rounded to bf16 (what the
    bf16 step returns, and the next layer's input)."""
    layer = _layer(name, torch.bfloat16)
    singles = _single_layers(name, layer)
    x = torch.randn(STEPS, BATCH, 6).bfloat16()
    state, wants = None, [None, None]
    with torch.inference_mode():
        for x_t in x:
            y, state = layer.step(x_t, state)
            inp = x_t
            for k, one in enumerate(singles):
                given = wants[k]
                out, next_state = one(inp.unsqueeze(0), given[0] if given and len(given) == 1 else given)
                assert out.dtype == torch.bfloat16
                wants[k] = _parts(next_state)
                inp = out[0]
            assert y.dtype == torch.bfloat16
            _within_bf16(y, inp)
            parts = _parts(state)
            for j, part in enumerate(parts):
                assert part.dtype == torch.bfloat16
                _within_bf16(part, torch.cat([w[j] for w in wants]))
            state = tuple(torch.cat([w[j] for w in wants]) for j in range(len(parts)))  # (the reference's own)
            state = state[0] if len(state) == 1 else state


def test_bf16_frames_need_every_layer_packed_and_versioned_weights():
    """An odd width, a layer-norm LSTM (unpacked families take float32/float64) and weights made under
    inference_mode (no version to follow: re-packing every frame would copy the weights) take the sequence path."""
    x = torch.randn(BATCH, 6).bfloat16()
    for make in (lambda: rnnkit.GRU(6, 20), lambda: rnnkit.LSTM(6, 16, layer_norm=True)):
        layer = make().eval().bfloat16()
        with torch.no_grad(), layer.stream(BATCH) as s:
            y = s(x)
            want, _ = layer(x.unsqueeze(0))
        assert s.path == "sequence"
        torch.testing.assert_close(y, want[0], atol=0, rtol=0)
    with torch.inference_mode():
        layer = rnnkit.GRU(6, 16).eval().bfloat16()
        with layer.stream(BATCH) as s:
            s(x)
    assert s.path == "sequence"


def test_under_autocast_a_step_gives_forwards_dtypes():
    """Under CPU autocast a frame is not taken: the sequence path gives torch.nn's dtypes (engine/autocast.py)."""
    layer = rnnkit.LSTM(6, 16).eval()
    x = torch.randn(BATCH, 6)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = layer.step(x)
        want, _ = layer(x.unsqueeze(0))
        with layer.stream(BATCH) as s:
            s(x)
    assert y.dtype == want.dtype == torch.bfloat16 and s.path == "sequence"
    torch.testing.assert_close(y, want[0], atol=0, rtol=0)


def test_a_step_placed_as_before_still_refuses_what_forward_refuses():
    """The unchecked step (``checked_step``) runs only calls shaped exactly as the last framed one: anything else
    takes ``step``'s checks and their errors (here: a GRU's state given as a 1-tuple, a wrong width, a float64 x)."""
    gru = rnnkit.GRU(6, 8).eval()
    x = torch.randn(BATCH, 6)
    with torch.no_grad():
        _, h = gru.step(x)
        _, h = gru.step(x, h)  # (placed as before: the unchecked path)
        with pytest.raises(NotATensorError):
            gru.step(x, (h,))
        with pytest.raises(ShapeError):
            gru.step(torch.randn(BATCH, 5), h)
        with pytest.raises(DtypeError):
            gru.step(x.double(), h)
