"""``rnnkit.RNN/LSTM/GRU`` on the engine: torch's kernel for torch's math, fused kernels otherwise, same results.

Each configuration runs three ways on the same weights and inputs: the default (``auto``), rnnkit's fused
kernels (``fused``), and the reference loop over the torch-layout cells (``reference``); outputs, final
states and all parameter gradients must agree. The multi-threaded split of a step by hidden units is
forced on (``set_min_step_work(1)``) for part of the cases, so that it is checked at small sizes too.
"""

from __future__ import annotations

import pytest
import torch

import rnnkit as rk
from rnnkit import engine
from rnnkit.engine import _ext, route
from rnnkit.engine.route import FUSED_MAX_BATCH

CONFIGS = {
    "lstm": lambda: rk.LSTM(3, 20, num_layers=2, bidirectional=True),
    "lstm_proj": lambda: rk.LSTM(3, 20, proj_size=9, bidirectional=True),
    "lstm_tf": lambda: rk.LSTM(3, 20, forget_bias=1.0, peepholes=True, cell_clip=0.5),
    "lstm_ln": lambda: rk.LSTM(3, 20, num_layers=2, layer_norm=True),
    "gru": lambda: rk.GRU(3, 20, num_layers=2, bidirectional=True),
    "gru_tf": lambda: rk.GRU(3, 20, reset_after=False, bidirectional=True),
    "rnn_relu": lambda: rk.RNN(3, 20, nonlinearity="relu", num_layers=2),
}


def _run(layer, x, lengths, backend):
    with engine.use(backend):
        out, hidden = layer(x, lengths=lengths)
    hidden = hidden if isinstance(hidden, tuple) else (hidden,)
    loss = out.pow(2).sum() + sum(h.sum() for h in hidden)
    grads = torch.autograd.grad(loss, list(layer.parameters()))
    return [out, *hidden, *grads]


@pytest.mark.parametrize("split", [False, True], ids=["whole_steps", "split_by_units"])
@pytest.mark.parametrize("lengths", [None, [6, 2, 5]], ids=["full", "lengths"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_layer_paths_agree(name, lengths, split):
    torch.manual_seed(0)
    layer = CONFIGS[name]().double().eval()
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    lens = None if lengths is None else torch.tensor(lengths)
    ops = _ext.load()
    threads = torch.get_num_threads()
    previous = ops.set_min_step_work(1 if split else 1 << 40)
    torch.set_num_threads(2)
    try:
        auto, fused = _run(layer, x, lens, "auto"), _run(layer, x, lens, "fused")
    finally:
        ops.set_min_step_work(previous)
        torch.set_num_threads(threads)
    ref = _run(layer, x, lens, "reference")
    for a, f, r in zip(auto, fused, ref, strict=True):
        torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(f, r, atol=1e-10, rtol=1e-10)


def test_default_lstm_takes_torchs_kernel_in_inference_above_a_small_batch():
    """Under auto on CPU, oneDNN runs rnnkit.LSTM in inference at a batch above FUSED_MAX_BATCH (then it equals
    torch.nn.LSTM bit for bit); training, small batches, lengths, the GRU and non-torch math run fused."""
    big, small = torch.randn(5, 6, 3), torch.randn(5, 2, 3)
    assert big.shape[1] > FUSED_MAX_BATCH >= small.shape[1]
    lstm, gru = rk.LSTM(3, 8, num_layers=2), rk.GRU(3, 8)
    with torch.no_grad():
        assert route.torch_whole_stack(lstm, big, None)  # oneDNN
        assert not route.torch_whole_stack(lstm, small, None)  # oneDNN's fixed cost per call dominates
        assert not route.torch_whole_stack(lstm, big, torch.tensor([5, 3, 5, 5, 5, 5]))  # lengths: fused
        assert not route.torch_whole_stack(gru, big, None)  # torch's GRU on CPU is its slow native loop
        assert not route.torch_whole_stack(rk.LSTM(3, 8, forget_bias=1.0), big, None)  # not torch's math
        assert not route.torch_whole_stack(rk.LSTM(3, 8, zoneout=0.1), big, None)
    assert not route.torch_whole_stack(lstm, big, None)  # training: fused
    with torch.no_grad(), engine.use("torch"):
        assert route.torch_whole_stack(gru, big, torch.tensor([5, 3, 5, 5, 5, 5]))
        assert route.torch_whole_stack(lstm, small, None)
    with torch.no_grad(), engine.use("fused"):
        assert not route.torch_whole_stack(lstm, big, None)
    # Same flat weights, same call: rnnkit.LSTM equals torch.nn.LSTM bit for bit on torch's kernel.
    ref = torch.nn.LSTM(3, 8, num_layers=2)
    ref.load_state_dict(lstm.state_dict())
    with torch.no_grad():
        out, (h, c) = lstm(big)
        r_out, (r_h, r_c) = ref(big)
    assert torch.equal(out, r_out) and torch.equal(h, r_h) and torch.equal(c, r_c)


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_default_lstm_on_the_fused_kernel_matches_torch_nn(grad):
    """Where auto takes rnnkit's fused kernel for torch's math (small batches, training), outputs, final states
    and parameter gradients still match torch.nn.LSTM to float32 rounding (tolerance 1e-5 absolute, 1e-5
    relative; measured differences are about 1e-7)."""
    torch.manual_seed(4)
    lstm, ref = rk.LSTM(6, 16, num_layers=2), torch.nn.LSTM(6, 16, num_layers=2)
    ref.load_state_dict(lstm.state_dict())
    x = torch.randn(30, 3 if not grad else 7, 6)
    with torch.set_grad_enabled(grad):
        assert not route.torch_whole_stack(lstm, x, None)
        got, want = lstm(x), ref(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if grad:
        loss, r_loss = (o.pow(2).sum() + c.sum() for o, (_, c) in (got, want))
        grads = torch.autograd.grad(loss, list(lstm.parameters()))
        r_grads = torch.autograd.grad(r_loss, list(ref.parameters()))
        torch.testing.assert_close(grads, r_grads, atol=1e-5, rtol=1e-5)


def test_layer_with_packed_lengths_on_torchs_kernel_matches_reference():
    """The torch backend packs variable lengths for torch's kernel; zero-length sequences go cell by cell."""
    torch.manual_seed(1)
    gru = rk.GRU(3, 8, num_layers=2, bidirectional=True).double()
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    for lengths in ([5, 2, 4], [5, 0, 3]):
        lens = torch.tensor(lengths)
        got = _run(gru, x, lens, "torch")
        ref = _run(gru, x, lens, "reference")
        for a, r in zip(got, ref, strict=True):
            torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-10)


def test_layer_cells_follow_parameter_changes():
    """The layers reuse their per-(layer, direction) cells: in-place updates, replaced parameters and changed
    options must all reach the next forward (compared with torch.nn.GRU / a fresh layer)."""
    torch.manual_seed(5)
    layer = rk.GRU(3, 4, num_layers=2)
    ref = torch.nn.GRU(3, 4, num_layers=2)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(layer(x)[0], ref(x)[0], atol=1e-6, rtol=0)
    with torch.no_grad():  # an optimizer step: in place
        layer.weight_hh_l1.mul_(0.5)
        ref.weight_hh_l1.mul_(0.5)
    torch.testing.assert_close(layer(x)[0], ref(x)[0], atol=1e-6, rtol=0)
    new = torch.nn.Parameter(torch.randn(12, 3))  # a replaced parameter object
    layer.weight_ih_l0 = new
    ref.weight_ih_l0 = torch.nn.Parameter(new.detach().clone())
    torch.testing.assert_close(layer(x)[0], ref(x)[0], atol=1e-6, rtol=0)
    layer.reset_after = False  # an option of the step: TF's GRU math from now on
    fresh = rk.GRU(3, 4, num_layers=2, reset_after=False)
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x)[0], fresh(x)[0], atol=0, rtol=0)


