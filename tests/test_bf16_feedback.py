"""A state returned under ``torch.autocast("cpu", dtype=torch.bfloat16)`` fed back: rnnkit follows torch.nn.

torch.nn takes ``h_0``/``c_0`` in bf16, fp16 or float32 under CPU autocast (``rnnkit.engine.autocast`` has the
measured table): its oneDNN LSTM and its RNNs return the autocast dtype whatever the state's, its native loops (a
packed LSTM, a projection's ``c``, GRU) carry the state in ``promote_types(low, dtype given)``. Outside autocast
it refuses a bf16 state with float32 parameters (``RuntimeError``); rnnkit raises ``DtypeError``, a ``RuntimeError``.

**Layers against torch.nn**, same weights, a sequence in three chunks, each module fed its own returned state:
dtypes exactly torch.nn's at every chunk. Values within ``test_bf16_autocast``'s bound, ``4 * L * u`` of the
largest magnitude (``u = 2^-8``): torch multiplies bf16-rounded operands and, where it carries a bf16 state, rounds
it every step; rnnkit computes in float32 and rounds once per chunk; both round the state handed back identically
in kind (the contracting step keeps the differences from growing, as within one chunk; measured: at most 0.4 of
the bound).

**TF runners against the float32 reference loop** run chunk by chunk, its state rounded at each chunk boundary to
the dtypes the table gives (what rnnkit hands back): the two differ by the one final rounding, within ``2u``.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnkit
from rnnkit import engine
from rnnkit._structure import flatten, map_structure
from rnnkit.errors import DtypeError
from test_bf16_autocast import U, _close

BF16, F16, F32 = torch.bfloat16, torch.float16, torch.float32
CHUNK, CHUNKS, FEATURES, HIDDEN = 3, 3, 4, 6

LAYERS = {
    "lstm": ("LSTM", {}),
    "lstm_proj": ("LSTM", {"proj_size": 3}),
    "lstm_2_layers_bi": ("LSTM", {"num_layers": 2, "bidirectional": True}),
    "gru_2_layers": ("GRU", {"num_layers": 2}),
    "rnn_tanh": ("RNN", {}),
    "rnn_relu_bi": ("RNN", {"nonlinearity": "relu", "bidirectional": True}),
}
ignore_proj_warning = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")


def _pair(case: str, batch_first: bool = False) -> tuple[torch.nn.Module, torch.nn.Module]:
    name, options = LAYERS[case]
    tn = getattr(torch.nn, name)(FEATURES, HIDDEN, batch_first=batch_first, **options)
    rk = getattr(rnnkit, name)(FEATURES, HIDDEN, batch_first=batch_first, **options)
    rk.load_state_dict(tn.state_dict())
    return tn, rk


def _out(out: Any) -> torch.Tensor:
    return out.data if isinstance(out, PackedSequence) else out


def _check_chunks(
    tn: torch.nn.Module, rk: torch.nn.Module, chunks: list, layers: int, low: torch.dtype = BF16, start: Any = None
) -> None:
    """Run ``chunks`` (inputs or PackedSequences) through torch.nn and rnnkit under autocast to ``low`` from ``start``,
    each fed its own returned state, and through torch.nn in float32 from the state rounded as torch.nn hands it back:
    dtypes exactly torch.nn's, values within 2u of the float32 reference and within 8Lu of torch.nn under autocast."""
    state_t = state_r = start
    state_f = None if start is None else map_structure(lambda t: t.float(), start)
    for k, chunk in enumerate(chunks):
        with torch.autocast("cpu", dtype=low):
            out_t, state_t = tn(chunk, state_t)
            out_r, state_r = rk(chunk, state_r)
        with torch.autocast("cpu", enabled=False):
            out_f, state_f = tn(chunk, state_f)
        runs = ((out_r, state_r), (out_t, state_t), (out_f, state_f))
        got, want, ref = ([_out(out), *flatten(state)] for out, state in runs)
        assert [t.dtype for t in got] == [t.dtype for t in want], f"chunk {k}: (outputs, h_n[, c_n]) dtypes"
        for i, (g, w, r) in enumerate(zip(got, want, ref, strict=True)):
            what = f"chunk {k} {('outputs', 'h_n', 'c_n')[i]}"
            _close(g, r, 2 * unit(low), f"{what} against float32")
            _close(g, w, 8 * layers * unit(low), f"{what} against torch.nn under autocast")
        state_f = map_structure(lambda f, t: f.to(t.dtype).float(), state_f, state_t)


