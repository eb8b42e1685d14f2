"""Helpers shared by the ports of upstream tests in ``tests/upstream`` (see ``NOTES.md``).

They re-create, on public APIs only, the few pieces of PyTorch's private test harness
(``torch.testing._internal``) that the ported tests use. That harness is not imported: importing
``common_utils`` parses ``sys.argv`` and calls ``torch.backends.disable_global_flags()``, which would
leak into the rest of the suite.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

# common_utils.gradcheck / gradgradcheck enable these by default (test_modules.py relies on that).
UPSTREAM_GRADCHECK_DEFAULTS = {"check_batched_grad": True, "fast_mode": True}

# torch.testing._internal.common_utils.dtype2prec_DONTUSE, the precisions test_variable_sequence uses.
DTYPE2PREC = {torch.float: 1e-5, torch.double: 1e-5, torch.half: 1e-2, torch.bfloat16: 1e-1}


@contextlib.contextmanager
def freeze_rng_state() -> Iterator[None]:
    """``common_utils.freeze_rng_state`` on CPU: run the block, then restore the generator's state."""
    state = torch.get_rng_state()
    try:
        yield
    finally:
        torch.set_rng_state(state)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """``common_utils.set_default_dtype`` as a context manager."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


def assert_equal(actual, expected, *, atol: float | None = None, rtol: float | None = None, msg: str = "") -> None:
    """``TestCase.assertEqual`` for tensors and (nested) sequences of them: ``assert_close`` with its
    dtype-based default tolerances (``TestCase`` uses the same), ``equal_nan`` and no dtype check of
    Python numbers against tensors."""
    if actual is None or expected is None:
        assert actual is None and expected is None, f"{msg}: {actual!r} != {expected!r}"
        return
    if isinstance(actual, (list, tuple)) and isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), f"{msg}: {len(actual)} != {len(expected)} items"
        for a, e in zip(actual, expected, strict=True):
            assert_equal(a, e, atol=atol, rtol=rtol, msg=msg)
        return
    if not isinstance(actual, torch.Tensor) or not isinstance(expected, torch.Tensor):
        actual = torch.as_tensor(actual)
        expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, equal_nan=True, msg=msg or None)


def assert_not_equal(actual, expected) -> None:
    """``TestCase.assertNotEqual`` for tensors and tuples of them."""
    try:
        assert_equal(actual, expected)
    except AssertionError:
        return
    raise AssertionError(f"expected the values to differ, got equal {actual!r}")
