"""The exception types lt_det raises for what the user must act on.

Their message says what was wrong (file, key, class id, value) and what to do. Entry points
(``tools/*.py``) print it without a traceback, as one line with the prefix ``lt_det: error:``
(:func:`report_error`), and exit with :attr:`LTDetError.exit_code`.
"""
import sys
from typing import Optional

__all__ = ["LTDetError", "RunStopped", "ERROR_PREFIX", "report_error"]

#: The prefix of every error line the tools print.
ERROR_PREFIX = "lt_det: error: "


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


def report_error(error: BaseException) -> int:
    """Print ``error`` as one "lt_det: error: ..." line on stderr; return the exit status
    (``error.exit_code``: 2 for bad input, 128 + signal number for a signal stop)."""
    print(f"{ERROR_PREFIX}{error}", file=sys.stderr)
    return getattr(error, "exit_code", 2)
