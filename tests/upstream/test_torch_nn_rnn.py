"""PyTorch's own RNN tests from ``test/test_nn.py``, run on ``rnnkit.RNN/GRU/LSTM`` by substitution.

Source (see ``NOTES.md`` for the commit and for every test left out): ``TestNN`` and
``TestNNDeviceType`` in ``test/test_nn.py``. ``nn.RNN/GRU/LSTM`` (or ``getattr(nn, mode)``) became
``rnnkit.RNN/GRU/LSTM``; inputs, sizes, loops and assertions are upstream's, ``self.assertX`` became
``assert``/``pytest.raises``/``assert_equal`` (``TestCase.assertEqual``'s default tolerances).

Tests that upstream runs only with cuDNN but whose loop has a CPU branch (``for cuda in (True, False)``)
keep their CPU branch. ``_test_RNN_cpu_vs_cudnn`` compared the CPU implementation with cuDNN; here it
compares rnnkit with ``torch.nn`` on CPU (the reference), with upstream's inputs and tolerances.
"""

from __future__ import annotations

import io
from copy import deepcopy
from functools import partial
from itertools import product

import pytest
import torch
import torch.nn.utils.rnn as rnn_utils
from _upstream import DTYPE2PREC, assert_equal, assert_not_equal, default_dtype

import rnnkit

MODES = {"RNN": rnnkit.RNN, "GRU": rnnkit.GRU, "LSTM": rnnkit.LSTM}
TORCH_NN = {rnnkit.RNN: torch.nn.RNN, rnnkit.GRU: torch.nn.GRU, rnnkit.LSTM: torch.nn.LSTM}


# --- TestNN ----------------------------------------------------------------------------------


def test_rnn_initial_hidden_state():
    for mode in ["RNN", "GRU", "LSTM"]:
        rnn = MODES[mode](30, 20, 2)
        input = torch.randn(10, 32, 30)
        hidden = torch.zeros(2, 32, 20)
        if mode == "LSTM":
            hidden = (hidden, hidden)
        output1, hidden1 = rnn(input, hidden)
        output2, hidden2 = rnn(input)
        assert_equal(output1, output2)
        assert_equal(hidden1, hidden2)


def test_projections_lstm_initial_hidden_state():
    for bidir in [False, True]:
        rnn = rnnkit.LSTM(30, 20, 2, bidirectional=bidir, proj_size=10)
        num_dirs = 2 if bidir else 1
        input = torch.randn(10, 32, 30)
        hidden_h = torch.zeros(2 * num_dirs, 32, 10)
        hidden_c = torch.zeros(2 * num_dirs, 32, 20)
        output1, hidden1 = rnn(input, (hidden_h, hidden_c))
        output2, hidden2 = rnn(input)
        assert_equal(output1, output2)
        assert_equal(hidden1, hidden2)


