"""The pool's errors: every failure of a pool call raises one of these."""

from __future__ import annotations


class PoolError(RuntimeError):
    """Base class of the pool's errors."""


class PoolStartError(PoolError):
    """A worker could not start: bad model, missing main guard, or it died while loading."""


class PoolWorkerError(PoolError):
    """A worker raised while encoding; the message holds its device and traceback.

    The pool stays usable: the other chunks of the failed call are dropped.
    """

    def __init__(self, message: str, device: str, worker_traceback: str) -> None:
        super().__init__(message)
        self.device = device
        self.worker_traceback = worker_traceback


class WorkerDiedError(PoolError):
    """A worker process exited unexpectedly (killed by the OS, crashed); the pool is broken."""

    def __init__(self, message: str, device: str, exitcode: int | None) -> None:
        super().__init__(message)
        self.device = device
        self.exitcode = exitcode


class WorkerStalledError(WorkerDiedError):
    """A worker held work and showed no progress (no result, no heartbeat) for the pool's
    stall timeout, e.g. it was stopped with SIGSTOP; it was killed and the pool is broken."""


class PoolClosedError(PoolError):
    """The pool was stopped (before or during the call)."""
