"""Dispatch: the calls in flight, their chunks sent round-robin to workers with room, and
the collector thread that routes each result to its call and notices a dead worker."""

from __future__ import annotations

import itertools
import logging
import queue
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any

import numpy as np

from embedding_core.batching import EncodeOptions, TokenizedTexts
from embedding_core.pool.errors import (
    PoolClosedError,
    PoolError,
    WorkerDiedError,
    WorkerStalledError,
)
from embedding_core.pool.processes import (
    CLOSE_GRACE_S,
    KILL_WAIT_S,
    STALL_TIMEOUT_ENV,
    Worker,
    describe_exit,
    discard_workers,
    stop_processes,
)

logger = logging.getLogger(__name__)

# Chunks sent ahead to each worker: one to compute, one waiting, so a worker never idles
# between chunks while the parent routes a result.
CHUNKS_IN_FLIGHT_PER_WORKER = 2


@dataclass
class Job:
    """One ``encode`` call: its tokens, its chunks not yet sent, and the events routed to it."""

    job_id: int
    tokens: TokenizedTexts
    order: np.ndarray
    options: EncodeOptions
    pending: deque[slice]
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    finished: bool = False


@dataclass
class Task:
    job: Job
    rows: np.ndarray
    worker: Worker


class PoolState:
    """Everything the workers and the collector thread share; the pool's finalizer closes it."""

    def __init__(self, workers: list[Worker], temp_dir: str | None, stall_timeout_s: float = 30.0) -> None:
        self.workers = workers
        self.stall_timeout_s = stall_timeout_s
        self.temp_dir = temp_dir
        self.lock = threading.Lock()
        self.tokenize_lock = threading.Lock()
        self.jobs: deque[Job] = deque()  # jobs with chunks to send, served round-robin
        self.tasks: dict[int, Task] = {}
        self.task_ids = itertools.count()
        self.job_ids = itertools.count()
        self.broken: WorkerDiedError | None = None
        self.closed = False
        self.collector: threading.Thread | None = None
        self.registered: dict[int, Job] = {}

    # ----------------------------------------------------------------- dispatch
    def dispatch_locked(self) -> None:
        """Send pending chunks to workers with room, round-robin over jobs. Hold ``lock``."""
        while self.jobs and self.broken is None and not self.closed:
            worker = min(self.workers, key=lambda w: len(w.in_flight))
            if len(worker.in_flight) >= CHUNKS_IN_FLIGHT_PER_WORKER:
                return
            job = self.jobs.popleft()
            if job.finished or not job.pending:
                continue
            chunk = job.pending.popleft()
            if job.pending:
                self.jobs.append(job)
            rows = job.order[chunk]
            task_id = next(self.task_ids)
            try:
                worker.task_conn.send((task_id, job.tokens.subset(rows), job.options))
            except OSError:  # the worker died; the collector reports it from its sentinel
                return
            if not worker.in_flight:  # idle until now: its silence counts from here
                worker.last_heard = time.monotonic()
            worker.in_flight.add(task_id)
            self.tasks[task_id] = Task(job, rows, worker)

    # ----------------------------------------------------------------- collector
    def collect(self) -> None:
        """Route results to their calls and watch for dead workers, until closed or broken."""
        try:
            self._collect()
        except Exception:
            logger.exception("The encode pool's collector thread failed.")
            raise

    def _collect(self) -> None:
        by_sentinel = {w.process.sentinel: w for w in self.workers}
        while not self.closed and self.broken is None:
            by_conn = {w.result_conn: w for w in self.workers if not w.result_eof}
            try:
                ready = wait([*by_conn, *by_sentinel], timeout=0.5)
            except OSError:  # a pipe closed under us: the pool is closing
                return
            for handle in ready:
                if handle in by_conn:
                    self._receive(by_conn[handle])
            for handle in ready:
                if handle in by_sentinel and not self.closed:
                    worker = by_sentinel[handle]
                    worker.join(1.0)
                    self._worker_died(worker)
                    return
            stalled = self._stalled_worker()
            if stalled is not None and not self.closed:
                self._worker_stalled(*stalled)
                return

    def _stalled_worker(self) -> tuple[Worker, float, int, int] | None:
        """A worker that holds work and was silent for the stall timeout: it, how long it
        was silent, and the chunks and texts it holds."""
        now = time.monotonic()
        with self.lock:
            for worker in self.workers:
                silent = now - worker.last_heard
                # A message waiting in its pipe is progress the collector has not read yet.
                if worker.in_flight and silent > self.stall_timeout_s and not worker.result_conn.poll():
                    texts = sum(len(self.tasks[t].rows) for t in worker.in_flight if t in self.tasks)
                    return worker, silent, len(worker.in_flight), texts
        return None

    def _receive(self, worker: Worker) -> None:
        try:
            kind, task_id, payload = worker.result_conn.recv()
        except (EOFError, OSError):  # the worker is exiting: its sentinel reports it
            worker.result_eof = True
            return
        worker.last_heard = time.monotonic()
        if kind == "alive":  # a heartbeat: the worker runs
            return
        with self.lock:
            task = self.tasks.pop(task_id, None)
            worker.in_flight.discard(task_id)
            self.dispatch_locked()
        if task is not None and not task.job.finished:
            task.job.events.put((kind, task, payload))

    def _worker_stalled(self, worker: Worker, silent: float, chunks: int, texts: int) -> None:
        """Kill a worker that stopped making progress (SIGKILL also ends a stopped process)."""
        worker.signal("kill")
        exitcode = worker.join(KILL_WAIT_S)
        self._break(worker, WorkerStalledError(
            f"Pool {worker.label} held {chunks} chunk(s) of {texts} texts and showed no progress "
            f"(no result, no heartbeat) for {silent:.0f} s, past the stall timeout of "
            f"{self.stall_timeout_s:g} s (${STALL_TIMEOUT_ENV}); is it stopped (SIGSTOP) or frozen? "
            "It was killed and the pool is broken: stop it and start a new one.",
            worker.spec.device,
            exitcode,
        ))

    def _worker_died(self, worker: Worker) -> None:
        exitcode = worker.exitcode()
        self._break(worker, WorkerDiedError(
            f"Pool {worker.label} {describe_exit(exitcode)}. The pool is broken: "
            "stop it and start a new one.",
            worker.spec.device,
            exitcode,
        ))

    def _break(self, worker: Worker, error: WorkerDiedError) -> None:
        """Fail every call in flight with `error` and stop the other workers."""
        with self.lock:
            self.broken = error
            jobs = list(self.registered.values())
        for job in jobs:
            job.events.put(("broken", None, error))
        logger.error("%s", error)
        # The survivors cannot finish the calls alone; free their memory (and GPUs) now.
        stop_processes([w for w in self.workers if w is not worker], grace_s=0.0)

    # ----------------------------------------------------------------- calls
    def register(self, job: Job) -> None:
        with self.lock:
            self.raise_if_unusable_locked()
            self.registered[job.job_id] = job
            self.jobs.append(job)
            self.dispatch_locked()

    def unregister(self, job: Job) -> None:
        with self.lock:
            job.finished = True
            job.pending.clear()
            self.registered.pop(job.job_id, None)

    def next_event(self, job: Job) -> tuple[str, Task | None, Any]:
        """The next result, error or failure routed to ``job``."""
        while True:
            try:
                return job.events.get(timeout=1.0)
            except queue.Empty:
                pass
            collector = self.collector
            if collector is not None and not collector.is_alive() and self.broken is None and not self.closed:
                raise PoolError("The pool's collector thread stopped unexpectedly; stop the pool and start a new one.")

    def raise_if_unusable_locked(self) -> None:
        if self.closed:
            raise PoolClosedError("This pool has been stopped; start a new one.")
        if self.broken is not None:
            raise WorkerDiedError(f"This pool is broken: {self.broken}", self.broken.device, self.broken.exitcode)


def shutdown(state: PoolState) -> None:
    """Close the pool: fail running calls, stop every worker, remove the temporary model copy."""
    with state.lock:
        if state.closed:
            return
        graceful = state.broken is None and not state.registered
        state.closed = True
        jobs = list(state.registered.values())
    for job in jobs:
        job.events.put(("closed", None, PoolClosedError("The pool was stopped while this call was running.")))
    stop_processes(state.workers, grace_s=CLOSE_GRACE_S if graceful else 0.0)
    collector = state.collector
    if collector is not None and collector is not threading.current_thread():
        collector.join(5.0)  # it leaves its wait() before the pipes are closed
    discard_workers(state.workers, grace_s=0.0)
    if state.temp_dir is not None:
        shutil.rmtree(state.temp_dir, ignore_errors=True)