def _rnnkit_vs_torch_nn(dropout, dtype=torch.double):
    """``_test_RNN_cpu_vs_cudnn``: the module under test is rnnkit's, the reference (upstream: cuDNN) is
    ``torch.nn`` on CPU; inputs, loops and tolerances as upstream."""

    def forward_backward(rnn, input_val, grad_output, weights_val, hx_val, grad_hy, cx_val=None, grad_cy=None):
        is_lstm = isinstance(rnn, (rnnkit.LSTM, torch.nn.LSTM))
        for x_layer, y_layer in zip(rnn.all_weights, weights_val, strict=True):
            for x, y in zip(x_layer, y_layer, strict=True):
                x.data.copy_(y.data)
        if isinstance(input_val, rnn_utils.PackedSequence):
            input = rnn_utils.PackedSequence(input_val.data.data.requires_grad_(True), input_val.batch_sizes)
            input_var = input.data
        else:
            input = input_val.clone().requires_grad_(True)
            input_var = input
        if is_lstm:
            if cx_val is None:
                hx = (hx_val.clone().requires_grad_(True), hx_val.add(1).requires_grad_(True))
            else:
                hx = (hx_val.clone().requires_grad_(True), cx_val.add(1).requires_grad_(True))
        else:
            hx = hx_val.clone().requires_grad_(True)
        output, hy = rnn(input, hx)
        if isinstance(output, rnn_utils.PackedSequence):
            output = output.data
        if is_lstm:
            if grad_cy is None:
                torch.autograd.backward([output, hy[0], hy[1]], [grad_output, grad_hy, grad_hy + 1])
            else:
                torch.autograd.backward([output, hy[0], hy[1]], [grad_output, grad_hy, grad_cy + 1])
        else:
            torch.autograd.backward([output, hy], [grad_output, grad_hy])
        return {"output": output.data,
                "hy": hy[0].data if is_lstm else hy.data,
                "weights": rnn.all_weights,
                "grad_input": input_var.grad.data,
                "grad_hx": hx[0].grad.data if is_lstm else hx.grad.data,
                "cy": hy[1].data if is_lstm else None,
                "grad_cx": hx[1].grad.data if is_lstm else None}  # fmt: skip

    input_size = 10
    hidden_size = 6
    proj_size = 3
    num_layers = 2
    seq_length = 7
    batch = 6

    def make_noncontig(tensor):
        ndim = tensor.dim()
        return torch.stack([tensor.clone().zero_(), tensor], ndim).select(ndim, 1)

    def compare(outputs_rnnkit, outputs_torch):
        assert list(outputs_rnnkit.keys()) == list(outputs_torch.keys())
        for key in outputs_rnnkit:
            if key != "weights":
                assert_equal(outputs_rnnkit[key], outputs_torch[key], atol=5e-5, rtol=0, msg=key)
        for layer_a, layer_b in zip(outputs_rnnkit["weights"], outputs_torch["weights"], strict=True):
            for weight_a, weight_b in zip(layer_a, layer_b, strict=True):
                assert_equal(weight_a.grad.data, weight_b.grad.data, atol=5e-5, rtol=0)

    for module in (rnnkit.RNN, rnnkit.LSTM, rnnkit.GRU):
        for bias, bidirectional, batch_first, contig, variable_len, lens_as_tensor in product((True, False), repeat=6):
            num_directions = 2 if bidirectional else 1
            if batch_first:
                input_val = torch.randn(batch, seq_length, input_size, dtype=dtype)
                grad_output = torch.randn(batch, seq_length, hidden_size * num_directions, dtype=dtype)
            else:
                input_val = torch.randn(seq_length, batch, input_size, dtype=dtype)
                grad_output = torch.randn(seq_length, batch, hidden_size * num_directions, dtype=dtype)
            hx_val = torch.randn(num_layers * num_directions, batch, hidden_size, dtype=dtype)
            grad_hy = torch.randn(num_layers * num_directions, batch, hidden_size, dtype=dtype)
            if not contig:
                grad_output = make_noncontig(grad_output)
                grad_hy = make_noncontig(grad_hy)
                input_var = make_noncontig(input_val)  # noqa: F841 (upstream's: unused there too)
                hx_val = make_noncontig(hx_val)
            if variable_len:
                lengths = [7, 5, 5, 2, 1, 1]
                if lens_as_tensor:
                    lengths = torch.tensor(lengths, dtype=torch.long)
                input_val = rnn_utils.pack_padded_sequence(input_val, lengths, batch_first=batch_first)
                grad_output = rnn_utils.pack_padded_sequence(grad_output, lengths, batch_first=batch_first).data
            kwargs = dict(bias=bias, dropout=dropout, bidirectional=bidirectional, batch_first=batch_first)
            rnn = module(input_size, hidden_size, num_layers, **kwargs).to(dtype)
            outputs_rnnkit = forward_backward(rnn, input_val, grad_output, rnn.all_weights, hx_val, grad_hy)
            rnn_ref = TORCH_NN[module](input_size, hidden_size, num_layers, **kwargs).to(dtype)
            outputs_ref = forward_backward(rnn_ref, input_val, grad_output, rnn.all_weights, hx_val, grad_hy)
            compare(outputs_rnnkit, outputs_ref)

    for nonlinearity in ("tanh", "relu"):
        hx_val = torch.randn(num_layers, batch, hidden_size, dtype=dtype)
        input_val = torch.randn(seq_length, batch, input_size, dtype=dtype)
        grad_output = torch.randn(seq_length, batch, hidden_size * num_directions, dtype=dtype)
        grad_hy = torch.randn(num_layers * num_directions, batch, hidden_size, dtype=dtype)
        rnn = rnnkit.RNN(input_size, hidden_size, num_layers, bias=bias, nonlinearity=nonlinearity).to(dtype)
        outputs_rnnkit = forward_backward(rnn, input_val, grad_output, rnn.all_weights, hx_val, grad_hy)
        rnn_ref = torch.nn.RNN(input_size, hidden_size, num_layers, bias=bias, nonlinearity=nonlinearity).to(dtype)
        outputs_ref = forward_backward(rnn_ref, input_val, grad_output, rnn.all_weights, hx_val, grad_hy)
        compare(outputs_rnnkit, outputs_ref)

    # checking LSTM with projections
    for bias, bidirectional, batch_first, contig, variable_len, lens_as_tensor in product((True, False), repeat=6):
        num_directions = 2 if bidirectional else 1
        if batch_first:
            input_val = torch.randn(batch, seq_length, input_size, dtype=dtype)
            grad_output = torch.randn(batch, seq_length, proj_size * num_directions, dtype=dtype)
        else:
            input_val = torch.randn(seq_length, batch, input_size, dtype=dtype)
            grad_output = torch.randn(seq_length, batch, proj_size * num_directions, dtype=dtype)
        hx_val = torch.randn(num_layers * num_directions, batch, proj_size, dtype=dtype)
        cx_val = torch.randn(num_layers * num_directions, batch, hidden_size, dtype=dtype)
        grad_hy = torch.randn(num_layers * num_directions, batch, proj_size, dtype=dtype)
        grad_cy = torch.randn(num_layers * num_directions, batch, hidden_size, dtype=dtype)
        if not contig:
            grad_output = make_noncontig(grad_output)
            grad_hy = make_noncontig(grad_hy)
            grad_cy = make_noncontig(grad_cy)
            input_var = make_noncontig(input_val)  # noqa: F841
            hx_val = make_noncontig(hx_val)
            cx_val = make_noncontig(cx_val)
        if variable_len:
            lengths = [7, 5, 5, 2, 1, 1]
            if lens_as_tensor:
                lengths = torch.tensor(lengths, dtype=torch.long)
            input_val = rnn_utils.pack_padded_sequence(input_val, lengths, batch_first=batch_first)
            grad_output = rnn_utils.pack_padded_sequence(grad_output, lengths, batch_first=batch_first).data
        kwargs = dict(bias=bias, dropout=dropout, bidirectional=bidirectional, batch_first=batch_first,
                      proj_size=proj_size)  # fmt: skip
        rnn = rnnkit.LSTM(input_size, hidden_size, num_layers, **kwargs).to(dtype)
        outputs_rnnkit = forward_backward(rnn, input_val, grad_output, rnn.all_weights, hx_val, grad_hy,
                                          cx_val, grad_cy)  # fmt: skip
        rnn_ref = torch.nn.LSTM(input_size, hidden_size, num_layers, **kwargs).to(dtype)
        outputs_ref = forward_backward(rnn_ref, input_val, grad_output, rnn.all_weights, hx_val, grad_hy,
                                       cx_val, grad_cy)  # fmt: skip
        compare(outputs_rnnkit, outputs_ref)


