"""A bfloat16 or float16 *input* with float32 parameters under CPU ``torch.autocast``: rnnkit follows torch.nn.

torch.nn takes it (``nn.GRU(8, 16)(x.bfloat16(), h)`` under autocast; ``rnnkit.engine.autocast`` has the measured
table): its zeros are made in the input's dtype (a native loop carries ``promote_types(low, that)``), its oneDNN LSTM
takes a bf16 input always and an fp16 one outside grad mode only (else its native loop). Outside autocast it refuses
the input (``ValueError``, or a matmul's ``RuntimeError`` for a packed LSTM); rnnkit raises ``DtypeError``, both.

**Layers against torch.nn**, same weights, one call from zeros, a float32 or a bf16 state: dtypes exactly torch.nn's,
values within ``test_bf16_autocast``'s ``4 * L * u`` of torch.nn under autocast (torch rounds its operands to bf16,
rnnkit widens the input exactly and computes in float32) and within ``2u`` of torch.nn in float32 on the widened input
and state (the one rounding at the exit, ``u`` the autocast dtype's unit roundoff); gradients (the input's in its own
dtype, the parameters' in float32) within ``8 * L * u`` of torch.nn's in float32 (torch.nn's own under autocast
differ from those by O(1) for a ReLU RNN: its derivative jumps where bf16 operands move a sum across 0).

**TF runners** against the float32 reference loop on the widened input: the table's dtypes, within ``2u``. A direct
cell call computes with autocast's ops on the widened input (as torch.nn's cells do): within ``4u`` of float32.
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
from test_bf16_feedback import FEATURES, HIDDEN, LAYERS, RUNS, STEP_LAYERS, _out, _pair, _run, ignore_proj_warning, unit

BF16, F16, F32 = torch.bfloat16, torch.float16, torch.float32
STEPS = 4


def _state(tn: torch.nn.Module, batch: int | None, dtype: torch.dtype | None) -> Any:
    """A random initial state of ``tn`` (``None`` for zeros) in ``dtype``; ``batch`` ``None``: unbatched."""
    if dtype is None:
        return None
    stacked = tn.num_layers * (2 if tn.bidirectional else 1)
    rows = () if batch is None else (batch,)
    h = 0.5 * torch.randn(stacked, *rows, tn.proj_size or tn.hidden_size)
    if isinstance(tn, torch.nn.LSTM):
        return h.to(dtype), (0.5 * torch.randn(stacked, *rows, tn.hidden_size)).to(dtype)
    return h.to(dtype)


def _layout(x: torch.Tensor, layout: str) -> Any:
    """Time-major ``x (T, B, I)`` in ``layout``; packed: lengths T, T - 1, ..."""
    if layout == "packed":
        return pack_padded_sequence(x, [STEPS] + [STEPS - 1] * (x.shape[1] - 1))
    if layout == "batch_first":
        return x.transpose(0, 1)
    return x[:, 0] if layout == "unbatched" else x


def _call(module: torch.nn.Module, x: Any, state: Any, low: torch.dtype | None) -> tuple[Any, list]:
    with torch.autocast("cpu", dtype=low or F32, enabled=low is not None):
        out, final = module(x, state)
    return out, [_out(out), *flatten(final)]


def _widened(x: Any) -> Any:
    if isinstance(x, PackedSequence):
        return x._replace(data=x.data.float())
    return None if x is None else map_structure(lambda t: t.float(), x)


def _check_layer(tn, rk, x_low, state, layers: int, low: torch.dtype = BF16, grad: bool = False) -> None:
    """One call of ``tn`` and ``rk`` under autocast to ``low`` on the low-precision input ``x_low``: dtypes, values
    and (``grad``) the gradients of the input and the parameters."""
    leaf = (x_low.data if isinstance(x_low, PackedSequence) else x_low).detach().requires_grad_(grad)
    x = x_low._replace(data=leaf) if isinstance(x_low, PackedSequence) else leaf
    leaf_r = leaf.detach().clone().requires_grad_(grad)
    x_r = x_low._replace(data=leaf_r) if isinstance(x_low, PackedSequence) else leaf_r
    leaf_f = leaf.detach().float().requires_grad_(grad)
    x_f = x_low._replace(data=leaf_f) if isinstance(x_low, PackedSequence) else leaf_f
    with torch.set_grad_enabled(grad):
        try:
            _, want = _call(tn, x, state, low)
        except RuntimeError as err:  # torch.nn's packed bidirectional RNN meeting the other low dtype: its autocast
            assert "prioritize" in str(err) and isinstance(x, PackedSequence) and tn.mode.startswith("RNN_")
            want = None  # fails inside (at::autocast::prioritize); rnnkit runs it: the RNN's row of the table
        _, got = _call(rk, x_r, state, low)
        _, ref = _call(tn, x_f, _widened(state), None)
    want_dtypes = [low] * len(got) if want is None else [t.dtype for t in want]
    assert [t.dtype for t in got] == want_dtypes, "(outputs, h_n[, c_n]) dtypes"
    for i, (g, r) in enumerate(zip(got, ref, strict=True)):
        what = ("outputs", "h_n", "c_n")[i]
        if want is not None:
            _close(g, want[i], 4 * layers * unit(low), f"{what} against torch.nn under autocast")
        _close(g, r, 2 * unit(low), f"{what} against float32")
    if grad:  # (against float32: a ReLU's derivative jumps where torch's bf16 operands move a sum across 0)
        weights = [torch.randn(t.shape) for t in got]
        for results in (ref, got):
            sum((t.float() * w).sum() for t, w in zip(results, weights, strict=True)).backward()
        assert leaf_r.grad.dtype == leaf.dtype
        _close(leaf_r.grad, leaf_f.grad, 8 * layers * unit(low), "input gradient")
        for (name, p), q in zip(rk.named_parameters(), tn.parameters(), strict=True):
            assert p.grad.dtype == F32
            _close(p.grad, q.grad, 8 * layers * unit(low), f"gradient of {name}")
            p.grad = q.grad = None


# (input dtype, initial state dtype or None for zeros): all at batch 3 padded and packed, every other elsewhere (a batch
# of 8, batch_first, unbatched; the bidirectional LSTM: torch.nn's oneDNN LSTM builds a primitive per call, 0.3 s)
STARTS = [(BF16, None), (F16, None), (BF16, F32), (F16, BF16)]


@ignore_proj_warning
@pytest.mark.parametrize("layout", ["padded", "packed", "batch_first", "unbatched"])
@pytest.mark.parametrize("case", sorted(LAYERS))
def test_layer_low_input_follows_torch_nn(case, layout):
    """bf16 and fp16 inputs under bf16 autocast, from zeros, a float32 or a bf16 state (``STARTS``), in inference and
    with autograd; batch 3 (the fused kernels) and, one direction padded or packed, 8 (torch's oneDNN route)."""
    tn, rk = _pair(case, batch_first=layout == "batch_first")
    options = LAYERS[case][1]
    layers = options.get("num_layers", 1)
    batches = (1,) if layout in ("unbatched", "batch_first") else (3,) if options.get("bidirectional") else (3, 8)
    for batch in batches:
        every = batch == 3 and layout in ("padded", "packed") and case != "lstm_2_layers_bi"
        for x_dtype, start in STARTS[:: 1 if every else 2]:
            x = _layout(torch.randn(STEPS, batch, FEATURES).to(x_dtype), layout)
            state = _state(tn, None if layout == "unbatched" else batch, start)
            for grad in (False, True):
                _check_layer(tn, rk, x, state, layers, grad=grad)


@pytest.mark.parametrize("case", ["lstm", "gru_2_layers", "rnn_relu_bi"])
def test_float16_autocast_low_inputs_follow_torch_nn(case):
    """Under float16 autocast in inference, bf16 and fp16 inputs, padded and packed, from zeros and a bf16 state."""
    tn, rk = _pair(case)
    layers = LAYERS[case][1].get("num_layers", 1)
    for x_dtype in (BF16, F16):
        for layout in ("padded", "packed"):
            x = _layout(torch.randn(STEPS, 3, FEATURES).to(x_dtype), layout)
            for start in (None, BF16):
                with torch.no_grad():
                    _check_layer(tn, rk, x, _state(tn, 3, start), layers, F16)


def test_float16_autocast_training_runs_where_onednn_fails():
    """A bf16 input to the padded LSTM under float16 autocast with autograd: torch.nn's oneDNN has no fp16 training
    (RuntimeError), as for a float32 input; rnnkit runs it in float32 and returns fp16 (the table's oneDNN dtypes),
    within 2u of float32, gradients reaching the parameters in float32."""
    tn, rk = _pair("lstm")
    x = torch.randn(STEPS, 3, FEATURES).to(BF16)
    with torch.autocast("cpu", dtype=F16):
        with pytest.raises(RuntimeError):
            tn(x)
        out, (h, c) = rk(x)
    ref_out, (ref_h, ref_c) = tn(x.float())
    for got, want in ((out, ref_out), (h, ref_h), (c, ref_c)):
        assert got.dtype == F16
        _close(got, want, 2 * unit(F16), "fp16 results against float32")
    out.float().sum().backward()
    assert all(p.grad.dtype == F32 for p in rk.parameters())


@ignore_proj_warning
@pytest.mark.parametrize("case", STEP_LAYERS)
def test_step_and_stream_take_a_low_input(case):
    """``layer.step(x_t, state)`` on bf16 frames under bf16 autocast from zeros, each fed its state: torch.nn's
    dtypes of one-step calls fed theirs, within 8Lu of them; ``layer.stream(batch, h_0)`` from a bf16 state the same."""
    tn, rk = _pair(case)
    rk.eval()
    layers = LAYERS[case][1].get("num_layers", 1)
    x = torch.randn(STEPS, 3, FEATURES).to(BF16)
    h0 = _state(tn, 3, BF16)
    for grad in (False, True):
        state_t, state_r, state_s = None, None, h0
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=BF16), rk.stream(3, h0) as s:
            for t in range(STEPS):
                out_t, state_t = tn(x[t : t + 1], state_t)
                out_r, state_r = rk.step(x[t], state_r)
                out_s, state_s = tn(x[t : t + 1], state_s)
                runs = (([out_r, *flatten(state_r)], [out_t[0], *flatten(state_t)]),
                        ([s(x[t]), *flatten(s.state)], [out_s[0], *flatten(state_s)]))  # fmt: skip
                for got, want in runs:
                    assert [g.dtype for g in got] == [w.dtype for w in want], f"frame {t} dtypes"
                    for g, w in zip(got, want, strict=True):
                        _close(g, w, 8 * layers * U, f"frame {t}")


