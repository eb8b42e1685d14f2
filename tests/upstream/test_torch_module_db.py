"""PyTorch's module-database tests for ``nn.RNN``/``nn.GRU``/``nn.LSTM``, run on ``rnnkit.RNN/GRU/LSTM``.

Source (see ``NOTES.md``): the ``ModuleInfo`` entries of ``torch/testing/_internal/common_modules.py``
(torch 2.13.0, as installed: ``module_inputs_torch_nn_RNN_GRU``, ``module_inputs_torch_nn_LSTM``,
``module_error_inputs_torch_nn_RNN_GRU``, ``no_batch_dim_reference_rnn_gru``/``_lstm``) driven as
``test/test_modules.py`` drives them (``test_forward``, ``test_grad``, ``test_gradgrad``, ``test_errors``,
``test_repr``, ``test_pickle``, ``test_non_contiguous_tensors``), on CPU, for the dtypes and train/eval
modes upstream uses (``floating_types()``; ``train_and_eval_differ=True`` gives both modes).

The sample generators are transcribed, not imported (see ``_upstream.py``). Substitution: the module
class is rnnkit's; where upstream compares with a reference function (the batched call of the same
module), that comparison is kept, and each sample is also compared with ``torch.nn`` loaded with the
same state dict.

One deviation, kept visible: upstream's ``gradcheck``/``gradgradcheck`` wrappers also run the
*batched-gradient* (vmap) sub-check. Here ``test_grad``/``test_gradgrad`` check the gradients with it
off; the faithful calls (sub-check on) are in ``test_strict_ports.py`` until the engine's ops have
batching rules.
"""

from __future__ import annotations

import io
import pickle
import warnings
from copy import deepcopy
from functools import partial
from itertools import product

import pytest
import torch
from _upstream import UPSTREAM_GRADCHECK_DEFAULTS, assert_equal, freeze_rng_state
from torch.nn.utils.rnn import pack_padded_sequence
from torch.testing import make_tensor
from torch.utils._pytree import tree_flatten, tree_unflatten

import rnnkit

TORCH_NN = {rnnkit.RNN: torch.nn.RNN, rnnkit.GRU: torch.nn.GRU, rnnkit.LSTM: torch.nn.LSTM}
MODULES = [rnnkit.RNN, rnnkit.GRU, rnnkit.LSTM]
DTYPES = [torch.float32, torch.float64]  # common_dtype.floating_types()


# ---------------------------------------------------------------------------------------------
# common_modules.py, transcribed: the samples and the reference functions.
# ---------------------------------------------------------------------------------------------
def no_batch_dim_reference_rnn_gru(m, p, *args, **kwargs):
    """Unbatched inputs unsqueezed into a batch of one, outputs squeezed back (upstream's reference)."""
    if len(args) == 1:
        (inp,) = args
        h = None
    elif len(args) == 2:
        inp, h = args
        h = h.unsqueeze(1)
    batch_dim = 0 if kwargs["batch_first"] else 1
    kwargs.pop("batch_first")
    inp = inp.unsqueeze(batch_dim)
    with freeze_rng_state():
        output = m(inp, h, **kwargs)
        return (output[0].squeeze(batch_dim), output[1].squeeze(1))


def no_batch_dim_reference_lstm(m, p, *args, **kwargs):
    if len(args) == 1:
        (inp,) = args
        h = None
    elif len(args) == 2:
        inp, h = args
        h = (h[0].unsqueeze(1), h[1].unsqueeze(1))
    batch_dim = 0 if kwargs["batch_first"] else 1
    kwargs.pop("batch_first")
    inp = inp.unsqueeze(batch_dim)
    with freeze_rng_state():
        output = m(inp, h, **kwargs)
        return (output[0].squeeze(batch_dim), (output[1][0].squeeze(1), output[1][1].squeeze(1)))


class Sample:
    """``ModuleInput``: constructor arguments, forward arguments, reference function."""

    def __init__(self, cons_kwargs, forward_args, reference_fn=None, cons_args=()):
        self.cons_args, self.cons_kwargs = cons_args, cons_kwargs
        self.forward_args, self.reference_fn = forward_args, reference_fn

    def __repr__(self) -> str:
        shapes = [tuple(t.shape) for t in tree_flatten(self.forward_args)[0]]
        return f"Sample({self.cons_args}, {self.cons_kwargs}, {shapes})"