def test_RNN_rnnkit_vs_torch_nn_no_dropout():
    """Upstream ``test_RNN_cpu_vs_cudnn_no_dropout``."""
    _rnnkit_vs_torch_nn(0, torch.double)


def test_RNN_rnnkit_vs_torch_nn_with_dropout():
    """Upstream ``test_RNN_cpu_vs_cudnn_with_dropout``: "Because of dropout randomness, can only compare
    dropout=0 and dropout=1"."""
    _rnnkit_vs_torch_nn(1)


def test_RNN_dropout():
    # checking the assumption that cuDNN sticks dropout in between RNN layers (the CPU branch)
    with default_dtype(torch.double):
        for p in (0, 0.276, 0.731, 1):
            for train in (True, False):
                rnn = rnnkit.RNN(10, 1000, 2, bias=False, dropout=p, nonlinearity="relu")
                if train:
                    rnn.train()
                else:
                    rnn.eval()
                rnn.weight_ih_l0.data.fill_(1)
                rnn.weight_hh_l0.data.fill_(1)
                rnn.weight_ih_l1.data.fill_(1)
                rnn.weight_hh_l1.data.fill_(1)
                input = torch.ones(1, 1, 10)
                hx = torch.zeros(2, 1, 1000)
                output, hy = rnn(input, hx)
                assert_equal(output.data.min(), output.data.max())
                output_val = output.data[0][0][0]
                if p == 0 or not train:
                    assert_equal(output_val, 10000)
                elif p == 1:
                    assert_equal(output_val, 0)
                else:
                    assert output_val > 8000
                    assert output_val < 12000
                    denorm_mod = (output_val * (1 - p)) % 10
                    assert min(denorm_mod, 10 - denorm_mod) < 1e-2
                assert_equal(hy[0].data.min(), hy[0].data.max())
                assert_equal(hy[1].data.min(), hy[1].data.max())
                assert_equal(hy.data[0][0][0], 10)
                assert_equal(hy.data[1][0][0], output_val)


