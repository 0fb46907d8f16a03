"""Logs that hold what happened: lt_det's logger into OUTPUT_DIR/log.txt, plain text off a terminal,
a bounded class table for large vocabularies, and a log file that cannot be written reported once.

detectron2's ``default_setup`` sets up the "detectron2" and "fvcore" loggers only; lt_det's own
messages (the evaluator's tables, the sampler in use, prior warnings) go to the "lt_det" logger,
which :func:`setup_lt_logging` sends to the same ``log.txt`` (detectron2's ``setup_logger``).
"""
import contextlib
import logging
import os
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from tabulate import tabulate

__all__ = [
    "setup_lt_logging",
    "run_logging",
    "LogFileHandler",
    "log_write_failure",
    "PlainFormatter",
    "StripColour",
    "strip_colour_from_setup_logs",
    "BoundedClassHistogram",
    "log_class_summary",
    "MAX_CLASS_TABLE",
]

logger = logging.getLogger(__name__)

#: Above this many classes detectron2's per-class instance table (one row per 3 classes) is
#: replaced by :func:`log_class_summary` (per-group totals and the extremes).
MAX_CLASS_TABLE = 100

#: The loggers a run sets up (detectron2's ``default_setup`` and :func:`setup_lt_logging`).
RUN_LOGGERS = ("detectron2", "fvcore", "lt_det")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_HISTOGRAM = re.compile(r"Distribution of instances among all (\d+) categories")