def unit(low: torch.dtype) -> float:
    """The unit roundoff of ``low``: 2^-8 for bfloat16 (``test_bf16_autocast.U``), 2^-11 for float16."""
    return U if low is BF16 else 2.0**-11


@ignore_proj_warning
@pytest.mark.parametrize("layout", ["padded", "packed", "batch_first", "unbatched"])
@pytest.mark.parametrize("case", sorted(LAYERS))
def test_layer_fed_its_autocast_state_follows_torch_nn(case, layout):
    """Three chunks under bf16 autocast, the returned state fed back, in inference and with autograd: torch.nn's
    dtypes, values within 2u of float32 and 8Lu of torch.nn. Batch 3 (the fused kernels) and, one direction, 8
    (torch's oneDNN LSTM route in inference; bidirectional, oneDNN builds a primitive per call for a bf16 state:
    0.2 s, in torch.nn as well)."""
    tn, rk = _pair(case, batch_first=layout == "batch_first")
    options = LAYERS[case][1]
    batches = (1,) if layout == "unbatched" else (3,) if options.get("bidirectional") else (3, 8)
    for grad, batch in [(grad, batch) for grad in (False, True) for batch in batches]:
        x = torch.randn(CHUNK * CHUNKS, batch, FEATURES)
        pieces = list(x.split(CHUNK))
        if layout == "packed":
            lengths = [CHUNK] + [CHUNK - 1] * (batch - 1)
            pieces = [pack_padded_sequence(p, lengths) for p in pieces]
        elif layout == "batch_first":
            pieces = [p.transpose(0, 1) for p in pieces]
        elif layout == "unbatched":
            pieces = [p[:, 0] for p in pieces]
        with torch.set_grad_enabled(grad):
            _check_chunks(tn, rk, pieces, options.get("num_layers", 1))


# (h_0, c_0) dtypes given under bf16 autocast: mixed as an LSTM with a projection returns them, the other low dtype
STARTS = {"bf16_f32": (BF16, F32), "f32_bf16": (F32, BF16), "fp16_fp16": (F16, F16)}


@ignore_proj_warning
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("proj", [0, 3], ids=["no_proj", "proj"])
@pytest.mark.parametrize("start", sorted(STARTS))
def test_lstm_from_mixed_low_states_follows_torch_nn(start, proj, packed):
    """torch.nn's native loop carries ``c`` in ``promote_types(bf16, c_0.dtype)`` (float32 from a float32 or fp16
    ``c_0``), its oneDNN LSTM returns bf16 whatever came: rnnkit the same, over three chunks, with autograd."""
    tn = torch.nn.LSTM(FEATURES, HIDDEN, proj_size=proj)
    rk = rnnkit.LSTM(FEATURES, HIDDEN, proj_size=proj)
    rk.load_state_dict(tn.state_dict())
    h_dtype, c_dtype = STARTS[start]
    h0, c0 = torch.randn(1, 3, proj or HIDDEN).to(h_dtype), torch.randn(1, 3, HIDDEN).to(c_dtype)
    pieces = list(torch.randn(CHUNK * CHUNKS, 3, FEATURES).split(CHUNK))
    if packed:
        pieces = [pack_padded_sequence(p, [CHUNK, CHUNK, 1]) for p in pieces]
    _check_chunks(tn, rk, pieces, 1, start=(h0, c0))


@pytest.mark.parametrize("case", ["lstm", "gru_2_layers"])
def test_float16_autocast_feedback_follows_torch_nn(case):
    """Under float16 autocast (inference: torch.nn's oneDNN LSTM has no fp16 training here) the same, within the
    bounds in fp16's unit roundoff 2^-11."""
    tn, rk = _pair(case)
    pieces = list(torch.randn(CHUNK * CHUNKS, 3, FEATURES).split(CHUNK))
    with torch.no_grad():
        _check_chunks(tn, rk, pieces, LAYERS[case][1].get("num_layers", 1), F16)


STEP_LAYERS = ["lstm", "lstm_proj", "gru_2_layers", "rnn_tanh"]