# (cell factory, {input dtype: (output dtype, state dtypes in flatten order)}) under bf16 autocast with autograd, from
# zeros in the input's dtype: the table (torch's LSTM math: oneDNN takes bf16, an fp16 input its native loop)
CELLS = {
    "basic_lstm": (lambda: rnnkit.BasicLSTMCell(5), {BF16: (BF16, [BF16, BF16]), F16: (F32, [F32, F32])}),
    "lstm_proj": (lambda: rnnkit.LSTMCell(5, num_proj=3), {BF16: (BF16, [BF16, BF16]), F16: (BF16, [F32, BF16])}),
    "lstm_peephole": (lambda: rnnkit.LSTMCell(5, use_peepholes=True), {d: (F32, [F32, F32]) for d in (BF16, F16)}),
    "layer_norm_lstm": (lambda: rnnkit.LayerNormBasicLSTMCell(5), {d: (F32, [F32, F32]) for d in (BF16, F16)}),
    "gru": (lambda: rnnkit.GRUCell(5), {BF16: (BF16, [BF16]), F16: (F32, [F32])}),
    "multi": (
        lambda: rnnkit.MultiRNNCell([rnnkit.BasicRNNCell(5), rnnkit.GRUCell(4)]),
        {BF16: (BF16, [BF16, BF16]), F16: (F32, [BF16, F32])},
    ),
    "residual": (lambda: rnnkit.ResidualWrapper(rnnkit.BasicRNNCell(3)), {d: (F32, [BF16]) for d in (BF16, F16)}),
}


