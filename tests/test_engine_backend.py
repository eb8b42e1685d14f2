"""Selecting the engine's path, reporting it, lowering predicates, dropout masks, and the fallback warning."""

from __future__ import annotations

import warnings

import pytest
import torch

import rnnkit as rk
from rnnkit import engine
from rnnkit._structure import flatten
from rnnkit.engine import _ext


def test_use_is_global_or_scoped_and_validated():
    assert engine.current() == ("auto", "auto")
    with engine.use("reference"):
        assert engine.current() == ("reference", "auto")
        with engine.use("fused", kernels="python"):
            assert engine.current() == ("fused", "python")
        assert engine.current() == ("reference", "auto")
    assert engine.current() == ("auto", "auto")
    with pytest.raises(ValueError, match=r"backend must be one of .*got 'fast'"):
        engine.use("fast")
    with pytest.raises(ValueError, match=r"kernels must be one of .*got 'cuda'"):
        engine.use("auto", kernels="cuda")


def test_backend_info_reports_the_compiled_kernels():
    info = engine.backend_info()
    assert info["fused_cpu"] == "compiled", info["compiled"]  # this machine has a compiler: it must build
    assert info["compiled"]["loaded"] and info["compiled"]["error"] is None
    assert info["backend"] == "auto" and info["fused_devices"][0] == "cpu"
    with engine.use("auto", kernels="python"):
        assert engine.backend_info()["fused_cpu"] == "python"


def test_compiled_kernels_run_parallel_regions_on_torchs_threads():
    """The kernels split a step over threads with at::parallel_for, an OpenMP region only when the extension is
    compiled with torch's OpenMP: without it every region runs on one thread, silently (what the first build did).
    """
    info = engine.backend_info()
    threads = torch.get_num_threads()
    if "OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("torch does not parallelise with OpenMP here")  # the native pool: nothing to link
    assert info["kernel_threads"] == min(threads, 64), info
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert torch.ops.rnnkit.parallel_threads() == 1  # and it follows torch's setting
    finally:
        torch.set_num_threads(previous)


def test_a_failed_build_warns_once_and_falls_back_to_the_twins(monkeypatch, tmp_path):
    """No compiler (simulated: RNNKIT_NO_COMPILE): one FusedKernelUnavailableWarning, then same results."""
    cell = rk.LSTMCell(4, use_peepholes=True, input_size=3)
    x = torch.randn(5, 2, 3)
    with engine.use("fused", kernels="compiled"):
        expected, _ = engine.unroll(cell, x, cell.zero_state(2))
    monkeypatch.setenv("RNNKIT_NO_COMPILE", "1")
    _ext._reset_for_tests()
    try:
        with engine.use("fused"), pytest.warns(engine.FusedKernelUnavailableWarning, match="RNNKIT_NO_COMPILE"):
            out, _ = engine.unroll(cell, x, cell.zero_state(2))
        with engine.use("fused"), warnings.catch_warnings():
            warnings.simplefilter("error")  # said once: the second call is silent
            again, _ = engine.unroll(cell, x, cell.zero_state(2))
        info = engine.backend_info()
        assert info["fused_cpu"] == "python" and "RNNKIT_NO_COMPILE" in info["compiled"]["error"]
        with engine.use("fused", kernels="compiled"), pytest.raises(RuntimeError, match="unavailable"):
            engine.unroll(cell, x, cell.zero_state(2))
    finally:
        monkeypatch.delenv("RNNKIT_NO_COMPILE")
        _ext._reset_for_tests()
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=0)
    torch.testing.assert_close(again, expected, atol=2e-6, rtol=0)
    assert engine.backend_info()["fused_cpu"] == "compiled"


class _MyLSTM(rk.BasicLSTMCell):
    """A user's subclass may change the step: never lowered."""


