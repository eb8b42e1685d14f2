"""rnnkit.RNN/LSTM/GRU against torch.nn itself: outputs, final states and every gradient, after a state dict.

Every combination of num_layers {1, 2, 3}, bidirectional, batch_first, bias, proj_size (LSTM), nonlinearity
(RNN) and input kind (batched, unbatched, PackedSequence), in both state-dict directions. Tolerance 1e-5
(float32, eval mode).
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnkit.layers import GRU, LSTM, RNN

# torch.nn.LSTM with proj_size warns that oneDNN cannot run it; pyproject turns warnings into errors.
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

TOL = {"atol": 1e-5, "rtol": 1e-5}
I, H, P, T, B = 3, 5, 2, 4, 3
LENGTHS = [4, 2, 3]  # unsorted on purpose: PackedSequence and lengths= must keep the caller's batch order

# kind -> (torch class, rnnkit class, extra constructor arguments)
KINDS = {
    "rnn_tanh": (torch.nn.RNN, RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (torch.nn.RNN, RNN, {"nonlinearity": "relu"}),
    "gru": (torch.nn.GRU, GRU, {}),
    "lstm": (torch.nn.LSTM, LSTM, {}),
    "lstm_proj": (torch.nn.LSTM, LSTM, {"proj_size": P}),
}


def _hidden_shapes(kind, layers, directions, batch):
    lead = (layers * directions,) + ((batch,) if batch else ())
    if kind.startswith("lstm"):
        return [lead + (P if kind == "lstm_proj" else H,), lead + (H,)]
    return [lead + (H,)]


def _pack_hidden(kind, parts):
    return tuple(parts) if kind.startswith("lstm") else parts[0]


def _flat(x):
    """The tensors of an output structure, in order (PackedSequence -> its data)."""
    if isinstance(x, PackedSequence):
        return [x.data]
    if isinstance(x, (tuple, list)):
        return [t for item in x for t in _flat(item)]
    return [x]


def _run_and_grad(module, make_inputs, x, hx, weights, lengths=None):
    """Forward, then backward of ``sum(output * weight)`` over every output; returns outputs and all gradients
    (parameters by name, the input leaf ``x``, each hidden-state tensor)."""
    for p in module.parameters():
        p.grad = None
    x.grad = None
    for h in _flat(hx):
        h.grad = None
    kwargs = {} if lengths is None else {"lengths": lengths}
    out = module(make_inputs(x), hx, **kwargs)
    loss = sum((o * w).sum() for o, w in zip(_flat(out), weights, strict=True))
    loss.backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters()}
    grads["input"] = x.grad.clone()
    grads.update({f"hx{j}": h.grad.clone() for j, h in enumerate(_flat(hx))})
    return out, grads


def _assert_same(out_ref, grads_ref, out, grads):
    for a, b in zip(_flat(out_ref), _flat(out), strict=True):
        torch.testing.assert_close(b, a, **TOL)
    assert grads.keys() == grads_ref.keys()
    for name in grads_ref:
        torch.testing.assert_close(grads[name], grads_ref[name], **TOL, msg=lambda m, n=name: f"grad {n}: {m}")


COMBOS = list(
    itertools.product(KINDS, [1, 2, 3], [False, True], [False, True], [False, True], ["batched", "unbatched", "packed"])
)


@pytest.mark.parametrize("load", ["torch_to_rnnkit", "rnnkit_to_torch"])
@pytest.mark.parametrize("kind,layers,bidirectional,batch_first,bias,input_kind", COMBOS)
def test_matches_torch_nn(kind, layers, bidirectional, batch_first, bias, input_kind, load):
    torch_cls, ours_cls, extra = KINDS[kind]
    kwargs = dict(num_layers=layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional, **extra)
    ref, ours = torch_cls(I, H, **kwargs).eval(), ours_cls(I, H, **kwargs).eval()
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    if load == "torch_to_rnnkit":
        ours.load_state_dict(ref.state_dict())
    else:
        ref.load_state_dict(ours.state_dict())

    directions = 2 if bidirectional else 1
    if input_kind == "unbatched":
        x = torch.randn(T, I, requires_grad=True)
    else:
        x = (torch.randn(B, T, I) if batch_first else torch.randn(T, B, I)).requires_grad_()

    def make_inputs(x):
        return pack_padded_sequence(x, LENGTHS, batch_first, enforce_sorted=False) if input_kind == "packed" else x

    shapes = _hidden_shapes(kind, layers, directions, None if input_kind == "unbatched" else B)
    hx = _pack_hidden(kind, [torch.randn(s, requires_grad=True) for s in shapes])

    with torch.no_grad():
        weights = [torch.randn_like(t) for t in _flat(ref(make_inputs(x), hx))]
    out_ref, grads_ref = _run_and_grad(ref, make_inputs, x, hx, weights)
    out, grads = _run_and_grad(ours, make_inputs, x, hx, weights)
    _assert_same(out_ref, grads_ref, out, grads)
    if input_kind == "packed":
        for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            assert torch.equal(getattr(out[0], field), getattr(out_ref[0], field))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_lengths_equal_pack_padded_sequence(kind, bidirectional, batch_first):
    """lengths= on padded input == torch.nn on pack_padded_sequence(enforce_sorted=False), padded back."""
    torch_cls, ours_cls, extra = KINDS[kind]
    kwargs = dict(num_layers=2, batch_first=batch_first, bidirectional=bidirectional, **extra)
    ref, ours = torch_cls(I, H, **kwargs).eval(), ours_cls(I, H, **kwargs).eval()
    ours.load_state_dict(ref.state_dict())
    lengths = [4, 1, 3]
    x = (torch.randn(B, T, I) if batch_first else torch.randn(T, B, I)).requires_grad_()
    shapes = _hidden_shapes(kind, 2, 2 if bidirectional else 1, B)
    hx = _pack_hidden(kind, [torch.randn(s, requires_grad=True) for s in shapes])

    class Packed(torch.nn.Module):  # torch.nn, driven the PackedSequence way
        def __init__(self):
            super().__init__()
            self.rnn = ref

        def forward(self, x, hx, lengths):
            out, h = self.rnn(pack_padded_sequence(x, lengths, batch_first, enforce_sorted=False), hx)
            return pad_packed_sequence(out, batch_first, total_length=T)[0], h

    packed = Packed()
    with torch.no_grad():
        weights = [torch.randn_like(t) for t in _flat(packed(x, hx, lengths))]
    out_ref, grads_ref = _run_and_grad(packed, lambda x: x, x, hx, weights, lengths)
    grads_ref = {k.removeprefix("rnn."): v for k, v in grads_ref.items()}
    for given in (lengths, torch.tensor(lengths)):
        out, grads = _run_and_grad(ours, lambda x: x, x, hx, weights, given)
        _assert_same(out_ref, grads_ref, out, grads)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_length_sequence_keeps_initial_state(kind):
    """torch cannot pack a length 0; lengths= gives TF's answer: zero outputs, h_n = h_0."""
    _, ours_cls, extra = KINDS[kind]
    ours = ours_cls(I, H, num_layers=2, bidirectional=True, **extra)
    hx = _pack_hidden(kind, [torch.randn(s) for s in _hidden_shapes(kind, 2, 2, B)])
    out, h_n = ours(torch.randn(T, B, I), hx, lengths=[0, 4, 2])
    assert torch.equal(out[:, 0], torch.zeros_like(out[:, 0]))
    assert torch.equal(out[2:, 2], torch.zeros_like(out[2:, 2]))
    for got, start in zip(_flat(h_n), _flat(hx), strict=True):
        assert torch.equal(got[:, 0], start[:, 0])


