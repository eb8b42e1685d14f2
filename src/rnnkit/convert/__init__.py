"""Exact weight conversion between TF1 cells, Keras 3, torch.nn / rnnkit layers and ONNX, in one place.

Everything meets in the **torch layout**: a ``torch.nn.LSTM/GRU/RNN``-style state dict
(``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``, ``weight_hr_l0``, ``_reverse``)
plus a `LayerConfig` (sizes, direction count, and rnnkit's options ``forget_bias``, ``peepholes``,
``cell_clip``, GRU ``reset_after``). Every other format converts to and from it:

=====================  ===========================================  ==========================================
format                 to the torch layout                          from it
=====================  ===========================================  ==========================================
TF1 variables          `tf_to_torch`                                `torch_to_tf`
TF1 checkpoint files   `read_tf_checkpoint` + `tf_to_torch`          (saving: later)
rnnkit TF-style cells  `cells_to_torch`                             `torch_to_cells`
Keras 3 files/layers   `keras_to_torch`, `keras_layer_to_torch`      `torch_to_keras`
ONNX LSTM/GRU/RNN ops  `onnx_to_torch`                              `torch_to_onnx`
ONNX model files       `read_onnx`, `load_onnx` (an rnnkit layer)   `export_onnx` (native ops, or a ``Scan``)
torch.save files       `load_torch_state_dict` + `infer_config`     ``torch.save``
rnnkit modules         `load` (``.safetensors`` + configuration)    `save` (layers, TF-style cell trees)
=====================  ===========================================  ==========================================

`export_onnx` also takes any ``RNNCell`` (a user's own cell included): ``dynamic_rnn`` over it in eval mode, its
compiled step (``rnnkit.engine.compiler``) in an ONNX ``Scan``; a step op with no ONNX translation is refused by name.

The command line ``rnnkit convert SRC DST`` (``rnnkit.cli.conversion``, on `rnnkit.convert.files`) moves a model
between these files.

Gate orders (conventions of each format) are data: the table in `rnnkit.gates`, whose `relayout` every
converter uses.
A conversion that cannot be exact is refused with the reason: TF's GRU (reset before the matmul)
into ``torch.nn.GRU`` (reset after), peepholes or ``cell_clip`` into ``torch.nn``, projections into
Keras or ONNX's native operators (`export_onnx` runs them in a ``Scan`` over rnnkit's step instead).
TF1's ``forget_bias`` is never stored: pass it (``load_tf_checkpoint``, ``cells_from_tf_variables``, ``tf_to_torch``,
``rnnkit convert --forget-bias``); without it TF's default 1.0 is assumed with an `AssumedForgetBiasWarning`
(ptb and DeepSpeech train with 0.0). It is folded into the forget-gate bias for ``target="torch.nn"`` and
carried as rnnkit's ``LSTM(forget_bias=)`` otherwise.

Example::

    >>> from rnnkit.convert import LayerConfig, cells_from_tf_variables, tf_to_torch, torch_to_tf
    >>> tf_vars = torch_to_tf(torch.nn.LSTM(3, 8, num_layers=2).state_dict(), LayerConfig("LSTM", 3, 8, 2))
    >>> sorted(tf_vars)[0]     # as read_tf_checkpoint("ckpt") reads a MultiRNNCell of BasicLSTMCells
    'rnn/multi_rnn_cell/cell_0/basic_lstm_cell/bias'
    >>> stack = cells_from_tf_variables(tf_vars, forget_bias=1.0)     # rnnkit cells, TF's variable names
    >>> outputs, state = stack.run(torch.randn(2, 5, 3), sequence_length=[5, 3])
    >>> state_dict, cfg = tf_to_torch(tf_vars, target="torch.nn", forget_bias=1.0)
    >>> lstm = cfg.torch_nn_module(batch_first=True); lstm.load_state_dict(state_dict)
    <All keys matched successfully>

From a checkpoint on disk: ``load_tf_checkpoint("ckpt", forget_bias=1.0)`` builds the cells, and
``tf_to_torch(read_tf_checkpoint("ckpt"), ...)`` the torch layout.
"""

from ._cell_variables import load_tf_variables, tf_variable_names
from ._keras_io import keras_to_torch, read_keras
from ._keras_layout import KerasRecurrentLayer, keras_layer_to_torch, keras_layers_to_torch, torch_to_keras
from ._onnx_export import export_onnx, load_onnx, read_onnx
from ._onnx_layout import OnnxRecurrentOp, onnx_to_torch, torch_to_onnx
from ._tf_checkpoint import CheckpointEntry, CheckpointError, TFCheckpointReader, list_tf_checkpoint, read_tf_checkpoint
from ._tf_layout import (
    tf_gru_to_torch,
    tf_lstm_to_torch,
    tf_rnn_to_torch,
    torch_gru_to_tf,
    torch_lstm_to_tf,
    torch_rnn_to_tf,
)
from ._tf_stack import tf_to_torch, torch_to_tf
from ._tf_variables import AssumedForgetBiasWarning, TFCellVariables, TFRNNVariables, parse_tf_variables
from ._torch_layout import check_state_dict, infer_config, load_torch_state_dict
from .config import LayerConfig
from .tf_cells import TFCellStack, cells_from_tf_variables, cells_to_torch, load_tf_checkpoint, torch_to_cells

__all__ = [
    # the common currency
    "LayerConfig", "check_state_dict", "infer_config", "load_torch_state_dict",
    # TF1: files, variables, cells
    "read_tf_checkpoint", "list_tf_checkpoint", "TFCheckpointReader", "CheckpointEntry", "CheckpointError",
    "parse_tf_variables", "TFRNNVariables", "TFCellVariables", "AssumedForgetBiasWarning", "tf_to_torch", "torch_to_tf",
    "tf_lstm_to_torch", "torch_lstm_to_tf", "tf_gru_to_torch", "torch_gru_to_tf", "tf_rnn_to_torch", "torch_rnn_to_tf",
    "TFCellStack", "load_tf_checkpoint", "cells_from_tf_variables", "load_tf_variables", "tf_variable_names",
    "cells_to_torch", "torch_to_cells",
    # Keras 3
    "read_keras", "keras_to_torch", "KerasRecurrentLayer", "keras_layer_to_torch", "keras_layers_to_torch",
    "torch_to_keras",
    # ONNX
    "OnnxRecurrentOp", "torch_to_onnx", "onnx_to_torch", "export_onnx", "read_onnx", "load_onnx",
    # rnnkit's own save format (rnnkit.saving)
    "save", "load",
]  # fmt: skip


def __getattr__(name: str) -> object:
    """``rnnkit.convert.save`` and ``load``: rnnkit's own format lives in ``rnnkit.saving``, which reads this
    package's objects (``TFCellStack``, ``LayerConfig``); the two names stay here for code written against earlier
    versions, resolved on first use so that the packages import one way only."""
    if name in ("save", "load"):
        from .. import saving

        return getattr(saving, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
