"""More of PyTorch's module-database tests for ``nn.RNN``/``nn.GRU``/``nn.LSTM``, run on ``rnnkit.RNN/GRU/LSTM``.

Source (see ``NOTES.md``): ``test/test_modules.py`` (``test_factory_kwargs``, ``test_memory_format``,
``test_if_train_and_eval_modes_differ``) over the ``ModuleInfo`` entries of
``torch/testing/_internal/common_modules.py`` (torch 2.13.0), whose samples ``test_torch_module_db.py``
transcribes and this file reuses. Driven as upstream drives them on CPU: ``floating_types()`` (float32,
float64), train and eval (``train_and_eval_differ=True``) except where upstream's decorator says
``TrainEvalMode.train_only``. The RNN/GRU/LSTM entries skip none of these tests on CPU.

The two ``common_utils`` helpers used, ``mock_wrapper`` and ``get_tensors_from``, are transcribed below
(that package is not imported, see ``_upstream.py``); the mocks are ``unittest.mock``'s, as upstream's.
``TestCase.assertEqual`` with ``rtol=atol=None`` is ``assert_equal`` (dtype-based defaults).
"""

from __future__ import annotations

from functools import wraps
from unittest.mock import MagicMock, patch

import pytest
import torch
from _upstream import assert_equal, freeze_rng_state
from test_torch_module_db import DTYPES, MODULES, module_inputs
from torch.utils._pytree import tree_flatten

# The ModuleInfo flag of all three entries (common_modules.py: ``train_and_eval_differ=True``).
TRAIN_AND_EVAL_DIFFER = True


def mock_wrapper(method):
    """``common_utils.mock_wrapper``: the method, recording each call's arguments in ``wrapper.mock``."""
    mock = MagicMock()

    @wraps(method)
    def wrapper(self, *args, **kwargs):
        mock(*args, **kwargs)
        return method(self, *args, **kwargs)

    wrapper.mock = mock
    return wrapper


def get_tensors_from(args, kwargs):
    """``common_utils.get_tensors_from``: the tensors among the positional and keyword arguments."""
    return {arg for arg in args if isinstance(arg, torch.Tensor)}.union(
        v for v in kwargs.values() if isinstance(v, torch.Tensor)
    )


def _assert_module_parameters_and_buffer_are(module, device, dtype):
    """``TestModule._assert_module_parameters_and_buffer_are``."""
    if not isinstance(device, torch.device):
        device = torch.device(device)

    def _check_module(items, name):
        for item_name, item in items:
            assert item.device == device, f"{name} {item_name} is on device {item.device} instead of {device}"
            if item.dtype.is_floating_point:
                assert item.dtype == dtype, (
                    f"{name} {item_name} is of dtype {item.dtype} instead of the expected dtype {dtype}"
                )

    _check_module(module.named_parameters(), "Parameter")
    _check_module(module.named_buffers(), "Buffer")


