"""rnnkit's exception classes: clear messages, and the classes ``torch.nn`` raises for the same mistakes.

rnnkit checks its arguments up front and says which component refused what, what it expected and what came.
Each class below derives from the built-in class ``torch.nn.RNN/LSTM/GRU`` raise for the same mistake (so that
``except RuntimeError:`` written for ``torch.nn`` keeps working on the drop-in layers) *and* from the class
rnnkit raised before it had these classes (so that ``except ValueError:`` written for rnnkit keeps working).
``RNNKitError`` catches them all.

=====================  =======================================  ======================================
class                  raised for                               torch.nn raises
=====================  =======================================  ======================================
``ArgumentTypeError``  a constructor argument of the wrong      ``TypeError``
                       type (``hidden_size=2.0``)
``ShapeError``         a tensor of the wrong rank or shape      ``RuntimeError`` (sizes, ``hx`` rank),
                       (input size, ``h_0``, ``lengths``)       ``ValueError`` (input rank)
``InputValueError``    values out of range (``lengths``)        ``RuntimeError``
``DtypeError``         a dtype mismatch between inputs,         ``ValueError`` (input vs weights),
                       states and parameters                    ``RuntimeError`` (states, kernels)
``DeviceError``        a device mismatch between inputs,        ``RuntimeError``
                       states, lengths and parameters
``StateStructureError``  an LSTM state that is not ``(h, c)``,  ``IndexError`` or ``RuntimeError``
                       a TF state not of ``state_size``'s
                       structure
``NotATensorError``    a non-tensor where a tensor belongs      ``AttributeError`` (``.dim()`` of it)
``NotBuiltError``      a parameter read before a lazily built   (no lazy building in torch.nn)
                       cell's first call                        ``AttributeError``
``VariableNameError``  a user cell's ``add_variable`` name      ``KeyError`` (``register_parameter``)
                       taken or invalid
=====================  =======================================  ======================================
"""

from __future__ import annotations

__all__ = [
    "RNNKitError",
    "ArgumentTypeError",
    "ShapeError",
    "InputValueError",
    "DtypeError",
    "DeviceError",
    "StateStructureError",
    "NotATensorError",
    "NotBuiltError",
    "VariableNameError",
]


class RNNKitError(Exception):
    """Base of every error rnnkit raises for a bad argument."""


class ArgumentTypeError(RNNKitError, TypeError, ValueError):
    """An argument of the wrong type (``hidden_size=2.0``, ``num_layers="2"``): torch's ``TypeError``."""


class InputValueError(RNNKitError, ValueError, RuntimeError):
    """A tensor argument whose shape or values do not fit: torch's ``RuntimeError``, rnnkit's ``ValueError``."""


class ShapeError(InputValueError):
    """A tensor of the wrong rank or shape (input size, ``h_0``/``c_0``, ``lengths``)."""


class DtypeError(RNNKitError, TypeError, ValueError, RuntimeError):
    """Inputs, states or parameters of different dtypes, or a non-floating tensor where floats belong.

    torch raises ``ValueError`` for an input against the weights and ``RuntimeError`` from its kernels for a
    state or a converted parameter; rnnkit raised ``TypeError``.
    """


class DeviceError(RNNKitError, ValueError, RuntimeError):
    """Inputs, states, lengths or parameters on different devices: torch's ``RuntimeError``."""


class StateStructureError(RNNKitError, TypeError, ValueError, IndexError, RuntimeError):
    """A state of the wrong structure: an LSTM ``hx`` that is not the pair ``(h_0, c_0)`` (torch indexes it and
    raises ``IndexError`` or ``RuntimeError``), a TF state not nested as the cell's ``state_size``."""


class NotATensorError(RNNKitError, TypeError, AttributeError):
    """A non-tensor where a tensor belongs: torch calls ``.dim()`` on it and raises ``AttributeError``."""


class NotBuiltError(RNNKitError, AttributeError):
    """A parameter of a TF-style cell read before the cell was built (its parameters come on the first call).

    An ``AttributeError``, so that ``hasattr``, ``getattr(cell, name, default)`` and ``nn.Module`` keep working.
    """


class VariableNameError(RNNKitError, KeyError, ValueError):
    """A variable name ``add_variable``/``add_weight`` cannot take: already taken on the cell, or not a valid torch
    name (empty, or with a ``.``). torch's ``register_parameter`` raises ``KeyError``; TF raises ``ValueError``."""

    def __str__(self) -> str:  # the message as written (KeyError's own str() would quote and escape it)
        return str(self.args[0]) if self.args else ""