@pytest.mark.parametrize("kind", KINDS)
def test_default_hidden_state_is_zeros_as_torch(kind):
    torch_cls, ours_cls, extra = KINDS[kind]
    ref, ours = (cls(I, H, num_layers=2, bidirectional=True, **extra) for cls in (torch_cls, ours_cls))
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I)
    for a, b in zip(_flat(ref(x)), _flat(ours(x)), strict=True):
        torch.testing.assert_close(b, a, **TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_gives_torch_nn_initial_values(kind):
    torch_cls, ours_cls, extra = KINDS[kind]
    torch.manual_seed(3)
    ref = torch_cls(I, H, num_layers=2, bidirectional=True, **extra)
    torch.manual_seed(3)
    ours = ours_cls(I, H, num_layers=2, bidirectional=True, **extra)
    bound = 1 / H**0.5
    for (name, a), (name_ours, b) in zip(ref.state_dict().items(), ours.state_dict().items(), strict=True):
        assert name == name_ours and torch.equal(a, b)
        assert b.abs().max() <= bound
    assert ours._flat_weights_names == ref._flat_weights_names
    assert ours._all_weights == ref._all_weights
    assert [[w.shape for w in ws] for ws in ours.all_weights] == [[w.shape for w in ws] for ws in ref.all_weights]
    assert all(torch.equal(a, b) for a, b in zip(ours._flat_weights, ref._flat_weights, strict=True))
    ours.flatten_parameters()  # accepted, as torch's


def test_seed_example_rnn_100_20_3():
    """The seed article's example: torch.nn.RNN(100, 20, 3), its parameter shapes and output shapes."""
    rnn = RNN(100, 20, 3)
    params = dict(rnn._parameters)
    assert tuple(params["weight_ih_l0"].shape) == (20, 100)
    assert tuple(params["weight_ih_l1"].shape) == (20, 20)
    assert tuple(params["weight_ih_l2"].shape) == (20, 20)
    for k in range(3):
        assert tuple(params[f"bias_ih_l{k}"].shape) == (20,)
        assert tuple(params[f"bias_hh_l{k}"].shape) == (20,)
    x = torch.randn(5, 2, 100)
    output, h_n = rnn(x)
    assert tuple(output.shape) == (5, 2, 20) and tuple(h_n.shape) == (3, 2, 20)

    birnn = RNN(100, 20, 3, bidirectional=True).eval()
    output, h_n = birnn(x)
    assert tuple(output.shape) == (5, 2, 40) and tuple(h_n.shape) == (6, 2, 20)
    directions = output.view(5, 2, 2, 20)  # (seq_len, batch, num_directions, hidden)
    layers = h_n.view(3, 2, 2, 20)  # (num_layers, num_directions, batch, hidden)
    assert torch.equal(directions[-1, :, 0], layers[-1, 0])  # forward: its last step
    assert torch.equal(directions[0, :, 1], layers[-1, 1])  # backward: its last step is time 0
    ref = torch.nn.RNN(100, 20, 3, bidirectional=True)
    ref.load_state_dict(birnn.state_dict())
    torch.testing.assert_close(output, ref(x)[0], **TOL)


def test_module_plumbing_double_deepcopy_optimizer_functional_call():
    ref = torch.nn.LSTM(I, H, 2, proj_size=P, bidirectional=True)
    ours = LSTM(I, H, 2, proj_size=P, bidirectional=True)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    # .double() / .to(dtype): the cells read the converted parameters.
    torch.testing.assert_close(ours.double()(x)[0], ref.double()(x)[0], atol=1e-12, rtol=0)
    ours.to(torch.float32)
    ref.float()
    x = x.float()
    # deepcopy: an independent module that computes the same.
    twin = copy.deepcopy(ours)
    torch.testing.assert_close(twin(x)[0], ours(x)[0], atol=0, rtol=0)
    with torch.no_grad():
        twin.weight_hh_l0.add_(1.0)
    assert not torch.equal(twin(x)[0], ours(x)[0])
    # One optimiser step on each: still equal.
    opt_ref, opt_ours = (torch.optim.SGD(m.parameters(), lr=0.5) for m in (ref, ours))
    for m, opt in ((ref, opt_ref), (ours, opt_ours)):
        opt.zero_grad()
        m(x)[0].square().sum().backward()
        opt.step()
    torch.testing.assert_close(ours(x)[0], ref(x)[0], **TOL)
    # functional_call and load_state_dict(assign=True) replace the parameter objects: the layer follows.
    zeros = {n: torch.zeros_like(p) for n, p in ours.named_parameters()}
    assert torch.count_nonzero(torch.func.functional_call(ours, zeros, (x,))[0]) == 0
    ours.load_state_dict(ref.state_dict(), assign=True)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], **TOL)


