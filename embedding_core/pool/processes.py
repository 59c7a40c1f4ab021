"""Worker processes: spawn them, wait until they have loaded the model, stop them for sure.

Each worker has its own pipes, so a worker killed by the OS cannot hold a lock the others
need; every join, poll and kill of a process goes through its ``reap_lock``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from embedding_core.pool.errors import PoolStartError
from embedding_core.pool.planning import WorkerSpec
from embedding_core.pool.worker import Recipe, worker_main

logger = logging.getLogger(__name__)

# How long ``close()`` waits for idle workers to exit before terminating them.
CLOSE_GRACE_S = 5.0
# How long a killed worker may take to exit: the GPU driver tears down a CUDA context first.
KILL_WAIT_S = 30.0
# How long ``start`` waits for the workers to load the model.
START_TIMEOUT_S = float(os.environ.get("EMBEDDING_POOL_START_TIMEOUT", "600"))
# How long a worker that holds work may show no progress (no result and no heartbeat, which
# a running worker sends every second) before the call fails: see `stall_timeout`.
STALL_TIMEOUT_ENV = "EMBEDDING_POOL_STALL_TIMEOUT"
DEFAULT_STALL_TIMEOUT_S = 30.0
# Exit code of a worker that found the pool being started while its main module was re-imported.
_MAIN_GUARD_EXIT_CODE = 78
_THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_CHILD_ENV_LOCK = threading.Lock()


def refuse_while_bootstrapping() -> None:
    """Stop a spawned worker that is re-running a script which starts a pool at import time."""
    # True only while a spawned child re-imports the parent's main module (the check
    # multiprocessing itself makes before it refuses to start a process then).
    if not getattr(multiprocessing.current_process(), "_inheriting", False):
        return
    main = sys.modules.get("__mp_main__") or sys.modules.get("__main__")
    script = getattr(main, "__file__", None) or "the main script"
    sys.stderr.write(
        f"embedding_core pool: a worker process re-ran {script} and reached the code that starts "
        "the pool. Worker processes are spawned, which imports the main script again; put the "
        'code that starts the pool or encodes under `if __name__ == "__main__":`.\n'
    )
    sys.stderr.flush()
    raise SystemExit(_MAIN_GUARD_EXIT_CODE)


@contextlib.contextmanager
def _child_environment(threads: int) -> Iterator[None]:
    """Thread-count variables a spawned child sees before it imports torch."""
    overrides = {name: str(threads) for name in _THREAD_ENV_VARS}
    overrides["TOKENIZERS_PARALLELISM"] = "false"
    with _CHILD_ENV_LOCK:
        saved = {name: os.environ.get(name) for name in overrides}
        os.environ.update(overrides)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def stall_timeout(value: float | None) -> float:
    """The stall timeout in seconds: `value`, else $EMBEDDING_POOL_STALL_TIMEOUT, else 30."""
    source = "stall_timeout_s"
    if value is None:
        source = f"${STALL_TIMEOUT_ENV}"
        raw = os.environ.get(STALL_TIMEOUT_ENV, "").strip()
        try:
            value = float(raw) if raw else DEFAULT_STALL_TIMEOUT_S
        except ValueError:
            raise ValueError(f"{source} must be a number of seconds, got {raw!r}") from None
    if not 0 < value < float("inf"):
        raise ValueError(f"{source} must be a positive number of seconds, got {value!r}")
    return float(value)


def heartbeat_interval(stall_timeout_s: float) -> float:
    """How often a worker tells the parent it runs: several times per stall timeout."""
    return min(1.0, stall_timeout_s / 5)


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "stopped answering"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (the out-of-memory killer sends SIGKILL)" if name == "SIGKILL" else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {exitcode}"


@dataclass
class Worker:
    index: int
    spec: WorkerSpec
    process: Any
    task_conn: Connection
    result_conn: Connection
    pid: int
    in_flight: set[int] = field(default_factory=set)
    # Reaping a child from two threads at once makes the loser's waitpid fail (ECHILD) and
    # multiprocessing then reports no exit code: every join, poll and close goes through here.
    reap_lock: threading.Lock = field(default_factory=threading.Lock)
    result_eof: bool = False
    # When the parent last heard from it (a result or a heartbeat), or gave it work while idle.
    last_heard: float = field(default_factory=time.monotonic)

    @property
    def label(self) -> str:
        return f"worker {self.index} on {self.spec.device} (pid {self.pid})"

    def join(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the process to exit; its exit code, or None."""
        with self.reap_lock:
            self.process.join(max(0.0, timeout))
            return self.process.exitcode

    def exitcode(self) -> int | None:
        return self.join(0.0)

    def signal(self, method: str) -> None:
        """``terminate`` or ``kill`` the process if it is still running."""
        with self.reap_lock, contextlib.suppress(OSError, ValueError):
            if self.process.exitcode is None:
                getattr(self.process, method)()

    def close_task_pipe(self) -> None:
        with self.reap_lock, contextlib.suppress(OSError):
            self.task_conn.close()


