"""``LayerNormBasicLSTMCell`` against the equations of TF 1.15 contrib, derived by hand in NumPy float64.

Today's TensorFlow no longer ships the cell, so the reference is its source, confirmed by reading
``tensorflow/contrib/rnn/python/ops/rnn_cell.py`` (class ``LayerNormBasicLSTMCell``) and
``tensorflow/contrib/layers/python/layers/layers.py`` (``layer_norm``) in the tensorflow/tensorflow repository:

* ``_linear(args)``: ``weights = vs.get_variable("kernel", [proj_size, 4 * num_units])``,
  ``out = matmul(args, weights)`` and, only ``if not self._layer_norm``, ``bias = vs.get_variable("bias",
  [out_size])``; ``out = bias_add(out, bias)``.
* ``call``: ``c, h = state``; ``args = concat([inputs, h], 1)``; ``i, j, f, o = split(concat, 4, axis=1)``; with
  layer norm ``i = _norm(i, "input")``, ``j = _norm(j, "transform")``, ``f = _norm(f, "forget")``,
  ``o = _norm(o, "output")``; ``g = activation(j)``; ``if keep_prob < 1: g = dropout(g, keep_prob)``;
  ``new_c = c * sigmoid(f + forget_bias) + sigmoid(i) * g``; with layer norm ``new_c = _norm(new_c, "state")``;
  ``new_h = activation(new_c) * sigmoid(o)``; returns ``new_h, LSTMStateTuple(new_c, new_h)``.
* ``_norm(inp, scope)``: in ``variable_scope(scope)``, ``gamma`` with ``constant_initializer(norm_gain)`` and
  ``beta`` with ``constant_initializer(norm_shift)``, then ``layers.layer_norm(inp, reuse=True, scope=scope)``.
* ``layer_norm``: ``mean, variance = nn.moments(inputs, norm_axes, keep_dims=True)`` (the biased variance, over
  the last axis for 2-D inputs), ``variance_epsilon = 1e-12``, ``nn.batch_normalization(inputs, mean, variance,
  offset=beta, scale=gamma, variance_epsilon)``, i.e. ``inv = gamma / sqrt(variance + 1e-12)``,
  ``out = inputs * inv + (beta - mean * inv)``.

TF's ``dynamic_rnn`` semantics for ``sequence_length`` (zero outputs past a length, state frozen at the last
valid step) are written out here too. One deliberate difference: contrib's dropout always runs; rnnkit's runs
only in training mode (``module.train()``), as torch's dropout does.
Tolerances: 1e-10 in float64, 1e-5 for float32 runs against the float64 reference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rnnkit

NORMS = ("input", "transform", "forget", "output", "state")


# -- the reference, by hand from the contrib source ----------------------------------------------------------------
def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def contrib_layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # nn.moments: biased
    inv = gamma / np.sqrt(variance + 1e-12)
    return x * inv + (beta - mean * inv)


def contrib_step(x, c, h, p: dict[str, np.ndarray], forget_bias: float, layer_norm: bool):
    concat = np.concatenate([x, h], axis=1) @ p["kernel"]
    if not layer_norm:
        concat = concat + p["bias"]
    i, j, f, o = np.split(concat, 4, axis=1)
    if layer_norm:
        i, j, f, o = (
            contrib_layer_norm(v, p[f"{s}.gamma"], p[f"{s}.beta"]) for v, s in zip((i, j, f, o), NORMS[:4], strict=True)
        )
    g = np.tanh(j)
    new_c = c * sigmoid(f + forget_bias) + sigmoid(i) * g
    if layer_norm:
        new_c = contrib_layer_norm(new_c, p["state.gamma"], p["state.beta"])
    new_h = np.tanh(new_c) * sigmoid(o)
    return new_h, (new_c, new_h)


def reference_dynamic_rnn(x, lengths, c0, h0, p, forget_bias, layer_norm):
    """``(batch, time, depth)`` -> outputs ``(batch, time, units)``, final ``(c, h)``; TF's length semantics."""
    batch, steps, _ = x.shape
    c, h = c0, h0
    outputs = np.zeros((batch, steps, h0.shape[1]))
    for t in range(steps):
        out, (new_c, new_h) = contrib_step(x[:, t], c, h, p, forget_bias, layer_norm)
        valid = (t < lengths)[:, None]
        outputs[:, t] = np.where(valid, out, 0.0)
        c, h = np.where(valid, new_c, c), np.where(valid, new_h, h)
    return outputs, (c, h)


# -- helpers -------------------------------------------------------------------------------------------------------
def make_cell(randomize: bool, seed: int = 0, dtype=torch.float64, **kwargs) -> rnnkit.LayerNormBasicLSTMCell:
    cell = rnnkit.LayerNormBasicLSTMCell(4, **kwargs)
    cell.build(3)
    cell.to(dtype)
    if randomize:  # so that gamma/beta/bias matter, not just their initial constants
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in cell.parameters():
                param.copy_(torch.rand(param.shape, generator=gen, dtype=dtype) * 2 - 1)
    return cell


def params_of(cell: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().double().numpy() for k, v in cell.state_dict().items()}


def data(seed: int = 1):
    rng = np.random.RandomState(seed)
    x = rng.uniform(-1, 1, (4, 5, 3))
    c0, h0 = rng.uniform(-1, 1, (4, 4)), rng.uniform(-1, 1, (4, 4))
    return x, np.array([5, 0, 2, 4]), c0, h0


CONFIGS = [
    dict(layer_norm=True),
    dict(layer_norm=True, forget_bias=0.0),
    dict(layer_norm=True, forget_bias=0.7, norm_gain=1.3, norm_shift=-0.2),
    dict(layer_norm=False),
    dict(layer_norm=False, forget_bias=0.25),
]