def _traverse_obj(obj, func):
    """``TestModule._traverse_obj`` (generators and dicts included, as upstream)."""
    if isinstance(obj, (tuple, list)):
        return type(obj)(_traverse_obj(o, func) for o in obj)
    if isinstance(obj, dict):
        return {name: _traverse_obj(o, func) for name, o in obj.items()}
    if isinstance(obj, torch.Tensor):
        return func(obj)
    return None


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("module_cls", MODULES, ids=lambda c: c.__name__)
def test_factory_kwargs(module_cls, dtype, training):
    device = "cpu"
    for sample in module_inputs(module_cls, dtype, requires_grad=False):
        args, kwargs = sample.cons_args, dict(sample.cons_kwargs)

        # Check if this module creates parameters or registers buffers (the mocks pass through to the
        # real Parameter / register_buffer and only record the call inputs).
        module_creates_params_or_buffers = False
        parameter_new = mock_wrapper(torch.nn.Parameter.__new__)
        with patch.object(torch.nn.Parameter, "__new__", parameter_new):
            register_buffer = mock_wrapper(torch.nn.Module.register_buffer)
            with patch.object(torch.nn.Module, "register_buffer", register_buffer):
                m = module_cls(*args, **kwargs)
                m.train(training)

                # Check if a parameter or buffer was created with a tensor not passed to the constructor.
                constructor_tensors = get_tensors_from(args, kwargs)
                for mock in [parameter_new.mock, register_buffer.mock]:
                    for call_args, call_kwargs in mock.call_args_list:
                        call_tensors = get_tensors_from(call_args, call_kwargs)
                        if len(call_tensors) > 0 and not constructor_tensors.intersection(call_tensors):
                            module_creates_params_or_buffers = True
                            break

        # An RNN creates its weights: the rest of the test must run (upstream would skip the sample).
        assert module_creates_params_or_buffers
        kwargs.update({"device": device, "dtype": dtype})
        # rnnkit's layers are not LazyModuleMixin subclasses: upstream's non-lazy branch.
        assert not issubclass(module_cls, torch.nn.modules.lazy.LazyModuleMixin)
        m = module_cls(*args, **kwargs)
        m.train(training)
        _assert_module_parameters_and_buffer_are(m, device, dtype)