RECURRENT_DROPOUT = {
    "lstm": lambda: rk.LSTM(3, 16, num_layers=2, recurrent_dropout=0.3),
    "lstm_bi_proj": lambda: rk.LSTM(3, 16, proj_size=8, bidirectional=True, recurrent_dropout=0.3),
    "lstm_ln": lambda: rk.LSTM(3, 16, layer_norm=True, recurrent_dropout=0.3),
    "rnn": lambda: rk.RNN(3, 16, num_layers=2, recurrent_dropout=0.4),
    "gru": lambda: rk.GRU(3, 16, num_layers=2, recurrent_dropout=0.3),
    "gru_tf_bi": lambda: rk.GRU(3, 16, reset_after=False, bidirectional=True, recurrent_dropout=0.3),
}


@pytest.mark.parametrize("lengths", [None, [6, 2, 0, 5]], ids=["full", "lengths"])
@pytest.mark.parametrize("name", sorted(RECURRENT_DROPOUT))
def test_recurrent_dropout_in_training_runs_fused_with_the_reference_masks(name, lengths):
    """Training-time recurrent dropout runs on the fused kernels (the h the matmuls read is masked; the carried and
    final h, and the GRU's z * h, are not), drawing the reference loop's masks in its order: with the same seed,
    outputs, final states and gradients equal the reference loop's (float64, 1e-10)."""
    torch.manual_seed(0)
    layer = RECURRENT_DROPOUT[name]().double().train()
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    lens = None if lengths is None else torch.tensor(lengths)
    assert engine.explain(layer._cell(0, 0), x) == ["fused"]
    runs = []
    for backend in ("auto", "reference"):
        torch.manual_seed(5)
        runs.append(_run(layer, x, lens, backend))
    for a, r in zip(*runs, strict=True):
        torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-10)
    torch.manual_seed(6)  # another seed, other masks: the dropout is really drawn
    assert not torch.allclose(_run(layer, x, lens, "auto")[0], runs[0][0])


