"""A bf16 layer's multiplies read bf16 operands and sum in float32 (``rnnkit.engine.precision``, ``csrc/bf16.h``).

References: the layer's math written out in float32 torch ops with each step's recurrent operand rounded to bf16
(torch.nn's formulas for the LSTM, the GRU and the Elman RNN, with torch.nn's parameters), and autograd through it
for the gradients (the rounding passes gradients through unchanged, as a cast does). The kernels' bf16 units
(oneDNN's brgemm: AMX or AVX512-BF16) and their float32 multiplies of the same rounded operands must agree, and a
layer with ``set_bf16_multiplies(False)`` is its float32 twin rounded once (the earlier semantics).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator

import pytest
import torch

import rnnkit
from rnnkit.engine import precision
from rnnkit.engine.extension import load

U_BF16 = 2.0**-8  # bf16's unit roundoff


def _r(t: torch.Tensor) -> torch.Tensor:
    """``t`` rounded to bf16, in float32 (differentiable: the gradient passes through)."""
    return t.bfloat16().float()


def _ref(kind: str, x: torch.Tensor, sd: dict, hidden: int) -> torch.Tensor:
    """torch.nn's formulas over ``x`` (T, B, I) from zeros, the recurrent operand rounded to bf16 at every step."""
    wih, whh, bih, bhh = (sd[k].float() for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"))
    h = torch.zeros(x.shape[1], hidden)
    c = torch.zeros_like(h)
    ys = []
    for xt in x.float():
        gi, gh = xt @ wih.t() + bih, _r(h) @ whh.t() + bhh
        if kind == "lstm":
            i, f, g, o = (gi + gh).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        elif kind == "gru":
            (ir, iz, inn), (hr, hz, hn) = gi.chunk(3, 1), gh.chunk(3, 1)
            r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            h = (1 - z) * torch.tanh(inn + r * hn) + z * h
        else:
            h = torch.tanh(gi + gh)
        ys.append(h)
    return torch.stack(ys)


LAYERS = {"lstm": rnnkit.LSTM, "gru": rnnkit.GRU, "rnn": rnnkit.RNN}


def _bf16_layer(cls, *args, **kwargs) -> torch.nn.Module:
    torch.manual_seed(3)
    layer = cls(*args, **kwargs)
    with torch.no_grad():
        for p in layer.parameters():
            p.mul_(3.0)  # larger weights: the rounding of h matters
    return layer.bfloat16()


def _ulps(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """|got - want| in units of want's last bf16 place (want a bf16 value)."""
    got, want = got.float(), want.float()
    ulp = torch.where(want == 0, torch.tensor(2.0**-133), torch.exp2(torch.floor(torch.log2(want.abs())) - 7))
    return (got - want).abs() / ulp


@contextlib.contextmanager
def _set(setter: Callable[[bool], bool], value: bool) -> Iterator[None]:
    """A setting that returns its previous value (``allow_bf16_units``, ``set_bf16_multiplies``), for a block."""
    was = setter(value)
    try:
        yield
    finally:
        setter(was)


@pytest.fixture
def ops():
    kernels = load()
    assert kernels is not None, "the compiled kernels are needed here"
    return kernels


# (a bf16 LSTM of more than FUSED_MAX_BATCH rows runs on torch's own kernel, oneDNN's, under the auto backend; a GRU
# of 40 rows on the bf16 units runs in blocks of rows, loop.h's forward_rows)
CASES = [(kind, batch) for kind in LAYERS for batch in (1, 3, 16, 40) if not (kind == "lstm" and batch > 4)]


@pytest.mark.parametrize("units", [True, False])
@pytest.mark.parametrize(("kind", "batch"), CASES)
def test_outputs_are_the_rounded_operand_math_rounded_once(kind, batch, units, ops):
    """Every output is the reference's float32 value rounded to bf16, but for sums landing next to a rounding
    boundary (summation order): at least 99% equal, none more than one bf16 place away."""
    layer = _bf16_layer(LAYERS[kind], 24, 32)
    x = torch.randn(12, batch, 24).bfloat16()
    with torch.no_grad(), _set(ops.allow_bf16_units, units):
        y, _ = layer(x)
    want = _ref(kind, x, layer.state_dict(), 32).bfloat16()
    assert y.dtype == torch.bfloat16
    ulps = _ulps(y, want)
    assert ulps.max() <= 1 and (ulps == 0).float().mean() >= 0.99, (ulps.max(), (ulps == 0).float().mean())


@pytest.mark.parametrize("kind", ["gru", "rnn"])
def test_odd_sizes_pack_a_zero_row(kind, ops):
    """Odd input and hidden sizes, whose weights the bf16 units read in pairs of rows with a zero row added (packed
    from torch's transposed layout by 16 x 16 tiles of pairs, with remainders of rows and of columns), through the
    units' recurrent multiplies and (the GRU's, a call past kBf16MinProjection multiply-adds) input projection:
    against the reference rounded once. torch.nn's initial weights, not the larger ones above: with 105,600 outputs,
    a flipped rounding of h (the reference's float32 sums are MKL's, in another order) may carry a few outputs further
    than one place, so the bound is on the fractions (measured over 16 inputs: at least 99.98% equal, 99.994% within
    one place); a wrong packing moves nearly every output."""
    torch.manual_seed(3)
    layer = LAYERS[kind](65, 33).bfloat16()
    x = torch.randn(4, 800, 65).bfloat16()
    with torch.no_grad():
        y, _ = layer(x)
    ulps = _ulps(y, _ref(kind, x, layer.state_dict(), 33).bfloat16())
    equal, near = (ulps == 0).float().mean(), (ulps <= 1).float().mean()
    assert equal >= 0.999 and near >= 0.9995, (equal, near)


AS_IT_CAME = {  # kernel family: a layer on it (odd input sizes get a zero column for the bf16 units)
    "gru": lambda: rnnkit.GRU(65, 33),
    "rnn": lambda: rnnkit.RNN(64, 33),
    "lstm": lambda: rnnkit.LSTM(65, 33, peepholes=True),  # (without options, 80 rows run on torch's own kernel)
    "lnlstm": lambda: rnnkit.LSTM(64, 33, layer_norm=True),
}


@pytest.mark.parametrize("kind", list(AS_IT_CAME))
def test_inference_reads_bf16_x_as_it_came(kind, ops, monkeypatch):
    """In inference the kernels take a bf16 layer's x as it came (their bf16 units read it): the kernel sees bfloat16
    x, and the outputs equal, bit for bit, the same layer's with x widened to float32 and rounded back inside (the
    call that records gradients)."""
    torch.manual_seed(3)
    layer = AS_IT_CAME[kind]().bfloat16()
    input_size = layer.input_size
    x = torch.randn(100, 80, input_size).bfloat16()  # past kBf16MinProjection multiply-adds: the units project
    seen = []
    forward = getattr(ops, f"{kind}_forward")
    monkeypatch.setattr(ops, f"{kind}_forward", lambda x, *rest: seen.append(x.dtype) or forward(x, *rest))
    with torch.no_grad():
        y, _ = layer(x)
    widened, _ = layer(x.requires_grad_())
    assert seen == [torch.bfloat16, torch.float32]
    assert torch.equal(y, widened.detach())


@pytest.mark.parametrize("kind", ["gru", "rnn", "lstm"])
def test_gradients_match_autograd_of_the_reference(kind, ops):
    """Weight and input gradients against float32 autograd through the reference (whose backward multiplies in
    float32): the backward's multiplies round the d pre-activations to bf16 and the gradients are bf16, so each
    gradient is asserted within 2^-6 of the reference's in relative Frobenius norm (measured: 0.6-1.1 x 2^-8)."""
    layer = _bf16_layer(LAYERS[kind], 24, 32)
    x = torch.randn(10, 3, 24).bfloat16().requires_grad_()
    seed = torch.randn(10, 3, 32)
    y, _ = layer(x)
    (y.float() * seed).sum().backward()
    ref_params = {k: v.float().requires_grad_() for k, v in layer.state_dict().items()}
    x_ref = x.detach().float().requires_grad_()
    (_ref(kind, x_ref, ref_params, 32) * seed).sum().backward()
    pairs = [(x.grad, x_ref.grad)] + [(p.grad, ref_params[n].grad) for n, p in layer.named_parameters()]
    for got, want in pairs:
        assert got.dtype == torch.bfloat16
        err = (got.float() - want).norm() / want.norm()
        assert err <= 2.0**-6, err


OPTIONS = {
    "gru_reset_before": lambda: _bf16_layer(rnnkit.GRU, 24, 32, reset_after=False),
    "lstm_peepholes_clip_proj": lambda: _bf16_layer(rnnkit.LSTM, 24, 32, peepholes=True, cell_clip=1.5, proj_size=16),
    "lstm_layer_norm": lambda: _bf16_layer(rnnkit.LSTM, 24, 32, layer_norm=True),
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_units_float_multiplies_and_batch_sizes_agree(name, ops):
    """The families written out nowhere else: the bf16 units (a batch of 16) against the float32 multiplies of the
    same rounded operands, and against each sequence run alone (one row: float32 multiplies), within one bf16 place."""
    layer = OPTIONS[name]()
    x = torch.randn(12, 16, 24).bfloat16()
    with torch.no_grad():
        y, _ = layer(x)
        with _set(ops.allow_bf16_units, False):
            y_float, _ = layer(x)
        alone = torch.cat([layer(x[:, b : b + 1])[0] for b in range(16)], 1)
    for other in (y_float, alone):
        ulps = _ulps(y, other)
        assert ulps.max() <= 1 and (ulps == 0).float().mean() >= 0.99, (ulps.max(), (ulps == 0).float().mean())


@pytest.mark.parametrize("kind", list(LAYERS))
def test_without_bf16_multiplies_a_layer_is_its_float32_twin_rounded_once(kind):
    layer = _bf16_layer(LAYERS[kind], 24, 32)
    twin = copy.deepcopy(layer).float()
    x = torch.randn(12, 3, 24).bfloat16()
    with torch.no_grad(), _set(precision.set_bf16_multiplies, False):
        y, _ = layer(x)
    with torch.no_grad():
        want, _ = twin(x.float())
    assert _ulps(y, want.bfloat16()).max() <= 1


def test_the_setting_is_restored_and_the_scope_ends_with_the_call():
    layer = _bf16_layer(rnnkit.GRU, 8, 16)
    assert precision.set_bf16_multiplies(True) is True and precision.multiplies_dtype() is None
    with torch.no_grad():
        layer(torch.randn(5, 2, 8).bfloat16())
    assert precision.multiplies_dtype() is None


ROW_BLOCKED = {"gru": lambda: _bf16_layer(rnnkit.GRU, 24, 32), **OPTIONS}


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("name", list(ROW_BLOCKED))
def test_row_blocks_with_lengths_agree(name, threads, ops):
    """A bf16 layer of 40 rows on the bf16 units runs each block of rows through all its steps on a thread of its own
    (loop.h forward_rows; forced: set_min_step_work(1)); with variable lengths the blocks end at different steps.
    Its outputs and final state against the same layer with the steps split by units (blocks off: the same products
    summed in the same order), within one bf16 place of each value and 99% equal; and against each sequence run
    alone (one row: float32 multiplies, another summation order, which a layer norm amplifies where a row's spread
    is small), 99% equal and within one bf16 place of the tensor's largest value."""
    layer = ROW_BLOCKED[name]()
    torch.manual_seed(5)
    x = torch.randn(12, 40, 24).bfloat16()
    lengths = torch.randint(1, 13, (40,))
    lengths[7] = 12
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            previous, calls = ops.set_min_step_work(1), ops.row_block_calls()
            try:
                y, h = layer(x, lengths=lengths)
            finally:
                ops.set_min_step_work(previous)
            assert ops.row_block_calls() == calls + 1  # the call ran in blocks of rows
            previous = ops.set_min_step_work(1 << 40)  # one chunk, no blocks
            try:
                y_split, h_split = layer(x, lengths=lengths)
            finally:
                ops.set_min_step_work(previous)
            assert ops.row_block_calls() == calls + 1
            alone = [layer(x[: int(n), b : b + 1]) for b, n in enumerate(lengths)]
    finally:
        torch.set_num_threads(before)
    y_alone = torch.zeros_like(y)
    for b, (yb, _) in enumerate(alone):
        y_alone[: yb.shape[0], b : b + 1] = yb
    finals = (h,) if isinstance(h, torch.Tensor) else tuple(h)
    finals_split = (h_split,) if isinstance(h_split, torch.Tensor) else tuple(h_split)
    parts = [(hb,) if isinstance(hb, torch.Tensor) else tuple(hb) for _, hb in alone]
    finals_alone = [torch.cat([p[k] for p in parts], 1) for k in range(len(finals))]
    for got, want in [(y, y_split), *zip(finals, finals_split, strict=True)]:
        ulps = _ulps(got, want)
        assert ulps.max() <= 1 and (ulps == 0).float().mean() >= 0.99, (ulps.max(), (ulps == 0).float().mean())
    for got, want in [(y, y_alone), *zip(finals, finals_alone, strict=True)]:
        err, equal = (got.float() - want.float()).abs(), (got == want).float().mean()
        assert err.max() <= U_BF16 * want.float().abs().max() and equal >= 0.99, (err.max(), equal)


@pytest.mark.parametrize("name", list(ROW_BLOCKED))
def test_row_blocks_save_what_the_backward_reads(name, ops):
    """Forward+backward of 40 rows with variable lengths: the row-blocked forward (forced) saves the activations the
    backward reads as the unit-split one does, so the gradients agree (within 2^-8 in relative norm)."""
    grads = []
    for work in (1, 1 << 40):  # blocks forced, then none
        calls = ops.row_block_calls()
        layer = ROW_BLOCKED[name]()
        torch.manual_seed(6)
        x = torch.randn(9, 40, 24).bfloat16().requires_grad_()
        lengths = torch.randint(1, 10, (40,))
        lengths[3] = 9
        previous = ops.set_min_step_work(work)
        try:
            y, _ = layer(x, lengths=lengths)
            (y.float() * torch.randn(y.shape, generator=torch.Generator().manual_seed(7))).sum().backward()
        finally:
            ops.set_min_step_work(previous)
        assert ops.row_block_calls() == calls + (work == 1)
        grads.append([x.grad, *(p.grad for p in layer.parameters())])
    for got, want in zip(*grads, strict=True):
        err = (got.float() - want.float()).norm() / want.float().norm()
        assert err <= U_BF16, err
