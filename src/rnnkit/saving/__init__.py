"""rnnkit's own save format: the weights in a ``safetensors`` file, the module's configuration in its metadata.

A saved file reloads with ``load(path)`` and no code of the user's: the metadata key ``"rnnkit.config"`` holds
a JSON description of the module tree (classes and constructor arguments), the tensors are the module's
``state_dict()`` under its own names. Nothing is pickled, so loading a file never runs code.

What can be saved (exact classes, not subclasses, whose behaviour rnnkit cannot know):

* layers: ``rnnkit.RNN``, ``rnnkit.LSTM``, ``rnnkit.GRU`` with every option (``batch_first``, ``dropout``,
  ``proj_size``, ``forget_bias``, ``peepholes``, ``cell_clip``, ``layer_norm``, ``reset_after``,
  ``nonlinearity``, ``recurrent_dropout``, ``zoneout``); ``torch.nn.RNN/LSTM/GRU`` are saved as the
  rnnkit layer of the same configuration (a drop-in with the same state dict);
* TF-style cell trees: ``BasicRNNCell``, ``BasicLSTMCell``, ``LSTMCell``, ``GRUCell``,
  ``LayerNormBasicLSTMCell``, ``MultiRNNCell``, ``DropoutWrapper``, ``ResidualWrapper``, built or not, with
  their constructor options; activations by name (``tanh``, ``sigmoid``, ``relu``, ``elu``, ``linear``);
* ``rnnkit.convert.TFCellStack`` (the cells of a TF1 stack with their topology and scope).

The cell classes are the cell registry's (``rnnkit.cells.registry``: leaves, ``MultiRNNCell``, wrappers).
``rnnkit.save``/``rnnkit.load`` and ``rnnkit.convert.save``/``load`` are these functions. Modules:
``_config`` (a module <-> its JSON description), ``_file`` (the safetensors file), ``_checks`` (what `load`
checks before it allocates anything).

A module's training flag is saved and restored. Tensors are saved on the CPU; ``load(path, device=...)``
moves the module.

Metadata layout (all values strings, as safetensors requires)::

    {"format": "pt", "rnnkit.format": "1", "rnnkit.version": "0.1.0",
     "rnnkit.config": '{"class": "LSTM", "args": {"input_size": 3, ...}, "training": false}'}

Example::

    >>> from rnnkit.saving import load, save
    >>> lstm = rnnkit.LSTM(3, 8, num_layers=2, forget_bias=1.0, peepholes=True).eval()
    >>> save(lstm, "lstm.safetensors")
    >>> again = load("lstm.safetensors")
    >>> x = torch.randn(5, 2, 3)
    >>> torch.equal(again(x)[0], lstm(x)[0])
    True
"""

from ._config import known_classes, module_config, module_from_config
from ._file import CONFIG_KEY, FORMAT_VERSION, load, read_config, save

__all__ = [
    "save",
    "load",
    "module_config",
    "module_from_config",
    "read_config",
    "known_classes",
    "FORMAT_VERSION",
    "CONFIG_KEY",
]