def test_zoneout_runs_compiled_from_the_cells_step():
    """Zoneout changes the family kernels' update (h_t = lerp(h~_t, h_t-1, z)): no table entry lowers it, so the cell
    is compiled from its own step, in training (its per-step draws replayed before the loop,
    test_compiled_random_draws.py) and in eval; equal to the reference loop in both."""
    x = torch.randn(4, 2, 3)
    for layer in (rk.LSTM(3, 8, zoneout=0.1), rk.GRU(3, 8, zoneout=0.1), rk.RNN(3, 8, zoneout=0.1)):
        for mode in (layer.train, layer.eval):
            cell = mode()._cell(0, 0)
            assert engine.explain(cell, x, reasons=True)[0].startswith("fused: compiled"), type(layer).__name__
            torch.manual_seed(0)
            out = layer(x)[0]
            with engine.use("reference"):
                torch.manual_seed(0)
                ref = layer(x)[0]
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_layers_caches_do_not_keep_layers_alive():
    """The per-layer cell cache and the cells' cached lowering must not keep a dropped layer (or its cells)
    alive: counted by weak references after a forward in each mode."""
    import gc
    import weakref

    refs = []
    for training in (False, True):
        layer = rk.GRU(4, 8, num_layers=2).train(training)
        out, _ = layer(torch.randn(3, 2, 4))
        refs += [weakref.ref(layer), *(weakref.ref(layer._cell(k, 0)) for k in range(2))]
        del layer, out
    gc.collect()
    assert [r() for r in refs] == [None] * len(refs)


TF_CELLS = {
    "basic_lstm": lambda: rk.BasicLSTMCell(24, forget_bias=0.5),
    "lstm_full": lambda: rk.LSTMCell(24, use_peepholes=True, cell_clip=0.8, num_proj=16),
    "ln_lstm": lambda: rk.LayerNormBasicLSTMCell(24),
    "gru": lambda: rk.GRUCell(24),
    "rnn": lambda: rk.BasicRNNCell(24),
}


@pytest.mark.parametrize("short", [False, True], ids=["12_steps", "3_steps"])
@pytest.mark.parametrize("split", [False, True], ids=["whole_steps", "split_by_units"])
@pytest.mark.parametrize("name", sorted(TF_CELLS))
def test_float32_batches_cross_the_small_row_multiply(name, split, short):
    """float32, 12 sequences of lengths 12..1 (every row count 12..1, full and partial 6-row tiles), TF's
    row-major kernels. Split steps multiply through rnnkit's panel kernel, whole steps through MKL's packed
    multiply (9-12 rows) and rnnkit's small-row multiply (1-8 rows), all float32-only code; sequences of 3 steps
    or fewer (7 sequences of lengths 3..1) are too short for panels and read row-major weight copies instead.
    Values and gradients must match the reference loop (float32 tolerances: 2e-5 absolute, 1e-4 relative)."""
    torch.manual_seed(3)
    cell = TF_CELLS[name]()
    cell.build(5)
    batch = 7 if short else 12
    x = torch.randn(3 if short else 12, batch, 5, requires_grad=True)
    lens = torch.tensor([3, 3, 2, 2, 1, 1, 1]) if short else torch.arange(12, 0, -1)
    leaves = [x, *cell.parameters()]

    def run(unroll):
        out, state = unroll(cell, x, cell.zero_state(batch), lens)
        loss = out.pow(2).sum() + sum(s.sum() for s in (state if isinstance(state, tuple) else (state,)))
        return [out, *torch.autograd.grad(loss, leaves)]

    ops = _ext.load()
    threads = torch.get_num_threads()
    previous = ops.set_min_step_work(1 if split else 1 << 40)
    torch.set_num_threads(2)
    try:
        with engine.use("fused"):
            fused = run(engine.unroll)
    finally:
        ops.set_min_step_work(previous)
        torch.set_num_threads(threads)
    ref = run(engine.reference_unroll)
    for f, r in zip(fused, ref, strict=True):
        torch.testing.assert_close(f, r, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["auto", "fused", "reference"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_dropout_between_layers_when_no_sequence_runs(mode, backend):
    # Every length 0 in training with dropout between layers: nothing runs, so (TF's and rnnkit's length semantics)
    # the outputs are all zeros and each final state is its initial one; dropout has nothing to draw on. (This
    # once crashed in torch's packing, which refuses empty sequences.)
    torch.manual_seed(0)
    layer = getattr(rk, mode)(3, 5, num_layers=2, dropout=0.3, bidirectional=True).train()
    x = torch.randn(4, 2, 3)
    h0 = torch.randn(4, 2, 5)
    hx = (h0, torch.randn(4, 2, 5)) if mode == "LSTM" else h0
    with engine.use(backend):
        out, hidden = layer(x, hx, lengths=[0, 0])
    assert torch.equal(out, torch.zeros(4, 2, 10))
    for got, given in zip(hidden if mode == "LSTM" else (hidden,), hx if mode == "LSTM" else (hx,), strict=True):
        assert torch.equal(got, given)