@pytest.mark.parametrize("case", sorted(CELLS))
def test_runners_take_a_low_input(case):
    """dynamic_rnn (full, lengths), static_rnn and bidirectional_dynamic_rnn on bf16 and fp16 inputs under bf16
    autocast: the table's dtypes, values within 2u of the float32 reference loop on the widened input, a backward
    reaching the input in its dtype and the parameters in float32."""
    make, dtypes = CELLS[case]
    cell, twin = make(), make()
    cell.build(3)
    twin.build(3)
    ref, ref_twin = copy.deepcopy(cell), copy.deepcopy(twin)
    for x_dtype, (out_dtype, state_dtypes) in dtypes.items():
        for runner, lengths in RUNS:
            x = torch.randn(2, STEPS, 3).to(x_dtype).requires_grad_()
            with torch.autocast("cpu", dtype=BF16):
                out, state = _run(runner, cell, twin, x, None, lengths)
            with engine.use("reference"):
                out_ref, state_ref = _run(runner, ref, ref_twin, x.detach().float(), None, lengths)
            what = f"{runner} {x_dtype} {'lengths' if lengths else 'full'}"
            assert out.dtype == out_dtype and [s.dtype for s in flatten(state)] == state_dtypes, what
            for got, want in zip([out, *flatten(state)], [out_ref, *flatten(state_ref)], strict=True):
                _close(got, want, 2 * U, what)
            (out.float().sum() + sum(s.float().sum() for s in flatten(state))).backward()
            assert x.grad.dtype == x_dtype and all(p.grad.dtype == F32 for p in cell.parameters()), what
            cell.zero_grad()


