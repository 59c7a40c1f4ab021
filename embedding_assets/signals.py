"""SIGTERM and Ctrl-C stop a backfill within seconds, whatever it is doing.

Dagster turns SIGINT/SIGTERM inside a run into an interruption error, but a signal that
lands in a finalizer is swallowed ("Exception ignored in ... __del__") and a long C call
(a DuckDB query, a torch kernel) only sees it when it returns. `StopOnSignal` therefore
also watches the signals itself (through the wakeup file descriptor, which every handler,
Dagster's included, writes to): once one arrived, it delivers it again at once when the
interruption it raised was swallowed (Python reports that through `sys.unraisablehook`),
and blindly after `redeliver_s`; after `deadline_s` it calls `on_deadline` (which records
the interrupted runs) and ends the process with status 128 + the signal number.
"""

from __future__ import annotations

import _thread
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class BackfillInterrupted(BaseException):
    """SIGINT or SIGTERM arrived: the backfill stops (a BaseException, as KeyboardInterrupt,
    so no `except Exception` on the way swallows it)."""

    def __init__(self, signum: int | None = None) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal_name(signum)}")


def signal_name(signum: int | None) -> str:
    return signal.Signals(signum).name if signum else "SIGINT or SIGTERM"


class StopOnSignal:
    """Context manager: SIGINT/SIGTERM raise `BackfillInterrupted` (outside a Dagster run;
    inside one Dagster interrupts the step), and the process ends by `deadline_s` at the latest.

    Example::

        with StopOnSignal(on_deadline=lambda signum: mark_runs_canceled()) as stop:
            ...            # stop.signum is set once a signal arrived
    """

    def __init__(self, on_deadline: Callable[[int], None], redeliver_s: float = 3.0,
                 deadline_s: float = 8.0) -> None:
        self.on_deadline = on_deadline
        self.redeliver_s = redeliver_s
        self.deadline_s = deadline_s
        self.signum: int | None = None
        self._done = threading.Event()
        self._arrived = threading.Event()
        self._swallowed = threading.Event()

    def __enter__(self) -> StopOnSignal:
        self._installed = threading.current_thread() is threading.main_thread()
        if not self._installed:  # only the main thread may set signal handlers
            return self
        self._read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._write_fd = write_fd
        self._previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self._previous = {sig: signal.signal(sig, self._raise) for sig in STOP_SIGNALS}
        self._previous_hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable
        threading.Thread(target=self._listen, name="backfill-signals", daemon=True).start()
        threading.Thread(target=self._enforce, name="backfill-deadline", daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        self._arrived.set()
        if not self._installed:
            return
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._previous_fd)
        sys.unraisablehook = self._previous_hook
        os.close(self._write_fd)  # ends _listen's read

    def _raise(self, signum: int, _frame) -> None:
        self.signum = self.signum or signum
        raise BackfillInterrupted(signum)

    def _unraisable(self, unraisable) -> None:
        """An interruption raised in a finalizer or a garbage-collector callback is lost
        ("Exception ignored in ..."): deliver the signal again instead of printing it."""
        error = unraisable.exc_value
        interruption = isinstance(error, (KeyboardInterrupt, BackfillInterrupted)) or \
            type(error).__name__ == "DagsterExecutionInterruptedError"
        if interruption and not self._done.is_set():
            print(f"backfill: the {signal_name(self.signum)} landed in a finalizer; "
                  "delivering it again", file=sys.stderr, flush=True)
            self._swallowed.set()
            return
        self._previous_hook(unraisable)

    def _listen(self) -> None:
        with os.fdopen(self._read_fd, "rb", buffering=0) as pipe:
            while data := pipe.read(64):
                arrived = [number for number in data if number in STOP_SIGNALS]
                if arrived and not self._done.is_set():
                    self.signum = self.signum or arrived[0]
                    self._arrived.set()

    def _enforce(self) -> None:
        self._arrived.wait()
        start = time.monotonic()
        redelivered = False
        while not self._done.is_set():
            elapsed = time.monotonic() - start
            if elapsed >= self.deadline_s:
                break
            wait_s = (self.redeliver_s if not redelivered else self.deadline_s) - elapsed
            if self._swallowed.wait(min(max(wait_s, 0.0), 0.1)):
                self._swallowed.clear()
                _thread.interrupt_main(self.signum)  # the last one was lost in a finalizer
            elif not redelivered and elapsed >= self.redeliver_s:
                redelivered = True
                _thread.interrupt_main(self.signum)  # it may have been swallowed unseen
        if self._done.is_set():
            return
        signum = self.signum or signal.SIGINT
        try:
            self.on_deadline(signum)
        finally:
            print(f"backfill: stopped by {signal_name(signum)}: still busy "
                  f"{self.deadline_s:.0f} s later, exiting now", file=sys.stderr, flush=True)
            os._exit(128 + signum)