# In train mode upstream also checks that the gradients w.r.t. the weights are contiguous ([MEMFMT] in NOTES.md:
# the fused backward now lays them out as the weights are).
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("module_cls", MODULES, ids=lambda c: c.__name__)
def test_memory_format(module_cls, dtype, training):
    device = "cpu"
    atol, rtol = None, None  # not on CUDA sm80/sm86
    module_memformat_affects_out = False  # ModuleInfo default; the RNN entries do not set it

    def _get_mem_formats(channels_last=False, channels_last_3d=False):
        if channels_last:
            return ([torch.contiguous_format, torch.channels_last],
                    [torch.preserve_format, torch.contiguous_format, torch.channels_last])  # fmt: skip
        if channels_last_3d:
            return ([torch.contiguous_format, torch.channels_last_3d],
                    [torch.preserve_format, torch.contiguous_format, torch.channels_last_3d])  # fmt: skip
        return ([torch.contiguous_format], [torch.preserve_format, torch.contiguous_format])

    def _check_dims(obj, n):
        if isinstance(obj, torch.Tensor):
            return obj.dim() == n
        if isinstance(obj, (tuple, list)):
            return any(_check_dims(o, n) for o in obj)
        return False

    def _to_mem_format(mem_format, obj):
        def inner_to_mem_format(obj):
            d = obj.dim()
            if (mem_format == torch.channels_last and d != 4) or (mem_format == torch.channels_last_3d and d != 5):
                return obj.clone().detach().requires_grad_(obj.requires_grad)
            return obj.clone().to(memory_format=mem_format).detach().requires_grad_(obj.requires_grad)

        return _traverse_obj(obj, inner_to_mem_format)

    def _check_out_mem_format(output, input_mem_format, module_mem_format):
        def inner_check_out_mem_format(output):
            d = output.dim()
            if d == 4 and (
                input_mem_format == torch.channels_last
                or (module_mem_format == torch.channels_last and module_memformat_affects_out)
            ):
                assert output.is_contiguous(memory_format=torch.channels_last)
            elif d == 5 and (
                input_mem_format == torch.channels_last_3d
                or (module_mem_format == torch.channels_last_3d and module_memformat_affects_out)
            ):
                assert output.is_contiguous(memory_format=torch.channels_last_3d)
            else:
                assert output.is_contiguous()

        return _traverse_obj(output, inner_check_out_mem_format)

    def _req_grad(t):
        return isinstance(t, torch.Tensor) and t.requires_grad

    for sample in module_inputs(module_cls, dtype, requires_grad=True):
        forward_args, forward_kwargs = sample.forward_args, {}
        supports_channels_last = _check_dims(forward_args, 4)
        supports_channels_last_3d = _check_dims(forward_args, 5)
        input_mem_formats, module_mem_formats = _get_mem_formats(supports_channels_last, supports_channels_last_3d)

        with freeze_rng_state():
            m = module_cls(*sample.cons_args, **sample.cons_kwargs)
            m.to(device).to(dtype)
            m.train(training)

            # === Get output in (contiguous, contiguous) configuration. ===
            args, kwargs = forward_args, forward_kwargs
            desired_outputs = m(*args, **kwargs)
            ref_diff_outputs = tuple(t for t in tree_flatten(desired_outputs)[0] if _req_grad(t))
            if training and len(ref_diff_outputs) > 0:
                params = tuple(m.parameters())
                ref_diff_inputs = tuple(t for t in tree_flatten((args, kwargs, params))[0] if _req_grad(t))
                ref_grad_outputs = tuple(torch.rand_like(t) for t in ref_diff_outputs)
                ref_grad_inputs = torch.autograd.grad(ref_diff_outputs, ref_diff_inputs, grad_outputs=ref_grad_outputs)

            for input_mem_format in input_mem_formats:
                d_args = _to_mem_format(input_mem_format, forward_args)
                d_kwargs = _to_mem_format(input_mem_format, forward_kwargs)
                for t1, t2 in zip(tree_flatten(d_args)[0], tree_flatten(forward_args)[0], strict=True):
                    t1.requires_grad_(t2.requires_grad)
                for t1, t2 in zip(tree_flatten(d_kwargs)[0], tree_flatten(forward_kwargs)[0], strict=True):
                    t1.requires_grad_(t2.requires_grad)
                forward_args, forward_kwargs = d_args, d_kwargs

                for module_mem_format in module_mem_formats:
                    m.to(memory_format=module_mem_format)

                    args, kwargs = forward_args, forward_kwargs
                    outputs = m(*args, **kwargs)

                    if input_mem_format != torch.contiguous_format or module_mem_format != torch.contiguous_format:
                        assert_equal(outputs, desired_outputs, rtol=rtol, atol=atol)

                    _check_out_mem_format(outputs, input_mem_format, module_mem_format)

                    diff_outputs = tuple(t for t in tree_flatten(outputs)[0] if _req_grad(t))
                    if training and len(diff_outputs) > 0:
                        params = tuple(m.parameters())
                        diff_inputs = tuple(t for t in tree_flatten((args, kwargs, params))[0] if _req_grad(t))
                        pairs = zip(diff_outputs, ref_grad_outputs, strict=False)
                        grad_outputs = tuple(torch.empty_like(t1).copy_(t2) for (t1, t2) in pairs)
                        grad_inputs = torch.autograd.grad(diff_outputs, diff_inputs, grad_outputs=grad_outputs)
                        if input_mem_format != torch.contiguous_format or module_mem_format != torch.contiguous_format:
                            assert_equal(grad_inputs, ref_grad_inputs, rtol=rtol, atol=atol)
                        _check_out_mem_format(grad_inputs, input_mem_format, module_mem_format)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("module_cls", MODULES, ids=lambda c: c.__name__)
def test_if_train_and_eval_modes_differ(module_cls, dtype):
    training = True  # TrainEvalMode.train_only
    for sample in module_inputs(module_cls, dtype, requires_grad=False):
        m = module_cls(*sample.cons_args, **sample.cons_kwargs)
        m.to("cpu").to(dtype)
        m.train(training)

        # Remove training attribute and see if forward still works.
        delattr(m, "training")
        try:
            m(*sample.forward_args)
        except AttributeError as e:
            if "'training'" in str(e):
                assert TRAIN_AND_EVAL_DIFFER, (
                    f"The ModuleInfo entry for {module_cls.__name__} has train_and_eval_differ=False, but the "
                    "training mode was found to affect the forward pass."
                )
            else:
                raise e
