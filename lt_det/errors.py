"""The one exception type lt_det raises for bad user input.

Its message says what was wrong (file, key, class id, value) and what to do. Entry points
(``tools/*.py``) print it without a traceback, as one line with the prefix ``lt_det: error:``
(:func:`report_error`).
"""

import sys

__all__ = ["LTDetError", "ERROR_PREFIX", "report_error"]

#: The prefix of every error line the tools print.
ERROR_PREFIX = "lt_det: error: "


class LTDetError(ValueError):
    """Bad user input: a missing file, a malformed dataset, an unknown config value, ...."""


def report_error(error: BaseException) -> int:
    """Print ``error`` as one "lt_det: error: ..." line on stderr; return the exit status 2."""
    print(f"{ERROR_PREFIX}{error}", file=sys.stderr)
    return 2
