"""Stop training cleanly on SIGTERM / SIGINT: finish the step, save a checkpoint, stop.

:class:`StopOnSignal` is a detectron2 hook (``LTTrainer`` adds it last) and the signal handler it
installs while training runs (main thread only). A signal during the iteration loop sets a flag;
after the current step every process agrees on it (a max all-reduce when the world size is above
1, so all ranks stop at the same iteration), the main process saves ``model_<iter>.pth`` with the
same contents as a periodic checkpoint (``--resume`` continues exactly from it), all processes
wait for the save, and training ends with :class:`~lt_det.errors.RunStopped` (one line, exit
status 128 + signal number). A signal before the loop or after its last step (during the final
evaluation) stops at once with the same exception; nothing needs saving then. Repeated signals
while stopping are ignored (``kill -9`` stops at once; the last complete checkpoint stays intact).
"""
import os
import signal
import threading
from typing import Optional

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..errors import RunStopped

__all__ = ["StopOnSignal"]

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopOnSignal(HookBase):
    """Save a checkpoint and stop after the current step when SIGTERM or SIGINT arrives."""

    def __init__(self):
        self.signum: Optional[int] = None
        self.in_loop = False
        self._previous = {}

    # ------------------------------------------------------------------ handlers
    def install(self) -> None:
        """Install the handlers (main thread only; elsewhere signals keep their behaviour)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            return  # already stopping
        self.signum = signum
        if not self.in_loop:
            raise self._stopped(None)

    def _stopped(self, path: Optional[str]) -> RunStopped:
        name = signal.Signals(self.signum).name
        if path is None:
            what = "outside the training iterations; nothing was saved"
            resume = "The last checkpoint (if any) is intact; --resume continues from it."
        else:
            what = f"at iteration {self.trainer.iter}; checkpoint '{path}' was saved"
            resume = "--resume continues from it."
        return RunStopped(f"stopped by {name} {what}. {resume}", exit_code=128 + self.signum)

    # ------------------------------------------------------------------ hook
    def before_train(self) -> None:
        self.in_loop = self.trainer.iter < self.trainer.max_iter

    def after_step(self) -> None:
        last = self.trainer.iter + 1 >= self.trainer.max_iter
        if not self._agreed():
            self.in_loop = not last
            return
        self.in_loop = False
        checkpointer = self.trainer.checkpointer
        name = f"model_{self.trainer.iter:07d}"
        checkpointer.save(name, iteration=self.trainer.iter)  # writes on the main process only
        comm.synchronize()  # every process waits for the save
        raise self._stopped(os.path.join(checkpointer.save_dir, f"{name}.pth"))

    def _agreed(self) -> bool:
        """Whether any process got a signal (all of them answer the same)."""
        flag = self.signum is not None
        if comm.get_world_size() == 1:
            return flag
        device = next(self.trainer.model.parameters()).device
        t = torch.tensor([self.signum or 0], dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if self.signum is None and int(t.item()) > 0:
            self.signum = int(t.item())
        return int(t.item()) > 0
