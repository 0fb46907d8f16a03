"""The exception types lt_det raises for what the user must act on.

Their message says what was wrong (file, key, class id, value) and what to do. Entry points
(``tools/*.py``) print it as one line ``lt_det: error: ...`` without a traceback and exit with
:attr:`LTDetError.exit_code`.
"""
from typing import Optional

__all__ = ["LTDetError", "RunStopped"]


class LTDetError(ValueError):
    """Bad user input: a missing file, a malformed dataset, an unknown config value, ....

    Attributes:
        exit_code: the exit status of a tool that stops on it (2 unless given).
    """

    exit_code: int = 2

    def __init__(self, *args, exit_code: Optional[int] = None):
        super().__init__(*args)
        if exit_code is not None:
            self.exit_code = int(exit_code)


class RunStopped(LTDetError):
    """Training stopped on SIGTERM / SIGINT after saving a checkpoint (not an input error; it
    travels the same one-line path). ``exit_code`` is 128 + the signal number, as a shell
    reports a process killed by that signal."""
