"""The fused kernels themselves: gradcheck of each hand-written backward, the packing plan, and the twins.

``torch.autograd.gradcheck`` compares each kernel's analytical backward with finite differences of its
own forward, in float64, on packed ragged batches (batch sizes 3, 3, 2, 1) with per-sequence masks:
the compiled kernels and the pure-PyTorch twins alike.
"""

from __future__ import annotations

import pytest
import torch

from rnnkit.engine import _ext, _functions, make_plan, twin

D = torch.float64
BATCH_SIZES = torch.tensor([3, 3, 2, 1])
TOTAL = int(BATCH_SIZES.sum())


def _kernels(kind):
    if kind == "python":
        return twin
    ops = _ext.load()
    assert ops is not None, f"the compiled kernels did not build: {_ext.status()['error']}"
    return ops


def _p(*shape, scale=0.5):
    return (scale * torch.randn(*shape, dtype=D)).requires_grad_()


def _mask(*shape):
    return torch.bernoulli(torch.full(shape, 0.7, dtype=D)) / 0.7


@pytest.mark.parametrize("kind", ["compiled", "python"])
@pytest.mark.parametrize(
    "options",
    [
        dict(peep=False, proj=False, cell_clip=0.0, proj_clip=0.0, order=(0, 1, 2, 3), masks=False),
        dict(peep=True, proj=True, cell_clip=0.35, proj_clip=0.25, order=(0, 2, 1, 3), masks=True),
        dict(peep=True, proj=False, cell_clip=0.0, proj_clip=0.0, order=(3, 0, 1, 2), masks=True),
    ],
    ids=["plain", "everything", "peep_masks"],
)
def test_lstm_gradcheck(kind, options):
    torch.manual_seed(0)
    kern = _kernels(kind)
    I, H = 3, 4
    P = 2 if options["proj"] else H
    x, w_x, bias = _p(TOTAL, I), _p(I, 4 * H), _p(4 * H)
    h0, c0, w_h = _p(3, P), _p(3, H), _p(P, 4 * H)
    peep = _p(3, H) if options["peep"] else None
    w_proj = _p(H, P, scale=1.0) if options["proj"] else None
    m_h, m_c = (_mask(3, P), _mask(3, H)) if options["masks"] else (None, None)

    def f(x, w_x, bias, h0, c0, w_h, *extra):
        it = iter(extra)
        pp = next(it) if peep is not None else None
        wp = next(it) if w_proj is not None else None
        return _functions.lstm_layer(
            kern,
            BATCH_SIZES,
            x,
            w_x,
            bias,
            h0,
            c0,
            w_h,
            pp,
            wp,
            m_h,
            m_c,
            options["order"],
            0.7,
            options["cell_clip"],
            options["proj_clip"],
        )

    extra = [t for t in (peep, w_proj) if t is not None]
    assert torch.autograd.gradcheck(f, (x, w_x, bias, h0, c0, w_h, *extra), atol=1e-6)