@pytest.mark.parametrize(
    "ours_cls, torch_cls, options, extra_keys",
    [
        (LSTM, torch.nn.LSTM, {"forget_bias": 1.0, "cell_clip": 2.0, "zoneout": 0.1, "recurrent_dropout": 0.2}, []),
        (GRU, torch.nn.GRU, {"reset_after": False, "zoneout": 0.1}, []),
        (RNN, torch.nn.RNN, {"recurrent_dropout": 0.3}, []),
        (LSTM, torch.nn.LSTM, {"peepholes": True}, ["weight_ci", "weight_cf", "weight_co"]),
        (
            LSTM,
            torch.nn.LSTM,
            {"layer_norm": True},
            ["weight_ln_gates", "bias_ln_gates", "weight_ln_cell", "bias_ln_cell"],
        ),
    ],
)
def test_tf_options_keep_torch_state_dicts_loadable(ours_cls, torch_cls, options, extra_keys):
    """Run-time options keep torch.nn's exact key set (strict loads both ways); parameter-adding options add only
    their own keys, so torch.nn's state dict loads with strict=False and reports exactly those as missing."""
    ref, ours = torch_cls(I, H, 2, bidirectional=True), ours_cls(I, H, 2, bidirectional=True, **options)
    if not extra_keys:
        ours.load_state_dict(ref.state_dict())
        ref.load_state_dict(ours.state_dict())
        return
    result = ours.load_state_dict(ref.state_dict(), strict=False)
    expected = {f"{role}_l{k}{sfx}" for role in extra_keys for k in range(2) for sfx in ("", "_reverse")}
    assert set(result.missing_keys) == expected and not result.unexpected_keys
    assert all(torch.equal(ours.state_dict()[n], p) for n, p in ref.state_dict().items())
