"""The command line's one error type: a message for the user and an exit code, never a traceback."""

from __future__ import annotations

__all__ = ["CLIError", "EXIT_USAGE", "EXIT_DATA", "EXIT_CHECKPOINT", "EXIT_INTERRUPTED"]

EXIT_USAGE = 2  # bad options or model description (argparse's own code)
EXIT_DATA = 3  # a data file that is missing, empty, not text, or too short
EXIT_CHECKPOINT = 4  # a checkpoint that is missing, damaged or does not match the requested model
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C / SIGTERM after saving a checkpoint


class CLIError(Exception):
    """Raised anywhere in ``rnnkit.cli``; ``main`` prints ``rnnkit <command>: error: <message>`` and exits."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code