@pytest.mark.parametrize(
    "make, lowered",
    [
        (lambda: rk.BasicLSTMCell(4), "LSTMSpec"),
        (lambda: rk.LSTMCell(4, activation="relu"), "ProgramSpec"),  # no family: compiled from call
        (lambda: _MyLSTM(4), "ProgramSpec"),  # a subclass: compiled from its own call
        (lambda: rk.GRUCell(4, activation=torch.sigmoid), "ProgramSpec"),
        (lambda: rk.BasicRNNCell(4, activation="elu"), "ProgramSpec"),
        (lambda: rk.LayerNormBasicLSTMCell(4, dropout_keep_prob=0.8), "ProgramSpec"),  # per-step draws, replayed
        (lambda: rk.LayerNormBasicLSTMCell(4, dropout_keep_prob=0.8).eval(), "LNLSTMSpec"),
        (lambda: rk.DropoutWrapper(rk.GRUCell(4), 0.8), "ProgramSpec"),  # per-step masks, compiled whole
        (lambda: rk.DropoutWrapper(rk.GRUCell(4), 0.8, variational_recurrent=True), "DropoutSpec"),
        (lambda: rk.DropoutWrapper(rk.GRUCell(4), 0.8).eval(), "GRUSpec"),
        (lambda: rk.ResidualWrapper(rk.GRUCell(3), residual_fn=lambda i, o: i - o), "ProgramSpec"),
        (lambda: rk.MultiRNNCell([rk.GRUCell(4), rk.LSTMCell(4, activation="relu")]), "StackSpec"),
        (lambda: rk.MultiRNNCell([rk.GRUCell(4), rk.BasicRNNCell(4)]), "StackSpec"),
    ],
)
def test_lowering_predicates(make, lowered):
    cell = make()
    assert engine.lowering_for(cell) is None  # not built: nothing to lower yet
    cell.build(3)
    spec = engine.lowering_for(cell)
    assert (type(spec).__name__ if spec is not None else None) == lowered


def test_forget_bias_folding_gives_torch_weights_that_reproduce_the_tf_cell():
    """TF (i, j, f, o) + forget_bias -> torch (i, f, g, o): nn.LSTM loaded with them gives the same outputs."""
    torch.manual_seed(0)
    cell = rk.BasicLSTMCell(5, forget_bias=0.75, input_size=3)
    with torch.no_grad():
        cell.bias.normal_()
    w_ih, w_hh, b_ih, b_hh = engine.lowering_for(cell).torch_params()[0]
    lstm = torch.nn.LSTM(3, 5)
    lstm.load_state_dict({"weight_ih_l0": w_ih, "weight_hh_l0": w_hh, "bias_ih_l0": b_ih, "bias_hh_l0": b_hh})
    x = torch.randn(6, 2, 3)
    out, (h, c) = lstm(x)
    ref, state = engine.reference_unroll(cell, x, cell.zero_state(2), None)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(c[0], state.c, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kernels", ["compiled", "python"])
@pytest.mark.parametrize("lengths", [None, [6, 2, 0]])
def test_variational_dropout_uses_the_reference_masks(kernels, lengths):
    """Training-mode variational DropoutWrappers (nested, in a stack): the same masks as the reference loop
    for the same seed, so the same outputs, states and gradients; the wrappers end holding those masks."""

    def make():
        torch.manual_seed(0)
        inner = rk.DropoutWrapper(rk.LSTMCell(4, num_proj=3), 0.7, 0.8, 0.6, variational_recurrent=True)
        stack = rk.MultiRNNCell([inner, rk.DropoutWrapper(rk.GRUCell(5), 0.9, 0.5, 0.75, variational_recurrent=True)])
        cell = rk.DropoutWrapper(
            stack, 0.85, 0.95, 0.65, variational_recurrent=True, dropout_state_filter_visitor=lambda s: True
        )
        cell.build(3)
        return cell.double().train()

    x = torch.randn(6, 3, 3, dtype=torch.float64, requires_grad=True)
    lens = None if lengths is None else torch.tensor(lengths)
    results = []
    for backend in ("fused", "reference"):
        cell = make()
        torch.manual_seed(7)
        with engine.use(backend, kernels):
            assert engine.explain(cell, x, lens) == (["fused", "fused"] if backend == "fused" else ["reference"])
            out, state = engine.unroll(cell, x, cell.zero_state(3, torch.float64), lens)
        grads = torch.autograd.grad(out.sum() + sum(s.sum() for s in flatten(state)), [x, *cell.parameters()])
        masks = {k: v.clone() for k, v in cell._masks.items()}
        results.append((out, flatten(state), grads, masks))
    (out, state, grads, masks), (r_out, r_state, r_grads, r_masks) = results
    assert masks.keys() == r_masks.keys() == {"input_0", "state_0", "state_1", "state_2", "output_0"}
    for k in masks:
        torch.testing.assert_close(masks[k], r_masks[k], atol=0, rtol=0)
    torch.testing.assert_close(out, r_out, atol=1e-10, rtol=1e-10)
    for a, b in zip(state + list(grads), r_state + list(r_grads), strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)