@pytest.mark.parametrize("kind", ["compiled", "python"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_layer_norm_lstm_gradcheck(kind, with_bias):
    torch.manual_seed(1)
    kern = _kernels(kind)
    I, H = 3, 4
    x, w_x, h0, c0, w_h = _p(TOTAL, I), _p(I, 4 * H), _p(3, H), _p(3, H), _p(H, 4 * H)
    gamma, beta = (1 + 0.3 * torch.randn(5, H, dtype=D)).requires_grad_(), _p(5, H)
    bias = _p(4 * H) if with_bias else None
    m_h, m_c = _mask(3, H), _mask(3, H)

    def f(x, w_x, h0, c0, w_h, gamma, beta, *b):
        return _functions.lnlstm_layer(
            kern, BATCH_SIZES, x, w_x, b[0] if b else None, h0, c0, w_h, gamma, beta, m_h, m_c, (0, 1, 2, 3), 1.0, 1e-12
        )

    args = (x, w_x, h0, c0, w_h, gamma, beta) + ((bias,) if bias is not None else ())
    assert torch.autograd.gradcheck(f, args, atol=1e-6)


@pytest.mark.parametrize("kind", ["compiled", "python"])
@pytest.mark.parametrize("masks", ["state", "recurrent", "both"])
@pytest.mark.parametrize("apart", [False, True], ids=["one_block", "candidate_apart"])
@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_gradcheck(kind, reset_after, apart, masks):
    """Both GRUs; the candidate's columns in the same tensors as r, z, or in tensors of their own (TF's GRUCell:
    w_x, w_h then hold r, z only, and w_xn, w_hn get their own gradients); a state mask (mask_h, dropping the
    carried h), a recurrent-dropout mask (mask_r, on the h the matmuls read only), or both."""
    torch.manual_seed(2)
    kern = _kernels(kind)
    I, H = 3, 4
    rz = 2 * H if apart else 3 * H
    x, w_x, b_x, h0, w_h = _p(TOTAL, I), _p(I, rz), _p(3 * H), _p(3, H), _p(H, rz)
    w_xn, w_hn = (_p(I, H), _p(H, H)) if apart else (None, None)
    b_h = _p(3 * H) if reset_after else None
    m_h = _mask(3, H) if masks in ("state", "both") else None
    m_r = _mask(3, H) if masks in ("recurrent", "both") else None

    def f(x, w_x, b_x, h0, w_h, *extra):
        it = iter(extra)
        b = next(it) if b_h is not None else None
        xn, hn = (next(it), next(it)) if apart else (None, None)
        return _functions.gru_layer(kern, BATCH_SIZES, x, w_x, b_x, h0, w_h, b, xn, hn, m_h, m_r, reset_after)

    extra = [t for t in (b_h, w_xn, w_hn) if t is not None]
    assert torch.autograd.gradcheck(f, (x, w_x, b_x, h0, w_h, *extra), atol=1e-6)


@pytest.mark.parametrize("kind", ["compiled", "python"])
@pytest.mark.parametrize("relu", [False, True])
def test_rnn_gradcheck(kind, relu):
    torch.manual_seed(3)
    kern = _kernels(kind)
    I, H = 3, 4
    x, w_x, b, h0, w_h = _p(TOTAL, I), _p(I, H), _p(H), _p(3, H), _p(H, H)

    def f(x, w_x, b, h0, w_h):
        return _functions.rnn_layer(kern, BATCH_SIZES, x, w_x, b, h0, w_h, torch.full((3, H), 1.25, dtype=D), relu)

    assert torch.autograd.gradcheck(f, (x, w_x, b, h0, w_h), atol=1e-6)


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn"])
def test_compiled_kernels_equal_twins_on_a_transposed_weight_layout(name):
    """torch's (out, in) weights seen through .t() (no copy) give what contiguous (in, out) weights give."""
    torch.manual_seed(4)
    ops = _kernels("compiled")
    G = {"lstm": 4, "gru": 3, "rnn": 1}[name]
    I, H = 5, 6
    x = torch.randn(TOTAL, I, dtype=D)
    w_ih, w_hh, b = torch.randn(G * H, I, dtype=D), torch.randn(G * H, H, dtype=D), torch.randn(G * H, dtype=D)
    h0 = torch.randn(3, H, dtype=D)
    if name == "lstm":
        c0 = torch.randn(3, H, dtype=D)

        def args(w1, w2):
            return (x, w1, b, BATCH_SIZES, h0, c0, w2, None, None, None, None, [0, 2, 1, 3], 0.0, 0.0, 0.0, False)

    elif name == "gru":
        args = lambda w1, w2: (x, w1, b, BATCH_SIZES, h0, w2, b.flip(0), None, None, None, None, True, False)  # noqa: E731,E501
    else:
        args = lambda w1, w2: (x, w1, b, BATCH_SIZES, h0, w2, None, False, False)  # noqa: E731
    fn = f"{name}_forward"
    got = getattr(ops, fn)(*args(w_ih.t(), w_hh.t()))
    want = getattr(twin, fn)(*args(w_ih.t().contiguous(), w_hh.t().contiguous()))
    for a, b_ in zip(got, want, strict=True):
        torch.testing.assert_close(a, b_, atol=1e-12, rtol=1e-12)


def test_plan_packs_like_torch_packed_sequence():
    """Sorted longest first, step by step; reverse reads each sequence backwards within its length."""
    x = torch.arange(4 * 3, dtype=D).view(4, 3, 1)  # (T, B, 1): value = t * B + b
    lengths = torch.tensor([2, 4, 0])
    plan = make_plan(4, 3, lengths, reverse=False, device=x.device)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths.clamp(min=1), enforce_sorted=False)
    assert plan.batch_sizes.tolist() == [2, 2, 1, 1]
    assert plan.pack(x).flatten().tolist() == [1, 0, 4, 3, 7, 10]
    assert packed.sorted_indices[:2].tolist() == plan.perm[:2].tolist()
    rev = make_plan(4, 3, lengths, reverse=True, device=x.device)
    assert rev.pack(x).flatten().tolist() == [10, 3, 7, 0, 4, 1]
    y = rev.pack(x)
    unpacked = rev.unpack(y)
    torch.testing.assert_close(unpacked[:2, 0], x[:2, 0])
    torch.testing.assert_close(unpacked[:, 1], x[:, 1])
    assert unpacked[:, 2].eq(0).all() and unpacked[2:, 0].eq(0).all()
    full = make_plan(4, 3, torch.tensor([4, 4, 4]), reverse=False, device=x.device)
    assert full.index is None and full.lengths is None  # no lengths: plain time-major rows, no gather