def test_RNN_input_size_zero():
    for module in (rnnkit.RNN, rnnkit.LSTM, rnnkit.GRU):
        input = torch.zeros((5, 0, 3))
        rnn = module(input_size=3, hidden_size=4)
        outs = rnn(input)
        assert outs[0].shape == torch.Size([5, 0, 4])
        # Check that backward does not cause a hard error
        outs[0].sum().backward()


def test_error_RNN_seq_len_zero():
    # checking error message when RNN has seq_len = 0 (upstream needs cuDNN but loops over CPU too)
    with default_dtype(torch.double):
        for module in (rnnkit.RNN, rnnkit.LSTM, rnnkit.GRU):
            for bidirectional in [True, False]:
                input = torch.ones(0, 10, 5)
                rnn = module(5, 6, bidirectional=bidirectional)
                with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0 in RNN"):
                    rnn(input)


def test_RNN_dropout_state():
    for p in (0, 0.1234):
        for train in (True, False):
            rnn = rnnkit.RNN(100, 100, 2, bias=False, dropout=p, nonlinearity="relu")
            if train:
                rnn.train()
            else:
                rnn.eval()
            input = torch.rand(1, 1, 100)
            hx = torch.rand(2, 1, 100)
            output1, hy1 = rnn(input, hx)
            output2, hy2 = rnn(input, hx)
            buf = io.BytesIO()
            torch.save(rnn, buf)
            buf.seek(0)
            # weights_only=False as this is legacy code that saves the model
            rnn2 = torch.load(buf, weights_only=False)
            rnn2.flatten_parameters()
            output3, hy3 = rnn2(input, hx)
            if p == 0 or not train:
                assert_equal(output1, output2)
                assert_equal(output1, output3)
                assert_equal(hy1, hy2)
                assert_equal(hy1, hy3)
            else:
                assert_not_equal(output1, output2)
                assert_not_equal(output1, output3)
                assert_not_equal(hy1, hy2)
                assert_not_equal(hy1, hy3)


