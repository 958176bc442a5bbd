"""When training stops: on request (Ctrl-C, SIGTERM) and early, when validation stops improving."""

from __future__ import annotations

import signal
import threading

__all__ = ["StopRequest", "EarlyStopping"]


class StopRequest:
    """While active, the first SIGINT/SIGTERM asks training to stop after the epoch's checkpoint.

    A second one raises ``KeyboardInterrupt`` at once (losing the epoch in progress),
    unless ``second_aborts`` is False: under torchrun a Ctrl-C reaches the
    workers and then the launcher's SIGTERM follows it, and neither may cost
    the checkpoint. Only the main thread can take signals; elsewhere this does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, log=print, second_aborts: bool = True) -> None:
        self.signum: int | None = None
        self._old: dict = {}
        self._log = log
        self._second_aborts = second_aborts

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            if not self._second_aborts:
                return
            self.__exit__()
            raise KeyboardInterrupt
        self.signum = signum
        if self._second_aborts:
            self._log(f"\n{signal.Signals(signum).name}: stopping after this epoch, once its checkpoint is written "
                      "(Ctrl-C again stops now and loses the epoch)")
        else:
            self._log(f"\n{signal.Signals(signum).name}: every process stops after this step, once its checkpoint "
                      "is written")

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()


class EarlyStopping:
    """The best validation AUC so far, and how many epochs since it last improved."""

    def __init__(self, patience: int, best: float = -1.0, bad_epochs: int = 0):
        self.patience, self.best, self.bad_epochs = patience, best, bad_epochs

    @property
    def exhausted(self) -> bool:
        return self.bad_epochs >= self.patience

    def update(self, auc: float) -> bool:
        """Record an epoch's validation AUC; True when it is a new best (NaN never is)."""
        if auc == auc and auc > self.best:
            self.best, self.bad_epochs = auc, 0
            return True
        self.bad_epochs += 1
        return False
