"""TF1's ``DropoutWrapper`` masks: ``[1, size]`` variational masks shared by the batch; ``seed=`` streams."""

from __future__ import annotations

import hashlib

import pytest
import torch

import rnnkit as rk
from rnnkit._structure import flatten
from rnnkit.cells.wrappers import tf_op_seed


def _wrapped(seed=None, variational=True, keep=(0.7, 0.6, 0.5)):
    cell = rk.LSTMCell(5, num_proj=4, input_size=3)
    with torch.no_grad():
        for k, p in enumerate(cell.parameters()):
            p.copy_(torch.linspace(-0.5, 0.5, p.numel()).view_as(p) * (k + 1))
    return rk.DropoutWrapper(cell, *keep, variational_recurrent=variational, seed=seed).train()


def test_tf_op_seed_is_tfs_gen_seed():
    """TF1: ``int(hashlib.md5((str(seed) + salt).encode()).hexdigest()[:8], 16) & 0x7FFFFFFF``."""
    assert tf_op_seed(42, "state_1") == int(hashlib.md5(b"42state_1").hexdigest()[:8], 16) & 0x7FFFFFFF
    assert tf_op_seed(0, "input_0") == 1124739560  # md5(b"0input_0") starts 430a29e8, kept to 31 bits
    assert 0 <= tf_op_seed(123456789, "output_0") < 2**31


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_variational_masks_are_shared_by_rows_and_steps(backend):
    cell = _wrapped()
    x = torch.ones(6, 7, 3)  # every row the same: only a per-row mask could make rows differ
    with rk.engine.use(backend):
        out, state = rk.dynamic_rnn(cell, x, sequence_length=[7] * 6)
    assert torch.allclose(out, out[:1].expand_as(out), atol=1e-6), "rows got different masks"
    for key, keep in (("input_0", 0.7), ("output_0", 0.6), ("state_1", 0.5)):
        mask = cell._masks[key]
        assert mask.shape[0] == 1
        values = mask.unique()
        assert ((values == 0) | torch.isclose(values, torch.tensor(1 / keep))).all(), values
    assert "state_0" not in cell._masks, "TF never drops the c of an LSTMStateTuple by default"


@pytest.mark.parametrize("variational", [True, False])
def test_seed_makes_masks_reproducible_and_independent_of_the_global_stream(variational):
    x = torch.randn(4, 6, 3)
    torch.manual_seed(1)
    a, _ = rk.dynamic_rnn(_wrapped(seed=7, variational=variational), x)
    torch.manual_seed(2)
    b, _ = rk.dynamic_rnn(_wrapped(seed=7, variational=variational), x)
    c, _ = rk.dynamic_rnn(_wrapped(seed=8, variational=variational), x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_seeded_wrapper_draws_new_masks_each_unroll_like_each_session_run():
    cell, x = _wrapped(seed=3), torch.randn(4, 6, 3)
    first, _ = rk.dynamic_rnn(cell, x)
    second, _ = rk.dynamic_rnn(cell, x)
    assert not torch.equal(first, second)


def test_fused_path_equals_reference_with_a_seed():
    x = torch.randn(5, 6, 3, dtype=torch.float64)
    results = []
    for backend in ("fused", "reference"):
        cell = _wrapped(seed=11).double()
        with rk.engine.use(backend):
            assert rk.engine.explain(cell, x.transpose(0, 1)) == (["fused"] if backend == "fused" else ["reference"])
            out, state = rk.dynamic_rnn(cell, x, sequence_length=[6, 2, 5, 0, 3])
        results.append((out, flatten(state)))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-10, rtol=1e-10)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_tf_arguments_are_accepted():
    """TF1's signature: ``input_size``, ``dtype`` and ``seed`` before ``dropout_state_filter_visitor``."""
    cell = rk.DropoutWrapper(rk.GRUCell(4), 0.5, 1.0, 1.0, True, 3, torch.float32, 5)
    assert cell.built and cell.cell.gates.kernel.shape == (3 + 4, 8) and cell.seed == 5
    with pytest.raises(TypeError, match="DropoutWrapper: seed must be an int"):
        rk.DropoutWrapper(rk.GRUCell(4), seed=1.5)
    with pytest.raises(ValueError, match="DropoutWrapper: input_size must be a positive depth"):
        rk.DropoutWrapper(rk.GRUCell(4), input_size=0)
    with pytest.raises(TypeError, match="dropout_state_filter_visitor must be callable"):
        rk.DropoutWrapper(rk.GRUCell(4), dropout_state_filter_visitor=3)