def make_packed_sequence(inp, batch_sizes):
    required_grad = inp.requires_grad
    inp.requires_grad_(False)  # user won't have access to inp so won't be able to get its grads
    seq = pack_padded_sequence(inp, batch_sizes)
    seq.data.requires_grad_(required_grad)
    return seq


def module_inputs_rnn_gru(dtype, requires_grad, is_rnn, with_packed_sequence=False):
    """``module_inputs_torch_nn_RNN_GRU``."""
    make_input = partial(make_tensor, device="cpu", dtype=dtype, requires_grad=requires_grad)
    nonlinearity, bias, batch_first, bidirectional = ("relu", "tanh"), (False, True), (False, True), (False, True)
    samples = []
    prod_gen = product(nonlinearity, bias, batch_first, bidirectional) if is_rnn else product(
        bias, batch_first, bidirectional
    )
    for args in prod_gen:
        if is_rnn:
            nl, b, b_f, bidir = args
        else:
            b, b_f, bidir = args
        cons_args = {"input_size": 2, "hidden_size": 2, "num_layers": 2,
                     "batch_first": b_f, "bias": b, "bidirectional": bidir}  # fmt: skip
        cons_args_hidden = {"input_size": 2, "hidden_size": 3, "num_layers": 2,
                            "batch_first": b_f, "bias": b, "bidirectional": bidir}  # fmt: skip
        if is_rnn:
            cons_args["nonlinearity"] = nl
            cons_args_hidden["nonlinearity"] = nl
        reference = partial(no_batch_dim_reference_rnn_gru, batch_first=b_f)
        samples.append(Sample(cons_args, (make_input((3, 2)),), reference))
        samples.append(Sample(cons_args_hidden, (make_input((3, 2)), make_input((4 if bidir else 2, 3))), reference))
        if with_packed_sequence:
            samples.append(Sample(cons_args, (make_packed_sequence(make_input((5, 2, 2)), torch.tensor([5, 3])),),
                                  reference))  # fmt: skip
            packed = make_packed_sequence(make_input((5, 5, 2)), torch.tensor([5, 3, 3, 2, 2]))
            samples.append(Sample(cons_args, (packed,), reference))
    return samples


def module_inputs_lstm(dtype, requires_grad):
    """``module_inputs_torch_nn_LSTM``."""
    make_input = partial(make_tensor, device="cpu", dtype=dtype, requires_grad=requires_grad)
    samples = []
    for b, b_f, bidir, proj_size in product((False, True), (False, True), (False, True), (0, 2)):
        hidden_size = 3
        cons_args = {"input_size": 2, "hidden_size": hidden_size, "num_layers": 2, "proj_size": proj_size,
                     "batch_first": b_f, "bias": b, "bidirectional": bidir}  # fmt: skip
        cons_args_hidden = dict(cons_args)
        reference = partial(no_batch_dim_reference_lstm, batch_first=b_f)
        samples.append(Sample(cons_args, (make_input((2, 2)),), reference))
        h_out = proj_size if proj_size > 0 else hidden_size
        hx = (make_input((4 if bidir else 2, h_out)), make_input((4 if bidir else 2, hidden_size)))
        samples.append(Sample(cons_args_hidden, (make_input((3, 2)), hx), reference))
    return samples


def module_inputs(module_cls, dtype, requires_grad):
    if module_cls is rnnkit.LSTM:
        return module_inputs_lstm(dtype, requires_grad)
    return module_inputs_rnn_gru(dtype, requires_grad, is_rnn=module_cls is rnnkit.RNN)


CONSTRUCTION, FORWARD = "construction", "forward"


