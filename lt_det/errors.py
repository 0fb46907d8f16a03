"""The one exception type lt_det raises for bad user input.

Its message says what was wrong (file, key, class id, value) and what to do. Entry points
(``tools/*.py``) print it without a traceback.
"""

__all__ = ["LTDetError"]


class LTDetError(ValueError):
    """Bad user input: a missing file, a malformed dataset, an unknown config value, ...."""
