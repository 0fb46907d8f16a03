"""Stop cleanly on SIGTERM / SIGINT (Ctrl-C): one line, exit status 128 + signal, never a traceback.

One mechanism, :class:`StopSignals`, handles the two signals wherever lt_det runs a job:

- **immediate** (the default): the signal raises :class:`~lt_det.errors.RunStopped` in the main
  thread at once ("nothing was saved"). ``launch`` holds one around every process's work, so a
  signal during set-up (config checks, model build, waiting for a peer) or during the final
  evaluation ends the process with one line instead of a ``KeyboardInterrupt`` traceback.
- **deferred** (``deferred=True`` or while :attr:`StopSignals.deferred` is set): the signal is
  only recorded (:attr:`StopSignals.signum`) and ``on_signal`` is called; the code polls the flag
  and stops at a point of its choosing. The training loop does so through :class:`StopOnSignal`;
  the launcher (forwarding to its workers) and the benchmark (stopping its runs) too.

A repeated signal while stopping is ignored (``kill -9`` stops at once; the last complete
checkpoint stays intact). Handlers are installed in the main thread only; elsewhere signals keep
their behaviour. Leaving the scope restores the previous handlers, so scopes nest (the training
loop's inside ``launch``'s).

:class:`StopOnSignal` is the detectron2 hook (``LTTrainer`` adds it last): a signal during the
iteration loop sets the flag; after the current step every process agrees on it (a max
all-reduce when the world size is above 1, so all ranks stop at the same iteration), the main
process saves ``model_<iter>.pth`` with the same contents as a periodic checkpoint
(``--resume`` continues exactly from it), all processes wait for the save, and training ends with
``RunStopped``. Before the loop and after its last step the signal stops at once.
"""
import os
import signal
import threading
from typing import Callable, Optional

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..errors import RunStopped

__all__ = ["StopSignals", "StopOnSignal", "SIGNALS", "signal_name", "stopped_outside"]

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def signal_name(signum: int) -> str:
    """``"SIGTERM"`` for 15, etc."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def stopped_outside(signum: int, where: str = "outside the training iterations") -> RunStopped:
    """The line of a stop where nothing needed saving (before the loop, after it)."""
    return RunStopped(
        f"stopped by {signal_name(signum)} {where}; nothing was saved. The last checkpoint (if "
        "any) is intact; --resume continues from it.",
        exit_code=128 + signum,
    )


class StopSignals:
    """SIGTERM / SIGINT handlers for one scope (``with StopSignals(...):``).

    Args:
        deferred: record the signal instead of raising (may be changed inside the scope).
        on_signal: called with the signal number on the first signal (e.g. forward it).
        where: text of the immediate stop ("outside the training iterations").
    """

    def __init__(self, *, deferred: bool = False,
                 on_signal: Optional[Callable[[int], None]] = None,
                 where: str = "outside the training iterations"):
        self.deferred = deferred
        self.on_signal = on_signal
        self.where = where
        self.signum: Optional[int] = None
        self._previous = {}

    def install(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    __enter__ = install

    def __exit__(self, *exc) -> None:
        self.uninstall()

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            return  # already stopping
        self.signum = signum
        if self.on_signal is not None:
            self.on_signal(signum)
        if not self.deferred:
            raise stopped_outside(signum, self.where)


class StopOnSignal(HookBase):
    """Save a checkpoint and stop after the current step when SIGTERM or SIGINT arrives."""

    def __init__(self):
        self.signals = StopSignals()

    @property
    def signum(self) -> Optional[int]:
        return self.signals.signum

    def install(self) -> None:
        """Install the handlers (main thread only)."""
        self.signals.install()

    def uninstall(self) -> None:
        self.signals.uninstall()

    # ------------------------------------------------------------------ hook
    def before_train(self) -> None:
        self.signals.deferred = self.trainer.iter < self.trainer.max_iter

    def after_step(self) -> None:
        last = self.trainer.iter + 1 >= self.trainer.max_iter
        if not self._agreed():
            self.signals.deferred = not last
            return
        self.signals.deferred = False
        checkpointer = self.trainer.checkpointer
        name = f"model_{self.trainer.iter:07d}"
        checkpointer.save(name, iteration=self.trainer.iter)  # writes on the main process only
        comm.synchronize()  # every process waits for the save
        path = os.path.join(checkpointer.save_dir, f"{name}.pth")
        raise RunStopped(
            f"stopped by {signal_name(self.signum)} at iteration {self.trainer.iter}; checkpoint "
            f"'{path}' was saved. --resume continues from it.",
            exit_code=128 + self.signum,
        )

    def _agreed(self) -> bool:
        """Whether any process got a signal (all of them answer the same)."""
        flag = self.signum is not None
        if comm.get_world_size() == 1:
            return flag
        device = next(self.trainer.model.parameters()).device
        t = torch.tensor([self.signum or 0], dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if self.signum is None and int(t.item()) > 0:
            self.signals.signum = int(t.item())
        return int(t.item()) > 0