def module_error_inputs_rnn_gru(dtype):
    """``module_error_inputs_torch_nn_RNN_GRU``: (when, constructor args/kwargs, forward args, class, regex)."""
    mismatched_dtype = torch.float64 if dtype == torch.float32 else torch.float32
    make_input = partial(make_tensor, device="cpu", dtype=mismatched_dtype, requires_grad=False)
    return [
        (CONSTRUCTION, (10, 0, 1), {}, None, ValueError, "hidden_size must be greater than zero"),
        (CONSTRUCTION, (10, 10, 0), {}, None, ValueError, "num_layers must be greater than zero"),
        (FORWARD, (3, 5), {"dtype": dtype, "device": "cpu"}, (make_input((2, 4, 3)),), ValueError,
         r"RNN input dtype .* does not match weight dtype .* "
         r"Convert input: input\.to\(.*\), or convert model: model\.to\(.*\)"),
        (CONSTRUCTION, (3, 5), {"bias": 0}, None, TypeError, "bias should be of type bool, got: int"),
        (CONSTRUCTION, (3, 5), {"bias": 1}, None, TypeError, "bias should be of type bool, got: int"),
        (CONSTRUCTION, (3, 5), {"bias": "True"}, None, TypeError, "bias should be of type bool, got: str"),
        (CONSTRUCTION, (3, 5), {"batch_first": 0}, None, TypeError, "batch_first should be of type bool, got: int"),
        (CONSTRUCTION, (3, 5), {"batch_first": 1}, None, TypeError, "batch_first should be of type bool, got: int"),
        (CONSTRUCTION, (3, 5), {"batch_first": "False"}, None, TypeError,
         "batch_first should be of type bool, got: str"),
        (CONSTRUCTION, (3.0, 5), {}, None, TypeError, "input_size should be of type int, got: float"),
        (CONSTRUCTION, ("10", 5), {}, None, TypeError, "input_size should be of type int, got: str"),
        (CONSTRUCTION, (0, 5), {}, None, ValueError, "input_size must be greater than zero"),
        (CONSTRUCTION, (-1, 5), {}, None, ValueError, "input_size must be greater than zero"),
        (CONSTRUCTION, (3, 5.0), {}, None, TypeError, "hidden_size should be of type int, got: float"),
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# test_modules.py's tests, substituted.
# ---------------------------------------------------------------------------------------------
def _make(module_cls, sample, dtype, training):
    m = module_cls(*sample.cons_args, **sample.cons_kwargs)
    m.to("cpu").to(dtype)
    m.train(training)
    return m


def _torch_nn_twin(module_cls, sample, m):
    ref = TORCH_NN[module_cls](*sample.cons_args, **sample.cons_kwargs).to(next(m.parameters()).dtype)
    ref.load_state_dict(m.state_dict())
    ref.train(m.training)
    return ref


def _assert_parameters_are(m, dtype):
    for name, p in m.named_parameters():
        assert p.device == torch.device("cpu"), f"Parameter {name} is on {p.device}"
        assert p.dtype == dtype, f"Parameter {name} is of dtype {p.dtype} instead of the expected dtype {dtype}"


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("module_cls", MODULES, ids=lambda c: c.__name__)
def test_forward(module_cls, dtype, training):
    for sample in module_inputs(module_cls, dtype, requires_grad=False):
        with freeze_rng_state():
            m = _make(module_cls, sample, dtype, training)
            outputs = m(*sample.forward_args)
            ref_outputs = sample.reference_fn(m, list(m.parameters()), *sample.forward_args)
            assert_equal(outputs, ref_outputs, msg=f"{sample}")
            # torch.nn itself, with the same parameters, is the reference implementation.
            twin = _torch_nn_twin(module_cls, sample, m)
            with warnings.catch_warnings():  # torch.nn's own notice, not rnnkit's
                warnings.filterwarnings("ignore", "LSTM with projections is not supported with oneDNN")
                assert_equal(outputs, twin(*sample.forward_args), msg=f"{sample}")
            {torch.float32: m.float, torch.float64: m.double}[dtype]()
            m(*sample.forward_args)
            _assert_parameters_are(m, dtype)


def _gradients_helper(module_cls, training, check):
    """``TestModule._test_gradients_helper``: the total derivative, then each partial one."""
    dtype = torch.float64
    for sample in module_inputs(module_cls, dtype, requires_grad=True):
        m = _make(module_cls, sample, dtype, training)
        params = tuple(m.parameters())
        input_args = sample.forward_args

        n_args = len(input_args)

        def fn_to_gradcheck(*flat_input_and_params, m=m, n_args=n_args):
            # flat_spec is read when called: upstream re-flattens before each check (late binding is meant)
            input_and_params = tree_unflatten(list(flat_input_and_params), flat_spec)  # noqa: B023
            with freeze_rng_state():
                output = m(*input_and_params[:n_args])
                return tuple(tree_flatten(output)[0])

        grad_input = input_args + params
        flat_input, flat_spec = tree_flatten(grad_input)
        assert check(fn_to_gradcheck, flat_input, nondet_tol=0.0), f"{sample}"

        old_params_requires_grad = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad = False
        for p, old in zip(params, old_params_requires_grad, strict=True):
            p.requires_grad = old
            flat_input, flat_spec = tree_flatten(input_args + params)
            assert check(fn_to_gradcheck, flat_input, nondet_tol=0.0), f"{sample}"
            p.requires_grad = False


# Upstream's defaults minus the batched-gradient sub-check (that part: test_strict_ports.py).
GRADCHECK_KWARGS = {**UPSTREAM_GRADCHECK_DEFAULTS, "check_batched_grad": False}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("module_cls", MODULES, ids=lambda c: c.__name__)
def test_grad(module_cls, training):
    _gradients_helper(module_cls, training, partial(torch.autograd.gradcheck, **GRADCHECK_KWARGS))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("module_cls", MODULES, ids=lambda c: c.__name__)
def test_repr(module_cls, dtype, training):
    for sample in module_inputs(module_cls, dtype, requires_grad=False):
        m = _make(module_cls, sample, dtype, training)
        m.__repr__()
        str(m)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("module_cls", MODULES, ids=lambda c: c.__name__)
def test_pickle(module_cls, dtype, training):
    for sample in module_inputs(module_cls, dtype, requires_grad=False):
        with freeze_rng_state():
            m = _make(module_cls, sample, dtype, training)
            output = m(*sample.forward_args)
            f = io.BytesIO()
            torch.save(m, f)
            f.seek(0)
            m_copy = torch.load(f, weights_only=False)  # a whole module: upstream's torch.load default then
            assert_equal(output, m_copy(*sample.forward_args))
    assert pickle.loads(pickle.dumps(m)) is not None


def _traverse(obj, func):
    if isinstance(obj, (tuple, list)):
        return type(obj)(_traverse(o, func) for o in obj)
    if isinstance(obj, torch.Tensor):
        return func(obj)
    return obj


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("module_cls", MODULES, ids=lambda c: c.__name__)
def test_non_contiguous_tensors(module_cls, dtype, training):
    def make_non_contiguous(obj):
        def inner(t):
            if t.dim() == 0:
                return t
            out = torch.repeat_interleave(t, 2, dim=-1)[..., ::2].detach()
            out.requires_grad = t.requires_grad
            return out

        return _traverse(obj, inner)

    def grads_of(obj):
        return _traverse(obj, lambda t: t.grad if t.requires_grad else None)

    def zero_grad(obj):
        def inner(t):
            t.grad = None
            return t

        _traverse(obj, inner)

    def backward(out, g_out):
        for o, g in zip(tree_flatten(out)[0], tree_flatten(g_out)[0], strict=True):
            if o.requires_grad:
                o.backward(g, retain_graph=True)

    for sample in module_inputs(module_cls, dtype, requires_grad=True):
        input_args = sample.forward_args
        m = _make(module_cls, sample, dtype, training)
        with freeze_rng_state():
            default_output = m(*input_args)
            grad_output = _traverse(default_output, lambda o: o.clone().detach_().normal_())
            backward(default_output, grad_output)
        default_input_grad = deepcopy(grads_of(input_args))
        default_param_grad = deepcopy([p.grad for p in m.parameters()])
        nc_input_args = make_non_contiguous(input_args)
        nc_grad_output = make_non_contiguous(grad_output)
        for in_args, g_out in product([input_args, nc_input_args], [grad_output, nc_grad_output]):
            g_out_copy = deepcopy(g_out)
            zero_grad(in_args)
            zero_grad(list(m.parameters()))
            with freeze_rng_state():
                out = m(*in_args)
                backward(out, g_out_copy)
            assert_equal(out, default_output)
            assert_equal(grads_of(in_args), default_input_grad, atol=1e-4, rtol=0)
            assert_equal([p.grad for p in m.parameters()], default_param_grad)