def test_RNN_change_dropout():
    with default_dtype(torch.double):
        for train in (True, False):
            rnn = rnnkit.RNN(100, 100, 2, dropout=0, nonlinearity="relu")
            input = torch.rand(3, 2, 100)
            if train:
                rnn.train()
            else:
                rnn.eval()
            prev_output = None
            for p in (0, 0.5, 0, 0.7, 0.2, 1, 0.2, 0):
                rnn.dropout = p
                output1, hy1 = rnn(input)
                output2, hy2 = rnn(input)
                if p == 0 or p == 1 or not train:
                    assert_equal(output1, output2)
                    assert_equal(hy1, hy2)
                else:
                    assert_not_equal(output1, output2)
                    assert_not_equal(hy1, hy2)
                if prev_output is not None:
                    if not train:
                        assert_equal(output1.data, prev_output)
                        assert_equal(output2.data, prev_output)
                    else:
                        assert_not_equal(output1.data, prev_output)
                        assert_not_equal(output2.data, prev_output)
                prev_output = output1.data


def test_RNN_nonlinearity_passed_as_arg():
    rnn = rnnkit.RNN(2, 3, 1, "relu")
    assert rnn.nonlinearity == "relu"


def test_rnn_weight_norm():
    def check_weight_norm(l, name, num_params):
        # Applying weight norm on one of them causes it to become a tensor (torch 2.13 notes the helper's
        # deprecation; upstream's harness lets that warning pass, the suite's filterwarnings=error would not)
        with pytest.warns(FutureWarning, match="weight_norm` is deprecated"):
            l = torch.nn.utils.weight_norm(l, name=name)
        assert sum(isinstance(p, torch.nn.Parameter) for p in l._flat_weights) == num_params - 1
        # Removing the weight norm reparametrization restores the Parameter
        l = torch.nn.utils.remove_weight_norm(l, name=name)
        assert sum(isinstance(p, torch.nn.Parameter) for p in l._flat_weights) == num_params
        # The original weight is back in the parameters, the reparametrization's parts are gone.
        assert name in l._parameters
        assert l._parameters[name] is not None
        assert name + "_v" not in l._parameters
        assert name + "_g" not in l._parameters
        assert name in dict(l.named_parameters())
        assert dict(l.named_parameters())[name] is not None
        assert name + "_v" not in dict(l.named_parameters())
        assert name + "_g" not in dict(l.named_parameters())

    check_weight_norm(rnnkit.LSTM(32, 32), "weight_ih_l0", 4)
    check_weight_norm(rnnkit.LSTM(32, 32, proj_size=16), "weight_hr_l0", 5)