@ignore_proj_warning
@pytest.mark.parametrize("case", STEP_LAYERS)
def test_step_and_stream_under_autocast_follow_torch_nn(case):
    """``layer.step(x_t, state)`` and ``layer.stream(batch)`` frame by frame under bf16 autocast, each fed its state,
    in inference and with autograd: torch.nn's dtypes of one-step calls fed theirs, values within 8Lu of them (as
    sequences in chunks of one)."""
    tn, rk = _pair(case)
    rk.eval()
    layers = LAYERS[case][1].get("num_layers", 1)
    x = torch.randn(4, 3, FEATURES)
    for grad in (False, True):
        state_t = state_r = None
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=BF16), rk.stream(3) as s:
            for t in range(x.shape[0]):
                out_t, state_t = tn(x[t : t + 1], state_t)
                out_r, state_r = rk.step(x[t], state_r)
                out_s = s(x[t])
                want = [out_t[0], *flatten(state_t)]
                for got in ([out_r, *flatten(state_r)], [out_s, *flatten(s.state)]):
                    assert [g.dtype for g in got] == [w.dtype for w in want], f"frame {t} dtypes"
                    for g, w in zip(got, want, strict=True):
                        _close(g, w, 8 * layers * U, f"frame {t}")


@ignore_proj_warning
@pytest.mark.parametrize("case", ["lstm", "lstm_proj", "gru_2_layers", "rnn_relu_bi"])
def test_low_states_outside_autocast_refused_as_torch_nn(case):
    """Outside autocast a bf16 state with float32 parameters: torch.nn raises RuntimeError (from oneDNN or a matmul);
    rnnkit a DtypeError (a RuntimeError) naming the state, in forward, step and stream. A float64 state under
    autocast: RuntimeError on both sides."""
    tn, rk = _pair(case)
    x = torch.randn(2, 3, FEATURES)
    _, state = rk(x)
    low = map_structure(lambda t: t.to(BF16), state)
    wide = map_structure(lambda t: t.double(), state)
    name = "h_0" if isinstance(state, tuple) else "hx"
    with pytest.raises(RuntimeError):
        tn(x, low)
    with pytest.raises(DtypeError, match=f"{name} has dtype torch.bfloat16.*only under torch.autocast"):
        rk(x, low)
    if not rk.bidirectional:
        with pytest.raises(DtypeError, match=name):
            rk.step(x[0], low)
        with pytest.raises(DtypeError, match=name), rk.stream(3, low) as s:
            s(x[0])
    with torch.autocast("cpu", dtype=BF16):
        with pytest.raises(RuntimeError):
            tn(x, wide)
        with pytest.raises(DtypeError, match=f"{name} has dtype torch.float64"):
            rk(x, wide)


# (cell factory, its state's dtypes in flatten order under bf16 autocast on full sequences, and with lengths: the
# table; feeding them back keeps them: each is its family's fixed point of ``leaf_dtypes``)
CELLS = {
    "multi_lstm": (lambda: rnnkit.MultiRNNCell([rnnkit.LSTMCell(5), rnnkit.LSTMCell(4)]), [BF16] * 4, [F32] * 4),
    "gru": (lambda: rnnkit.GRUCell(5), [F32], [F32]),
    "multi_mixed": (
        lambda: rnnkit.MultiRNNCell([rnnkit.LSTMCell(5, num_proj=3), rnnkit.GRUCell(4), rnnkit.BasicRNNCell(4)]),
        [F32, BF16, F32, BF16],  # (c, h) of the projected LSTM, GRU's h, RNN's h
        [F32, BF16, F32, BF16],
    ),
}
RUNS = [
    ("dynamic_rnn", None),
    ("dynamic_rnn", [CHUNK, 2]),
    ("static_rnn", None),
    ("bidirectional_dynamic_rnn", [CHUNK, 2]),
]