def stop_processes(workers: list[Worker], grace_s: float) -> None:
    """Ask workers to exit (EOF on their task pipe), then terminate and kill; always join."""
    started = time.monotonic()
    for worker in workers:
        worker.close_task_pipe()
    for worker in workers:
        worker.join(started + grace_s - time.monotonic())
    for method, wait_s in (("terminate", 2.0), ("kill", KILL_WAIT_S)):
        alive = [w for w in workers if w.exitcode() is None]
        for worker in alive:
            worker.signal(method)
        deadline = time.monotonic() + wait_s
        for worker in alive:
            worker.join(deadline - time.monotonic())
    for worker in workers:
        if worker.exitcode() is None:
            logger.error("Pool %s did not exit within %.0f s of SIGKILL.", worker.label, KILL_WAIT_S)
    logger.debug("Pool workers %s stopped in %.1f s.", [w.pid for w in workers], time.monotonic() - started)


def discard_workers(workers: list[Worker], grace_s: float) -> None:
    """Stop the workers and release their pipes and process handles."""
    stop_processes(workers, grace_s)
    for worker in workers:
        with worker.reap_lock:
            with contextlib.suppress(OSError):
                worker.result_conn.close()
            with contextlib.suppress(ValueError):
                worker.process.close()


def start_workers(specs: list[WorkerSpec], recipe: Recipe,
                  heartbeat_s: float = 1.0) -> tuple[list[Worker], list[str]]:
    """Spawn one process per spec and wait until each has loaded the model (or failed)."""
    context = multiprocessing.get_context("spawn")
    workers: list[Worker] = []
    try:
        for index, spec in enumerate(specs):
            task_reader, task_writer = context.Pipe(duplex=False)
            result_reader, result_writer = context.Pipe(duplex=False)
            process = context.Process(
                target=worker_main,
                args=(spec, recipe, task_reader, result_writer, heartbeat_s),
                name=f"embedding-pool-{index}-{spec.device}",
                daemon=True,
            )
            with _child_environment(spec.threads):
                process.start()
            task_reader.close()
            result_writer.close()
            workers.append(Worker(index, spec, process, task_writer, result_reader, process.pid))
        return workers, _await_ready(workers)
    except BaseException:
        discard_workers(workers, grace_s=0.0)
        raise


def _await_ready(workers: list[Worker]) -> list[str]:
    fingerprints: dict[int, str] = {}
    deadline = time.monotonic() + START_TIMEOUT_S
    while len(fingerprints) < len(workers):
        waiting = [w for w in workers if w.index not in fingerprints]
        handles = [w.result_conn for w in waiting] + [w.process.sentinel for w in waiting]
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not wait(handles, timeout=remaining):
            labels = ", ".join(w.label for w in waiting)
            raise PoolStartError(f"Pool {labels} did not load the model within {START_TIMEOUT_S:.0f} s.")
        for worker in waiting:
            message = None
            if worker.result_conn.poll():
                try:
                    message = worker.result_conn.recv()
                except (EOFError, OSError):  # it is exiting: wait for its exit code
                    worker.join(5.0)
            if message is None:
                if worker.exitcode() is not None:
                    raise PoolStartError(_early_exit_message(worker))
                continue
            kind, payload = message
            if kind == "failed_to_start":
                raise PoolStartError(
                    f"Pool {worker.label} could not load the model.\n\nWorker traceback:\n{payload}"
                )
            fingerprints[worker.index] = payload
    return [fingerprints[w.index] for w in workers]


def _early_exit_message(worker: Worker) -> str:
    exitcode = worker.exitcode()
    if exitcode == _MAIN_GUARD_EXIT_CODE:
        script = getattr(sys.modules.get("__main__"), "__file__", None) or "the main script"
        return (
            f"Pool {worker.label} stopped: spawning it re-ran {script}, which starts a pool at import "
            'time. Put the code that starts the pool or encodes under `if __name__ == "__main__":`.'
        )
    return (
        f"Pool {worker.label} {describe_exit(exitcode)} before it loaded the model "
        "(its error, if any, is on stderr above)."
    )


