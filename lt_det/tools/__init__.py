"""lt_det's command-line programs, part of the installed package.

Each module has a ``cli(argv=None) -> int`` (its console script in setup.py, and what
``python -m lt_det.tools.<module>`` runs); a checkout's ``tools/<module>.py`` is a thin wrapper
over the same function:

- :mod:`lt_det.tools.train_net`: train or evaluate (``lt-train-net``).
- :mod:`lt_det.tools.lt_benchmark`: the synthetic long-tailed benchmark (``lt-benchmark``).
- :mod:`lt_det.tools.benchmark_summary`: mean over seeds of benchmark outputs
  (``lt-benchmark-summary``).

The modules import detectron2 only inside their functions, so importing them changes nothing
process-wide; :func:`filter_jit_deprecation` is called by ``cli`` (a program's own choice).
"""
import warnings

__all__ = ["filter_jit_deprecation"]


def filter_jit_deprecation() -> None:
    """Hide the ``torch.jit.script is deprecated`` FutureWarning that importing detectron2
    raises under recent torch (detectron2 scripts a few functions at import). Called by the
    programs before they import detectron2; library code leaves the warning filters alone."""
    warnings.filterwarnings(
        "ignore", r"`torch\.jit\.script` is deprecated", FutureWarning, r"torch\.jit"
    )