def _run(runner: str, cell: Any, twin: Any, x: torch.Tensor, state: Any, lengths: Any) -> tuple[torch.Tensor, Any]:
    """One chunk ``x (B, T, D)`` through ``runner`` -> (outputs (B, T, O), state); bidirectional: ``twin`` runs the
    reversed chunk from the same state, its outputs concatenated."""
    if runner == "dynamic_rnn":
        return rnnkit.dynamic_rnn(cell, x, sequence_length=lengths, initial_state=state)
    if runner == "static_rnn":
        outs, state = rnnkit.static_rnn(cell, list(x.unbind(1)), initial_state=state, sequence_length=lengths)
        return torch.stack(outs, 1), state
    (fw, bw), (state, _) = rnnkit.bidirectional_dynamic_rnn(
        cell, twin, x, sequence_length=lengths, initial_state_fw=state, initial_state_bw=state
    )
    return torch.cat([fw, bw], -1), state


@pytest.mark.parametrize("runner, lengths", RUNS, ids=[f"{r}-{'lengths' if n else 'full'}" for r, n in RUNS])
@pytest.mark.parametrize("case", sorted(CELLS))
def test_runner_fed_its_autocast_state(case, runner, lengths):
    """Three chunks under bf16 autocast, the returned state fed back as initial_state: the table's dtypes at every
    chunk, values within 2u of the float32 reference loop run chunk by chunk from the state rounded as rnnkit hands
    it back (the one final rounding apart)."""
    make, full, ragged = CELLS[case]
    cell, twin = make(), make()
    cell.build(3)
    twin.build(3)
    ref, ref_twin = copy.deepcopy(cell), copy.deepcopy(twin)
    x = torch.randn(2, CHUNK * CHUNKS, 3)
    state = state_ref = None
    for k, chunk in enumerate(x.split(CHUNK, dim=1)):
        with torch.autocast("cpu", dtype=BF16):
            out, state = _run(runner, cell, twin, chunk, state, lengths)
        with engine.use("reference"):
            out_ref, state_ref = _run(runner, ref, ref_twin, chunk, state_ref, lengths)
        assert [s.dtype for s in flatten(state)] == (full if lengths is None else ragged), f"chunk {k} dtypes"
        _close(out, out_ref, 2 * U, f"chunk {k} outputs")
        for s, s_ref in zip(flatten(state), flatten(state_ref), strict=True):
            _close(s, s_ref, 2 * U, f"chunk {k} state")
        state_ref = map_structure(lambda r, s: r.to(s.dtype).float(), state_ref, state)


def test_runners_native_loops_keep_a_low_state():
    """A bf16 state into a native loop stays bf16 (torch.nn's packed LSTM and GRU from a bf16 state: promote(bf16,
    bf16)): an LSTM stack's full-sequence state fed to a chunk with lengths, a bf16 state to a GRU; values within 2u
    of the float32 reference from the same (widened) state. And a direct ``cell(x_t, state)`` call takes it."""
    lstm, gru = CELLS["multi_lstm"][0](), rnnkit.GRUCell(5)
    x = torch.randn(2, 2 * CHUNK, 3)
    with torch.autocast("cpu", dtype=BF16):
        _, state = rnnkit.dynamic_rnn(lstm, x[:, :CHUNK])
        h0 = torch.randn(2, 5).to(BF16)
        runs = [(lstm, state, [CHUNK, 1]), (gru, h0, None)]
        results = [rnnkit.dynamic_rnn(c, x[:, CHUNK:], sequence_length=n, initial_state=s) for c, s, n in runs]
        stepped = lstm(x[:, 0], results[0][1])
    for (cell, start, lengths), (out, final) in zip(runs, results, strict=True):
        assert out.dtype == BF16 and all(s.dtype == BF16 for s in flatten(final))
        with engine.use("reference"):
            widened = map_structure(lambda t: t.float(), start)
            out_ref, final_ref = rnnkit.dynamic_rnn(cell, x[:, CHUNK:], sequence_length=lengths, initial_state=widened)
        _close(out, out_ref, 2 * U, "outputs")
        for s, s_ref in zip(flatten(final), flatten(final_ref), strict=True):
            _close(s, s_ref, 2 * U, "state")
    assert stepped[0].dtype == BF16


def test_runner_low_state_outside_autocast_refused():
    """Outside autocast a bf16 initial_state with float32 parameters is a DtypeError (torch.nn: RuntimeError)."""
    cell = rnnkit.GRUCell(5)
    with pytest.raises(DtypeError, match="initial_state has dtype torch.bfloat16.*only under torch.autocast"):
        rnnkit.dynamic_rnn(cell, torch.randn(2, 3, 3), initial_state=torch.zeros(2, 5, dtype=BF16))