class PlainFormatter(logging.Formatter):
    """detectron2's plain log line, with any ANSI colour codes removed from the message."""

    def __init__(self):
        super().__init__("[%(asctime)s] %(name)s %(levelname)s: %(message)s", "%m/%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return _ANSI.sub("", super().format(record))


class StripColour(logging.Filter):
    """Remove ANSI colour codes from a record's message (detectron2's ``default_setup`` colours
    the config it logs with pygments, whatever the handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "\x1b[" in record.msg:
            record.msg = _ANSI.sub("", record.msg)
        return True


def strip_colour_from_setup_logs() -> None:
    """Attach :class:`StripColour` to the "detectron2" and "fvcore" loggers (their own records,
    e.g. the config dump of ``default_setup``); call before ``default_setup``."""
    for name in ("detectron2", "fvcore"):
        log = logging.getLogger(name)
        if not any(isinstance(f, StripColour) for f in log.filters):
            log.addFilter(StripColour())


class BoundedClassHistogram(logging.Filter):
    """Drop detectron2's per-class instance table when the dataset has more than ``max_classes``
    classes (LVIS: ~400 table rows per dataset); :func:`log_class_summary` logs a bounded one."""

    def __init__(self, max_classes: int = MAX_CLASS_TABLE):
        super().__init__()
        self.max_classes = max_classes

    def filter(self, record: logging.LogRecord) -> bool:
        m = _HISTOGRAM.match(str(record.msg))
        return not (m and int(m.group(1)) > self.max_classes)


def log_write_failure(folder: Optional[str] = None) -> Optional[Tuple[str, OSError]]:
    """``(file, error)`` of a run log file (of the "detectron2", "fvcore", "lt_det" loggers, in
    ``folder`` if given) whose write failed (disk full, file system gone read-only), or None.
    ``LTTrainer`` checks it after every step and stops with one line and a checkpoint."""
    prefix = os.path.abspath(folder) + os.sep if folder else ""
    for name in RUN_LOGGERS:
        for h in logging.getLogger(name).handlers:
            if isinstance(h, LogFileHandler) and h.error is not None:
                if os.path.abspath(h.file_name).startswith(prefix):
                    return h.file_name, h.error
    return None


class LogFileHandler(logging.StreamHandler):
    """The handler of a run's ``log.txt``: detectron2's (a stream handler on the cached file
    stream), except that a write that fails with an ``OSError`` is not printed as logging's
    "--- Logging error ---" traceback for every later record: the first failure is kept
    (:attr:`error`, read by :func:`log_write_failure`), the stream is closed (its unwritable
    buffer would fail again at exit) and later records of this handler (and of the others on
    the same stream) are dropped."""

    def __init__(self, stream, name: str):
        super().__init__(stream)
        self.file_name = name
        self.failed = False
        #: The OSError of the first failed write (None while writes succeed).
        self.error: Optional[OSError] = None

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, OSError) and not getattr(self.stream, "closed", False):
            return super().handleError(record)  # e.g. a bad format string: logging's report
        self.failed = True
        if isinstance(error, OSError) and self.error is None:
            self.error = error
        close = getattr(self.stream, "close", None)
        try:
            if close is not None:
                close()
        except (OSError, ValueError):
            pass


def _report_log_file_failures(log: logging.Logger) -> None:
    """Replace detectron2's ``log.txt`` handlers of ``log`` by :class:`LogFileHandler` on the
    same stream (same level, formatter and filters)."""
    for h in list(log.handlers):
        stream = getattr(h, "stream", None)
        if type(h) is not logging.StreamHandler or stream in (sys.stdout, sys.stderr):
            continue
        name = getattr(stream, "name", None)
        if not isinstance(name, str):
            continue
        new = LogFileHandler(stream, name)
        new.setLevel(h.level)
        new.setFormatter(h.formatter)
        for f in h.filters:
            new.addFilter(f)
        log.removeHandler(h)
        log.addHandler(new)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def setup_lt_logging(output_dir: Optional[str], *, rank: Optional[int] = None) -> logging.Logger:
    """Send the "lt_det" logger to the console (main process) and ``output_dir/log.txt``.

    Call after detectron2's ``default_setup`` (or alone in a tool). Also, for the "detectron2",
    "fvcore" and "lt_det" loggers: file handlers and, when stdout is not a terminal, console
    handlers write plain lines without ANSI colour codes; detectron2's per-class instance table
    is bounded (:class:`BoundedClassHistogram`); records of the "detectron2" and "fvcore"
    loggers themselves lose their colour codes (:class:`StripColour`); a ``log.txt`` that cannot
    be written is reported once (:class:`LogFileHandler`). Calling it again with the same
    arguments adds nothing.

    Args:
        output_dir: folder of ``log.txt`` (None / "" = console only).
        rank: process rank (default: detectron2's ``comm.get_rank()``); ranks > 0 log to
            ``log.txt.rank<r>`` only, as detectron2 does.

    Returns:
        the "lt_det" logger.
    """
    rank = comm.get_rank() if rank is None else rank
    strip_colour_from_setup_logs()
    colour = _is_terminal(sys.stdout)
    lt_logger = setup_logger(output_dir or None, distributed_rank=rank, name="lt_det", color=colour)
    for name in RUN_LOGGERS:
        _report_log_file_failures(logging.getLogger(name))
        for h in logging.getLogger(name).handlers:
            console = isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr)
            if isinstance(h, logging.StreamHandler) and (not console or not colour):
                if not isinstance(h.formatter, PlainFormatter):
                    h.setFormatter(PlainFormatter())
    build_logger = logging.getLogger("detectron2.data.build")
    if not any(isinstance(f, BoundedClassHistogram) for f in build_logger.filters):
        build_logger.addFilter(BoundedClassHistogram())
    return lt_logger


@contextlib.contextmanager
def run_logging():
    """Scope of one run's log handlers, for several runs in one process (the two stages of
    ``MODEL.DECOUPLE.STAGE1_CONFIG``).

    detectron2's ``setup_logger`` adds a console and a ``log.txt`` handler per output folder and
    never removes them, so without this scope a second run's records would reach the first run's
    ``log.txt`` and the console twice. On leaving, the handlers added to the
    :data:`RUN_LOGGERS` inside the scope are flushed and removed (their files stay open, as
    detectron2 caches them) and ``setup_logger``'s cache is cleared, so that the next run's
    setup adds its own handlers again.
    """
    before = {name: list(logging.getLogger(name).handlers) for name in RUN_LOGGERS}
    try:
        yield
    finally:
        for name, kept in before.items():
            log = logging.getLogger(name)
            for h in list(log.handlers):
                if h not in kept:
                    h.flush()
                    log.removeHandler(h)
        clear = getattr(setup_logger, "cache_clear", None)  # an lru_cache in detectron2 0.6+
        if clear is not None:
            clear()


def log_class_summary(
    dataset_dicts: Sequence[Dict],
    class_names: Sequence[str],
    groups: Optional[Sequence[str]] = None,
    *,
    extremes: int = 5,
    max_classes: int = MAX_CLASS_TABLE,
) -> Optional[str]:
    """Log a bounded summary of the training instances per class, when there are more than
    ``max_classes`` classes (below that detectron2's own table is kept).

    The table has one row per frequency group (classes, classes without instances, instances)
    and the ``extremes`` most and least frequent classes; at most ``5 + 2 * extremes`` rows.

    Args:
        dataset_dicts: detectron2 dataset dicts (contiguous ``category_id``; crowd excluded).
        class_names: K names.
        groups: K "r"/"c"/"f" (None: no per-group rows).

    Returns:
        the logged text, or None when nothing was logged.
    """
    k = len(class_names)
    if k <= max_classes:
        return None
    counts: List[int] = [0] * k
    for d in dataset_dicts:
        for a in d.get("annotations", ()):
            if not a.get("iscrowd", 0):
                counts[a["category_id"]] += 1
    rows = []
    for g, label in (("f", "frequent"), ("c", "common"), ("r", "rare")):
        idx = [i for i in range(k) if groups is not None and groups[i] == g]
        if idx:
            n0 = sum(1 for i in idx if counts[i] == 0)
            rows.append([f"{label} classes", len(idx), n0, sum(counts[i] for i in idx)])
    rows.append(["all classes", k, sum(1 for c in counts if c == 0), sum(counts)])
    order = sorted(range(k), key=lambda i: (-counts[i], i))
    most = ", ".join(f"{class_names[i]} {counts[i]}" for i in order[:extremes])
    least = ", ".join(f"{class_names[i]} {counts[i]}" for i in order[::-1][:extremes])
    table = tabulate(
        rows, headers=["", "classes", "without instances", "instances"], tablefmt="pipe"
    )
    text = (
        f"Instances among {k} categories (per-class table omitted above {max_classes} "
        f"classes):\n{table}\nmost: {most}\nleast: {least}"
    )
    logger.info(text)
    return text