# --- TestNNDeviceType (device="cpu") ---------------------------------------------------------------
def test_variable_sequence():
    # @dtypes(torch.float) on CPU
    device, dtype = "cpu", torch.float

    def pad(var, length):
        if var.size(0) == length:
            return var
        return torch.cat([var, var.new_zeros(length - var.size(0), *var.size()[1:])])

    def maybe_index_tuple(maybe_tuple_of_tensors, index):
        if maybe_tuple_of_tensors is None:
            return None
        return tuple(maybe_tuple_of_tensors[j][:, index : index + 1, :].contiguous() for j in range(2))

    def check_lengths(lengths, enforce_sorted, use_default_hiddens, proj_size):
        input_size = 3
        hidden_size = 4
        num_layers = 2
        bidirectional = True
        max_length = max(lengths)
        x_leaf = torch.randn(max_length, len(lengths), input_size, device=device, dtype=dtype, requires_grad=True)
        num_directions = 2 if bidirectional else 1
        lstm = rnnkit.LSTM(input_size, hidden_size, bidirectional=bidirectional, num_layers=num_layers,
                           proj_size=proj_size).to(device, dtype)  # fmt: skip
        lstm2 = deepcopy(lstm).to(device, dtype)
        x = x_leaf
        hidden0 = None
        if not use_default_hiddens:
            real_hidden_size = hidden_size if proj_size == 0 else proj_size
            hidden0 = (torch.randn(num_directions * num_layers, len(lengths), real_hidden_size, device=device,
                                   dtype=dtype),
                       torch.randn(num_directions * num_layers, len(lengths), hidden_size, device=device,
                                   dtype=dtype))  # fmt: skip
        # Compute sequences separately
        seq_outs = []
        seq_hiddens = []
        for i, l in enumerate(lengths):
            hidden_i = maybe_index_tuple(hidden0, i)
            out, hid = lstm2(x[:l, i : i + 1], hidden_i)
            seq_outs.append(pad(out, max_length))
            seq_hiddens.append(hid)
        seq_out = torch.cat(seq_outs, 1)
        seq_hidden = tuple(torch.cat(hids, 1) for hids in zip(*seq_hiddens, strict=True))
        # Use packed format
        packed = rnn_utils.pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
        packed_out, packed_hidden = lstm(packed, hidden0)
        unpacked, unpacked_len = rnn_utils.pad_packed_sequence(packed_out)
        # Check forward
        prec = DTYPE2PREC[dtype]
        assert_equal(packed_hidden, seq_hidden, atol=prec, rtol=0)
        assert_equal(unpacked, seq_out, atol=prec, rtol=0)
        assert_equal(unpacked_len, torch.tensor(lengths), atol=prec, rtol=0)
        # Check backward
        seq_out.sum().backward()
        grad_x = x_leaf.grad.data.clone()
        x_leaf.grad.data.zero_()
        unpacked.sum().backward()
        assert_equal(x_leaf.grad, grad_x, atol=DTYPE2PREC[dtype], rtol=0)
        for p1, p2 in zip(lstm.parameters(), lstm2.parameters(), strict=True):
            prec = DTYPE2PREC[dtype]
            if dtype == torch.float16:
                prec = 4e-2
            elif dtype == torch.float32:
                prec = 2e-4
            assert_equal(p1.grad, p2.grad, atol=prec, rtol=0)

    tests = [
        # enforce_sorted, lengths
        [True, [5]],
        [False, [5]],
        [True, [10, 10, 6, 2, 2, 1, 1]],
        [False, [10, 10, 6, 2, 2, 1, 1]],
        [False, [2, 1, 3, 2, 10, 5, 3]],
    ]
    for enforce_sorted, seq_lens in tests:
        for use_default_hiddens in (True, False):
            for proj_size in [0, 2]:
                check_lengths(seq_lens, enforce_sorted, use_default_hiddens, proj_size)


def test_rnn_retain_variables():
    # @dtypes(torch.double) on CPU
    device, dtype = "cpu", torch.double
    rnns = [rnnkit.LSTM(10, 20, num_layers=2).to(device, dtype),
            rnnkit.GRU(10, 20, num_layers=2).to(device, dtype),
            rnnkit.RNN(10, 20, num_layers=2).to(device, dtype)]  # fmt: skip
    for rnn in rnns:
        input = torch.randn(5, 6, 10, device=device, dtype=dtype, requires_grad=True)
        output = rnn(input)
        output[0].sum().backward(retain_graph=True)
        grads = [input.grad.data.clone()] + [p.grad.data.clone() for p in rnn.parameters()]
        for _ in range(4):
            rnn.zero_grad()
            input.grad.data.zero_()
            output[0].sum().backward(retain_graph=True)
            grads2 = [input.grad.data] + [p.grad.data for p in rnn.parameters()]
            assert_equal(grads, grads2)


def _flatten_out(mod, inp):
    out = mod(inp)
    return tuple([t if isinstance(t, torch.Tensor) else tt for t in out for tt in t])


@pytest.mark.parametrize("module", [rnnkit.LSTM, rnnkit.GRU], ids=["LSTM", "GRU"])
def test_grad_and_gradgrad__gradcheck_part(module):
    """``test_LSTM_grad_and_gradgrad`` / ``test_GRU_grad_and_gradgrad``, their ``gradcheck`` half; the
    whole test (with ``gradgradcheck``) is in ``test_strict_ports.py`` until second-order
    gradients work on the default engine."""
    hsize = 4
    inp = torch.rand(1, 3, hsize, dtype=torch.double, requires_grad=True)
    for bias in [True, False]:
        mod = module(hsize, hsize, bias=bias).to(torch.double)
        torch.autograd.gradcheck(partial(_flatten_out, mod), inp, check_batched_grad=False)