def test_direct_cell_call_takes_a_low_input():
    """``cell(x_t, state)`` under bf16 autocast on a bf16 or fp16 input, from zeros in its dtype: the table's dtypes
    (``promote_types(bf16, state)`` as torch.nn's cells, an fp16 state included, which autocast's own ``cat`` would
    refuse), within 4u of the float32 call on the widened input."""
    for case in ("basic_lstm", "lstm_proj", "gru", "multi", "residual"):
        make, dtypes = CELLS[case]
        cell = make()
        cell.build(3)
        for x_dtype, (out_dtype, state_dtypes) in dtypes.items():
            x = torch.randn(2, 3).to(x_dtype)
            zeros = cell.zero_state(2, x_dtype)
            with torch.autocast("cpu", dtype=BF16):
                out, state = cell(x, zeros)
            out_ref, state_ref = cell(x.float(), map_structure(lambda t: t.float(), zeros))
            assert out.dtype == out_dtype and [s.dtype for s in flatten(state)] == state_dtypes, (case, x_dtype)
            for got, want in zip([out, *flatten(state)], [out_ref, *flatten(state_ref)], strict=True):
                _close(got, want, 4 * U, f"{case} {x_dtype}")


@ignore_proj_warning
@pytest.mark.parametrize("case", ["lstm", "lstm_proj", "gru_2_layers", "rnn_relu_bi"])
def test_low_input_outside_autocast_refused_as_torch_nn(case):
    """Outside autocast a bf16 input with float32 parameters: torch.nn raises ValueError (padded; a packed GRU or RNN)
    or a matmul's RuntimeError (a packed LSTM); rnnkit a DtypeError, both, naming the input, in forward, step and
    stream; the TF runners and a direct cell call a DtypeError as well."""
    tn, rk = _pair(case)
    x = torch.randn(STEPS, 3, FEATURES).to(BF16)
    for layout in ("padded", "packed"):
        inputs = _layout(x, layout)
        with pytest.raises((ValueError, RuntimeError)) as raised:
            tn(inputs)
        with pytest.raises(raised.type, match=r"has dtype torch.bfloat16.*only under torch.autocast") as got:
            rk(inputs)
        assert got.type is DtypeError
    if not rk.bidirectional:
        with pytest.raises(DtypeError, match="x_t has dtype torch.bfloat16"):
            rk.step(x[0])
        with pytest.raises(DtypeError, match="x_t has dtype torch.bfloat16"), rk.stream(3) as s:
            s(x[0])
    cell = rnnkit.GRUCell(HIDDEN, input_size=FEATURES)
    with pytest.raises(DtypeError, match="inputs has dtype torch.bfloat16"):
        rnnkit.dynamic_rnn(cell, x, time_major=True, dtype=BF16)
    with pytest.raises(DtypeError, match="inputs has dtype torch.bfloat16"):
        cell(x[0], torch.zeros(3, HIDDEN))
