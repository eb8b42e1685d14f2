"""Reading an ONNX file as a hostile one may be: a plain file of at most 2 GiB, external data only beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .guards import read_bounded, regular_file

__all__ = ["load_model", "onnx_module", "MAX_ONNX_BYTES"]


def onnx_module() -> Any:
    """The ``onnx`` package, or an ``ImportError`` that says how to install it."""
    try:
        import onnx
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("ONNX export needs the onnx package: pip install onnx") from err
    return onnx


def load_model(source: Any) -> Any:
    """An ``onnx.ModelProto`` from a path (or one given), each read checked before it allocates."""
    onnx = onnx_module()
    if isinstance(source, onnx.ModelProto):
        return source
    path = regular_file(source, "read_onnx")  # no FIFO, device or folder: they block or never end
    data = read_bounded(path, MAX_ONNX_BYTES, "read_onnx", "an ONNX model (protobuf's limit)")
    try:
        # External data is read below, where it is checked first: onnx.load would follow any location.
        model = onnx.load_from_string(data)
    except Exception as err:  # protobuf's DecodeError (truncated, garbage, nested past its recursion limit)
        raise ValueError(f"read_onnx: {str(path)!r} is not an ONNX model ({type(err).__name__}: {err})") from None
    _load_external_data(onnx, model, path)
    return model


MAX_ONNX_BYTES = 2 << 30  # protobuf refuses messages past 2 GiB


def _load_external_data(onnx: Any, model: Any, path: Path) -> None:
    """Read initializers kept in files beside the model (ONNX's external data), each location checked first: a
    plain file in the model's folder (no absolute path, no ``..``), holding the bytes its entry names."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    tensors = [t for t in _get_all_tensors(model) if uses_external_data(t)]
    for t in tensors:
        info = {e.key: e.value for e in t.external_data}
        where = info.get("location", "")
        target = path.parent / where
        if not where or Path(where).is_absolute() or ".." in Path(where).parts:
            raise ValueError(
                f"read_onnx: {str(path)!r}: initializer {t.name!r} names external data at {where!r}; only files "
                "beside the model are read"
            )
        size = regular_file(target, f"read_onnx: {str(path)!r}: initializer {t.name!r}").stat().st_size
        offset, length = int(info.get("offset") or 0), int(info.get("length") or size)
        if offset < 0 or length < 0 or offset + length > size:
            raise ValueError(
                f"read_onnx: {str(path)!r}: initializer {t.name!r} names bytes {offset}..{offset + length} of "
                f"{where!r}, which holds {size}"
            )
    if tensors:
        onnx.load_external_data_for_model(model, str(path.parent))