# -- the tests -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("randomize", [False, True], ids=["initial-params", "random-params"])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_dynamic_rnn_matches_contrib_equations(config: dict, randomize: bool) -> None:
    torch.manual_seed(0)
    cell = make_cell(randomize, **config)
    x, lengths, c0, h0 = data()
    p = params_of(cell)
    expected_out, (expected_c, expected_h) = reference_dynamic_rnn(
        x, lengths, c0, h0, p, config.get("forget_bias", 1.0), config["layer_norm"]
    )
    initial = rnnkit.LSTMStateTuple(torch.from_numpy(c0), torch.from_numpy(h0))
    out, state = rnnkit.dynamic_rnn(cell, torch.from_numpy(x), sequence_length=lengths, initial_state=initial)
    assert isinstance(state, rnnkit.LSTMStateTuple)
    np.testing.assert_allclose(out.detach().numpy(), expected_out, rtol=0, atol=1e-10)
    np.testing.assert_allclose(state.c.detach().numpy(), expected_c, rtol=0, atol=1e-10)
    np.testing.assert_allclose(state.h.detach().numpy(), expected_h, rtol=0, atol=1e-10)
    assert np.abs(expected_out[1]).max() == 0 and np.abs(expected_out[0]).min() > 0  # lengths 0 and 5 acted

    # float32, time-major: the same numbers to float32 precision
    cell32 = make_cell(False, dtype=torch.float32, **config)
    cell32.load_state_dict({k: v.float() for k, v in cell.state_dict().items()})
    x32 = torch.from_numpy(x).float().transpose(0, 1)  # (T, B, D)
    init32 = rnnkit.LSTMStateTuple(initial.c.float(), initial.h.float())
    out32, state32 = rnnkit.dynamic_rnn(cell32, x32, lengths, init32, time_major=True)
    np.testing.assert_allclose(out32.detach().transpose(0, 1).numpy(), expected_out, rtol=0, atol=1e-5)
    np.testing.assert_allclose(state32.c.detach().numpy(), expected_c, rtol=0, atol=1e-5)


def test_layer_norm_uses_the_biased_variance() -> None:
    """Guard on the reference itself: with 4 units biased and unbiased normalisation differ by sqrt(4/3)."""
    x = np.array([[0.0, 1.0, 2.0, 5.0]])
    y = contrib_layer_norm(x, np.ones(4), np.zeros(4))
    np.testing.assert_allclose((y**2).mean(), 1.0, atol=1e-10)
    cell = make_cell(True, seed=3, layer_norm=True)
    torch_out = cell.input(torch.from_numpy(x))
    np.testing.assert_allclose(
        torch_out.detach().numpy(),
        contrib_layer_norm(x, *(params_of(cell)[f"input.{n}"] for n in ("gamma", "beta"))),
        atol=1e-10,
    )


def test_parameter_names_and_initial_values() -> None:
    plain = make_cell(False, layer_norm=False)
    assert {k: tuple(v.shape) for k, v in plain.state_dict().items()} == {"kernel": (7, 16), "bias": (16,)}
    normed = make_cell(False, layer_norm=True, norm_gain=1.5, norm_shift=-0.25)
    expected = {"kernel": (7, 16)} | {f"{n}.{w}": (4,) for n in NORMS for w in ("gamma", "beta")}
    assert {k: tuple(v.shape) for k, v in normed.state_dict().items()} == expected
    for n in NORMS:
        assert torch.all(getattr(normed, n).gamma == 1.5) and torch.all(getattr(normed, n).beta == -0.25)
    assert plain.count_params() == 7 * 16 + 16 and normed.count_params() == 7 * 16 + 10 * 4


@pytest.mark.parametrize("layer_norm", [False, True])
def test_dropout_only_in_training_mode(layer_norm: bool) -> None:
    torch.manual_seed(0)
    cell = make_cell(True, seed=5, layer_norm=layer_norm, dropout_keep_prob=0.5)
    x, lengths, c0, h0 = data(seed=2)
    p = params_of(cell)
    initial = rnnkit.LSTMStateTuple(torch.from_numpy(c0), torch.from_numpy(h0))
    expected, _ = reference_dynamic_rnn(x, lengths, c0, h0, p, 1.0, layer_norm)  # the no-dropout equations

    cell.eval()
    out, _ = rnnkit.dynamic_rnn(cell, torch.from_numpy(x), lengths, initial)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=0, atol=1e-10)

    cell.train()
    out, _ = rnnkit.dynamic_rnn(cell, torch.from_numpy(x), lengths, initial)
    assert np.abs(out.detach().numpy() - expected).max() > 1e-3


def test_training_dropout_is_contrib_dropout_on_the_candidate() -> None:
    """From a zero state without layer norm, ``c' = sigmoid(i) * dropout(tanh(j))``: each ``c'`` entry is 0 or
    ``1 / keep_prob`` times the undropped value (TF's ``nn_ops.dropout`` scaling), with both outcomes seen."""
    torch.manual_seed(0)
    keep = 0.5
    cell = make_cell(True, seed=7, layer_norm=False, dropout_keep_prob=keep)
    x = torch.from_numpy(np.random.RandomState(3).uniform(-1, 1, (64, 3)))
    zero = cell.zero_state(64, torch.float64)
    cell.train()
    _, state = cell(x, zero)
    _, (undropped_c, _) = contrib_step(x.numpy(), zero.c.numpy(), zero.h.numpy(), params_of(cell), 1.0, False)
    ratio = state.c.detach().numpy() / undropped_c
    kept = np.isclose(ratio, 1 / keep, rtol=0, atol=1e-9)
    dropped = np.isclose(ratio, 0.0, rtol=0, atol=1e-12)
    assert np.all(kept | dropped) and kept.any() and dropped.any()
