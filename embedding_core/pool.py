"""Multi-process / multi-GPU encoding pool that reports a dead worker instead of hanging.

``SentenceTransformer.start_multi_process_pool`` starts an :class:`EncodePool`; ``encode(...,
pool=pool)`` spreads one call over its workers:

    tokenize once in the parent -> order the whole call by token length -> cut into chunks of
    whole batches -> workers run the model on token ids -> scatter back to the caller's order

How it stays trustworthy:

* Workers are ``spawn``-ed (CUDA-safe, the same on every OS) and load the model once, from its
  local snapshot folder, never receiving it per chunk. Each worker checks that the weights it
  loaded are byte-identical to the parent's; a model changed in memory (or built from
  ``modules=``) is saved once to a temporary folder that the pool removes when it closes.
* Each worker has its own pipes, so a worker killed by the OS cannot hold a lock the others
  need. A collector thread in the parent waits on the result pipes and on the processes'
  sentinels together: a death is noticed at once, reported with the device, and the pool is
  marked broken (its other workers are stopped; further calls raise).
* Results are routed by task id to the call that submitted them, so threads sharing a pool
  each get their own results. A worker's exception comes back with its traceback.
* ``close()`` always succeeds: it stops the workers, terminates and then kills any that do not
  exit, and joins them. A pool dropped without ``close()`` is closed when it is garbage
  collected or when the interpreter exits.

Example::

    >>> from embedding_core import SentenceTransformer
    >>> model = SentenceTransformer("all-MiniLM-L6-v2")
    >>> if __name__ == "__main__":  # spawn re-imports the main script in each worker
    ...     with model.start_multi_process_pool(["cpu", "cpu"]) as pool:
    ...         embeddings = model.encode(["first text", "second text"], pool=pool)
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import multiprocessing
import os
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import std as tqdm_std
from tqdm.auto import tqdm

from embedding_core.batching import length_order, plan_batches

if TYPE_CHECKING:
    from embedding_core.model import SentenceTransformer, TokenizedTexts

logger = logging.getLogger(__name__)

# Without a ``chunk_size``, a call is cut into about this many chunks per worker (equal padded
# tokens each), so a worker that finishes early takes more work and the progress bar moves.
CHUNKS_PER_WORKER = 16
# ... and no chunk holds more texts than this, so a huge call never ships a huge message.
MAX_CHUNK_TEXTS = 4096
# Chunks sent ahead to each worker: one to compute, one waiting, so a worker never idles
# between chunks while the parent routes a result.
CHUNKS_IN_FLIGHT_PER_WORKER = 2
# How long ``close()`` waits for idle workers to exit before terminating them.
CLOSE_GRACE_S = 5.0
# How long a killed worker may take to exit: the GPU driver tears down a CUDA context first.
KILL_WAIT_S = 30.0
# How long ``start`` waits for the workers to load the model.
START_TIMEOUT_S = float(os.environ.get("EMBEDDING_POOL_START_TIMEOUT", "600"))
# Exit code of a worker that found the pool being started while its main module was re-imported.
_MAIN_GUARD_EXIT_CODE = 78
_THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_CHILD_ENV_LOCK = threading.Lock()


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


class PoolClosedError(PoolError):
    """The pool was stopped (before or during the call)."""


# ---------------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class WorkerSpec:
    """One worker process: the torch device it runs on and its torch intra-op thread count."""

    device: str
    threads: int


def available_cores() -> int:
    """CPU cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _normalize_device(device: Any, cuda_device_count: int, mps_available: bool) -> str:
    text = str(device).strip().lower()
    kind, _, index = text.partition(":")
    if index and not index.isdigit():
        raise ValueError(f"Device {device!r} is not a device name like 'cpu', 'cuda:0' or 'mps'.")
    if kind == "cpu":
        return "cpu"
    if kind == "cuda":
        if cuda_device_count == 0:
            raise ValueError(
                f"Device {device!r} was asked for, but CUDA is not available on this machine "
                "(torch.cuda.device_count() is 0)."
            )
        number = int(index or 0)
        if number >= cuda_device_count:
            raise ValueError(
                f"Device {device!r} does not exist: this machine has {cuda_device_count} CUDA "
                f"device(s), cuda:0 to cuda:{cuda_device_count - 1}."
            )
        return f"cuda:{number}"
    if kind == "mps":
        if not mps_available:
            raise ValueError(f"Device {device!r} was asked for, but MPS is not available on this machine.")
        return "mps"
    raise ValueError(
        f"Unknown device {device!r} in target_devices: expected 'cpu', 'cuda', 'cuda:N' or 'mps'."
    )


def plan_workers(
    target_devices: Sequence[Any] | None,
    cuda_device_count: int,
    cores: int,
    mps_available: bool = False,
) -> list[WorkerSpec]:
    """The pool's workers for ``target_devices`` on a machine with these GPUs and cores.

    * ``None`` with CUDA: one worker per GPU, ``cuda:0`` to ``cuda:N-1``.
    * ``None`` without CUDA: CPU workers with ``floor(sqrt(cores))`` threads each and as many
      workers as fit in the cores (2 cores: 2 x 1; 4: 2 x 2; 8: 4 x 2; 16: 4 x 4). Several
      processes scale better than one process's threads, and each costs one model copy.
    * Every worker gets ``max(1, cores // workers)`` torch threads, so processes x threads
      never exceeds the cores (unless more workers than cores are asked for).

    Unknown device names and CUDA devices this machine lacks raise ``ValueError``.
    """
    cores = max(1, int(cores))
    if target_devices is None:
        if cuda_device_count > 0:
            devices = [f"cuda:{i}" for i in range(cuda_device_count)]
        else:
            devices = ["cpu"] * (cores // max(1, math.isqrt(cores)))
    else:
        if isinstance(target_devices, (str, torch.device)):
            target_devices = [target_devices]
        devices = [_normalize_device(d, cuda_device_count, mps_available) for d in target_devices]
        if not devices:
            raise ValueError("target_devices is empty: name at least one device, or pass None.")
    threads = max(1, cores // len(devices))
    return [WorkerSpec(device, threads) for device in devices]


def plan_chunks(
    sorted_lengths: Sequence[int],
    batch_size: int,
    workers: int,
    max_tokens_per_batch: int | None = None,
    chunk_size: int | None = None,
) -> list[slice]:
    """Cut a whole call's length-sorted (longest first) texts into chunks for the workers.

    Chunks are consecutive ranges of the sorted order, so each is length-homogeneous, and
    made of whole batches of ``plan_batches``, so a worker pads exactly as one process would.
    With ``chunk_size``, a chunk holds at most that many texts (a batch larger than that is
    split). Without it, chunks carry about equal padded tokens, ``CHUNKS_PER_WORKER`` per
    worker, at most ``MAX_CHUNK_TEXTS`` texts each.
    """
    lengths = np.asarray(sorted_lengths, dtype=np.int64)
    batches = plan_batches(lengths, batch_size, max_tokens_per_batch)
    if chunk_size is not None:
        if not isinstance(chunk_size, int) or chunk_size <= 0:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
        pieces = [
            slice(start, min(start + chunk_size, batch.stop))
            for batch in batches
            for start in range(batch.start, batch.stop, chunk_size)
        ]
        max_texts, budget = chunk_size, math.inf
    else:
        pieces = batches
        total = sum((b.stop - b.start) * max(int(lengths[b.start]), 1) for b in batches)
        max_texts, budget = MAX_CHUNK_TEXTS, total / (max(1, workers) * CHUNKS_PER_WORKER)

    chunks: list[slice] = []
    start: int | None = None
    texts = cost = 0
    for piece in pieces:
        rows = piece.stop - piece.start
        piece_cost = rows * max(int(lengths[piece.start]), 1)
        if start is not None and (texts + rows > max_texts or cost + piece_cost > budget):
            chunks.append(slice(start, piece.start))
            start = None
        if start is None:
            start, texts, cost = piece.start, 0, 0
        texts += rows
        cost += piece_cost
    if start is not None:
        chunks.append(slice(start, len(lengths)))
    return chunks


# ---------------------------------------------------------------------------------- model recipe
@dataclass(frozen=True)
class ModelRecipe:
    """What a worker needs to rebuild the parent's model: a local folder plus runtime settings."""

    path: str
    trust_remote_code: bool
    dtype: str | None
    prompts: dict[str, str]
    default_prompt_name: str | None
    truncate_dim: int | None
    max_seq_length: int | None
    similarity_fn_name: str
    backend: str = "torch"


def model_recipe(model: SentenceTransformer, path: str) -> ModelRecipe:
    """The recipe to load ``model`` from ``path`` with the settings it has now."""
    config = model.transformer.auto_model.config
    # A model whose config needs remote code was loaded with trust_remote_code=True already.
    trust_remote_code = bool(getattr(config, "auto_map", None))
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    dtype = str(dtypes.pop()).removeprefix("torch.") if len(dtypes) == 1 else None
    return ModelRecipe(
        path=path,
        trust_remote_code=trust_remote_code,
        dtype=dtype,
        prompts=dict(model.prompts),
        default_prompt_name=model.default_prompt_name,
        truncate_dim=model.truncate_dim,
        max_seq_length=model.max_seq_length,
        similarity_fn_name=model.similarity_fn_name,
        backend=getattr(model, "backend", "torch"),
    )


def weights_fingerprint(model: torch.nn.Module) -> str:
    """Hash of every tensor of ``model.state_dict()`` (name, dtype, shape and bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in model.state_dict().items():
        value = tensor.detach()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        if value.numel():
            digest.update(value.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _load_worker_model(recipe: ModelRecipe, device: str) -> tuple[SentenceTransformer, str]:
    from embedding_core.model import SentenceTransformer

    backend = {} if recipe.backend == "torch" else {"backend": recipe.backend}
    model = SentenceTransformer(
        recipe.path, device="cpu", local_files_only=True, trust_remote_code=recipe.trust_remote_code, **backend
    )
    if recipe.dtype is not None:
        model.to(getattr(torch, recipe.dtype))
    model.prompts = dict(recipe.prompts)
    model.default_prompt_name = recipe.default_prompt_name
    model.truncate_dim = recipe.truncate_dim
    model.max_seq_length = recipe.max_seq_length
    model.similarity_fn_name = recipe.similarity_fn_name
    fingerprint = weights_fingerprint(model)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    model.to(device)
    return model, fingerprint


# ---------------------------------------------------------------------------------- worker side
@dataclass
class _PackedTensor:
    """A tensor as a numpy array (pickled by value), so results never go through shared memory."""

    array: np.ndarray
    dtype: str
    shape: tuple[int, ...]

    @classmethod
    def pack(cls, tensor: torch.Tensor) -> _PackedTensor:
        value = tensor.detach().to("cpu")
        try:
            array = value.numpy()
        except TypeError:  # bfloat16 and other dtypes numpy lacks travel as raw bytes
            array = value.contiguous().reshape(-1).view(torch.uint8).numpy()
        return cls(array, str(value.dtype).removeprefix("torch."), tuple(value.shape))

    def unpack(self) -> torch.Tensor:
        tensor = torch.from_numpy(self.array)
        dtype = getattr(torch, self.dtype)
        if tensor.dtype != dtype:
            tensor = tensor.view(dtype).reshape(self.shape)
        return tensor


def _pack(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return _PackedTensor.pack(value)
    if isinstance(value, dict):
        return {key: _pack(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_pack(item) for item in value]
    return value


def _unpack(value: Any) -> Any:
    if isinstance(value, _PackedTensor):
        return value.unpack()
    if isinstance(value, dict):
        return {key: _unpack(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unpack(item) for item in value]
    return value


def _receive_tasks(task_conn: Connection, tasks: queue.SimpleQueue) -> None:
    """Drain the task pipe into a local queue, so the parent's sends never wait on a compute."""
    while True:
        try:
            message = task_conn.recv()
        except (EOFError, OSError):  # the parent closed the pool, or died
            message = None
        tasks.put(message)
        if message is None:
            return


def _worker_main(spec: WorkerSpec, recipe: ModelRecipe, task_conn: Connection, result_conn: Connection) -> None:
    """A worker process: load the model once, then encode token-id chunks until told to stop."""
    from embedding_core.model import TokenizedTexts

    # Ctrl-C reaches the whole process group; the parent decides what stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # tqdm's default lock is a multiprocessing semaphore, which the fast exit below would leak.
    tqdm_std.tqdm.set_lock(threading.RLock())
    torch.set_num_threads(spec.threads)
    with contextlib.suppress(RuntimeError):  # already set by an import-time parallel region
        torch.set_num_interop_threads(1)
    try:
        model, fingerprint = _load_worker_model(recipe, spec.device)
    except BaseException:
        result_conn.send(("failed_to_start", traceback.format_exc()))
        return
    result_conn.send(("ready", fingerprint))

    tasks: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_receive_tasks, args=(task_conn, tasks), daemon=True).start()
    while (message := tasks.get()) is not None:
        task_id, ids, offsets, options = message
        try:
            count = len(offsets) - 1
            result = model.compute(
                [""] * count, tokenized=TokenizedTexts(ids, offsets), to_cpu=True, show_progress_bar=False, **options
            )
            reply = ("done", task_id, _pack(result))
        except Exception:
            reply = ("error", task_id, traceback.format_exc())
        try:
            result_conn.send(reply)
        except OSError:  # the parent is gone
            break
    # Nothing is left to flush or release: skip the interpreter's slow teardown of torch.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# ---------------------------------------------------------------------------------- parent side
def _refuse_while_bootstrapping() -> None:
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


def _describe_exit(exitcode: int | None) -> str:
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
class _Worker:
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


@dataclass
class _Job:
    """One ``encode`` call: its tokens, its chunks not yet sent, and the events routed to it."""

    job_id: int
    tokenized: TokenizedTexts
    order: np.ndarray
    options: dict[str, Any]
    pending: deque[slice]
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    finished: bool = False

    def chunk_payload(self, chunk: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The chunk's caller-order indices and its compact token ids and offsets."""
        rows = self.order[chunk]
        lengths = self.tokenized.lengths[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        pieces = self.tokenized.rows(rows)
        ids = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
        return rows, ids, offsets


@dataclass
class _Task:
    job: _Job
    rows: np.ndarray
    worker: _Worker


class _PoolState:
    """Everything the workers and the collector thread share; the pool's finalizer closes it."""

    def __init__(self, workers: list[_Worker], temp_dir: str | None) -> None:
        self.workers = workers
        self.temp_dir = temp_dir
        self.lock = threading.Lock()
        self.tokenize_lock = threading.Lock()
        self.jobs: deque[_Job] = deque()  # jobs with chunks to send, served round-robin
        self.tasks: dict[int, _Task] = {}
        self.task_ids = itertools.count()
        self.job_ids = itertools.count()
        self.broken: WorkerDiedError | None = None
        self.closed = False
        self.collector: threading.Thread | None = None
        self.registered: dict[int, _Job] = {}

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
            rows, ids, offsets = job.chunk_payload(chunk)
            task_id = next(self.task_ids)
            try:
                worker.task_conn.send((task_id, ids, offsets, job.options))
            except OSError:  # the worker died; the collector reports it from its sentinel
                return
            worker.in_flight.add(task_id)
            self.tasks[task_id] = _Task(job, rows, worker)

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

    def _receive(self, worker: _Worker) -> None:
        try:
            kind, task_id, payload = worker.result_conn.recv()
        except (EOFError, OSError):  # the worker is exiting: its sentinel reports it
            worker.result_eof = True
            return
        with self.lock:
            task = self.tasks.pop(task_id, None)
            worker.in_flight.discard(task_id)
            self.dispatch_locked()
        if task is not None and not task.job.finished:
            task.job.events.put((kind, task, payload))

    def _worker_died(self, worker: _Worker) -> None:
        exitcode = worker.exitcode()
        error = WorkerDiedError(
            f"Pool {worker.label} {_describe_exit(exitcode)}. The pool is broken: "
            "stop it and start a new one.",
            worker.spec.device,
            exitcode,
        )
        with self.lock:
            self.broken = error
            jobs = list(self.registered.values())
        for job in jobs:
            job.events.put(("broken", None, error))
        logger.error("%s", error)
        # The survivors cannot finish the calls alone; free their memory (and GPUs) now.
        _stop_processes([w for w in self.workers if w is not worker], grace_s=0.0)

    # ----------------------------------------------------------------- calls
    def register(self, job: _Job) -> None:
        with self.lock:
            self.raise_if_unusable_locked()
            self.registered[job.job_id] = job
            self.jobs.append(job)
            self.dispatch_locked()

    def unregister(self, job: _Job) -> None:
        with self.lock:
            job.finished = True
            job.pending.clear()
            self.registered.pop(job.job_id, None)

    def next_event(self, job: _Job) -> tuple[str, _Task | None, Any]:
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


def _stop_processes(workers: list[_Worker], grace_s: float) -> None:
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


def _discard_workers(workers: list[_Worker], grace_s: float) -> None:
    """Stop the workers and release their pipes and process handles."""
    _stop_processes(workers, grace_s)
    for worker in workers:
        with worker.reap_lock:
            with contextlib.suppress(OSError):
                worker.result_conn.close()
            with contextlib.suppress(ValueError):
                worker.process.close()


def _shutdown(state: _PoolState) -> None:
    """Close the pool: fail running calls, stop every worker, remove the temporary model copy."""
    with state.lock:
        if state.closed:
            return
        graceful = state.broken is None and not state.registered
        state.closed = True
        jobs = list(state.registered.values())
    for job in jobs:
        job.events.put(("closed", None, PoolClosedError("The pool was stopped while this call was running.")))
    _stop_processes(state.workers, grace_s=CLOSE_GRACE_S if graceful else 0.0)
    collector = state.collector
    if collector is not None and collector is not threading.current_thread():
        collector.join(5.0)  # it leaves its wait() before the pipes are closed
    _discard_workers(state.workers, grace_s=0.0)
    if state.temp_dir is not None:
        shutil.rmtree(state.temp_dir, ignore_errors=True)


def _start_workers(specs: list[WorkerSpec], recipe: ModelRecipe) -> tuple[list[_Worker], list[str]]:
    """Spawn one process per spec and wait until each has loaded the model (or failed)."""
    context = multiprocessing.get_context("spawn")
    workers: list[_Worker] = []
    try:
        for index, spec in enumerate(specs):
            task_reader, task_writer = context.Pipe(duplex=False)
            result_reader, result_writer = context.Pipe(duplex=False)
            process = context.Process(
                target=_worker_main,
                args=(spec, recipe, task_reader, result_writer),
                name=f"embedding-pool-{index}-{spec.device}",
                daemon=True,
            )
            with _child_environment(spec.threads):
                process.start()
            task_reader.close()
            result_writer.close()
            workers.append(_Worker(index, spec, process, task_writer, result_reader, process.pid))
        return workers, _await_ready(workers)
    except BaseException:
        _discard_workers(workers, grace_s=0.0)
        raise


def _await_ready(workers: list[_Worker]) -> list[str]:
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


def _early_exit_message(worker: _Worker) -> str:
    exitcode = worker.exitcode()
    if exitcode == _MAIN_GUARD_EXIT_CODE:
        script = getattr(sys.modules.get("__main__"), "__file__", None) or "the main script"
        return (
            f"Pool {worker.label} stopped: spawning it re-ran {script}, which starts a pool at import "
            'time. Put the code that starts the pool or encodes under `if __name__ == "__main__":`.'
        )
    return (
        f"Pool {worker.label} {_describe_exit(exitcode)} before it loaded the model "
        "(its error, if any, is on stderr above)."
    )


class EncodePool:
    """Worker processes that ``encode`` spreads its work over, one per device.

    Start it with ``model.start_multi_process_pool(target_devices)``; stop it with
    ``model.stop_multi_process_pool(pool)``, ``pool.close()`` or a ``with`` block.

    Devices (see :func:`plan_workers`): ``None`` means one worker per CUDA GPU, or without
    CUDA, ``floor(sqrt(cores))`` torch threads per CPU worker and ``cores // threads`` workers.
    Every worker runs ``max(1, cores // workers)`` torch threads, so processes x threads <=
    cores. ``cores`` is this process's CPU affinity, capped by a cgroup CPU quota.

    The workers hold the weights the model had when the pool started: start a new pool after
    changing them.
    """

    def __init__(self, state: _PoolState, model: SentenceTransformer, fingerprint: str, folder: str) -> None:
        self._state = state
        self._model_folder = folder
        self._model_ref = weakref.ref(model)
        self._fingerprint = fingerprint
        self._finalizer = weakref.finalize(self, _shutdown, state)

    @classmethod
    def start(cls, model: SentenceTransformer, target_devices: Sequence[Any] | None = None) -> EncodePool:
        """Validate the devices, start the workers and wait until each has loaded ``model``."""
        _refuse_while_bootstrapping()
        mps = getattr(torch.backends, "mps", None)
        cores = available_cores()
        specs = plan_workers(
            target_devices,
            torch.cuda.device_count() if torch.cuda.is_available() else 0,
            cores,
            mps_available=bool(mps is not None and mps.is_available()),
        )
        if len(specs) > cores and all(s.device == "cpu" for s in specs):
            logger.warning("%d CPU workers on %d cores: the workers will compete for the cores.", len(specs), cores)
        expected = weights_fingerprint(model)
        temp_dir = None
        path = model.snapshot_path
        if path is None:
            temp_dir = _save_temporary_copy(model)
            path = temp_dir
        try:
            started = time.perf_counter()
            workers, fingerprints = _start_workers(specs, model_recipe(model, path))
            if any(fp != expected for fp in fingerprints) and temp_dir is None:
                logger.warning(
                    "The model's weights differ from its folder %s (changed in memory since loading): "
                    "the pool's workers load a copy saved to a temporary folder instead.", path
                )
                _discard_workers(workers, grace_s=CLOSE_GRACE_S)
                temp_dir = _save_temporary_copy(model)
                workers, fingerprints = _start_workers(specs, model_recipe(model, temp_dir))
            if any(fp != expected for fp in fingerprints):
                _discard_workers(workers, grace_s=0.0)
                raise PoolStartError(
                    "The pool's workers could not reproduce the model's weights from its saved folder "
                    "(a module that does not save all its state?)."
                )
        except BaseException:
            if temp_dir is not None:
                shutil.rmtree(temp_dir, ignore_errors=True)
            raise
        state = _PoolState(workers, temp_dir)
        state.collector = threading.Thread(target=state.collect, name="embedding-pool-collector", daemon=True)
        state.collector.start()
        logger.info(
            "Started an encode pool of %d workers (%s) in %.1f s.",
            len(workers), ", ".join(f"{s.device} x{s.threads} threads" for s in specs),
            time.perf_counter() - started,
        )
        return cls(state, model, expected, temp_dir or path)

    # ----------------------------------------------------------------- info
    @property
    def devices(self) -> list[str]:
        """Each worker's device, e.g. ``["cuda:0", "cuda:1"]`` or ``["cpu", "cpu"]``."""
        return [w.spec.device for w in self._state.workers]

    @property
    def threads(self) -> list[int]:
        """Each worker's torch intra-op thread count."""
        return [w.spec.threads for w in self._state.workers]

    @property
    def pids(self) -> list[int]:
        """Each worker's process id."""
        return [w.pid for w in self._state.workers]

    @property
    def model_folder(self) -> str:
        """The folder the workers loaded the model from: its snapshot, or a temporary copy."""
        return self._model_folder

    @property
    def closed(self) -> bool:
        return self._state.closed

    @property
    def broken(self) -> bool:
        """True once a worker has died; every call then raises ``WorkerDiedError``."""
        return self._state.broken is not None

    def __repr__(self) -> str:
        status = "closed" if self.closed else "broken" if self.broken else "running"
        return f"EncodePool({', '.join(self.devices)}; {status})"

    # ----------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Stop every worker and wait for it to exit; safe to call more than once."""
        self._finalizer()

    def __enter__(self) -> EncodePool:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ----------------------------------------------------------------- encode
    def compute(
        self,
        model: SentenceTransformer,
        texts: Sequence[str],
        prompt: str | None = None,
        batch_size: int = 32,
        output_value: str | None = "sentence_embedding",
        normalize_embeddings: bool = False,
        truncate_dim: int | None = None,
        max_tokens_per_batch: int | None = None,
        chunk_size: int | None = None,
        show_progress_bar: bool = False,
    ) -> torch.Tensor | list[Any]:
        """What ``model.compute`` returns for ``texts``, computed by the workers.

        Sentence embeddings come back as one float32 ``[n, dim]`` CPU tensor in the caller's
        order; token embeddings and ``output_value=None`` as a list with one entry per text.
        """
        state = self._state
        with state.lock:
            state.raise_if_unusable_locked()
        self._check_model(model)
        if not texts:
            return model.compute([], prompt=prompt, batch_size=batch_size, output_value=output_value,
                                 normalize_embeddings=normalize_embeddings, truncate_dim=truncate_dim)
        with state.tokenize_lock:  # a fast tokenizer refuses concurrent calls ("Already borrowed")
            tokenized = model.tokenize_texts(texts, prompt)
        order = length_order(tokenized.lengths)
        chunks = plan_chunks(
            tokenized.lengths[order], batch_size, len(state.workers), max_tokens_per_batch, chunk_size
        )
        options = dict(
            prompt=prompt, batch_size=batch_size, output_value=output_value,
            normalize_embeddings=normalize_embeddings, truncate_dim=truncate_dim,
            max_tokens_per_batch=max_tokens_per_batch,
        )
        job = _Job(next(state.job_ids), tokenized, order, options, deque(chunks))
        sentence_out: np.ndarray | None = None
        per_text: list[Any] = [None] * len(texts)
        progress = tqdm(total=len(texts), desc="Encoding", unit="text", disable=not show_progress_bar)
        state.register(job)
        try:
            with progress:
                for _ in range(len(chunks)):
                    kind, task, payload = state.next_event(job)
                    if kind == "error":
                        raise PoolWorkerError(
                            f"Pool {task.worker.label} raised while encoding.\n\nWorker traceback:\n{payload}",
                            task.worker.spec.device,
                            payload,
                        )
                    if kind != "done":  # "broken" or "closed"
                        raise payload
                    if output_value == "sentence_embedding":
                        vectors = payload.array
                        if sentence_out is None:
                            sentence_out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
                        sentence_out[task.rows] = vectors
                    else:
                        for row, item in zip(task.rows, payload, strict=True):
                            per_text[row] = _unpack(item)
                    progress.update(len(task.rows))
        finally:
            state.unregister(job)
        if output_value == "sentence_embedding":
            return torch.from_numpy(sentence_out)
        return per_text

    def _check_model(self, model: SentenceTransformer) -> None:
        if self._model_ref() is model or weights_fingerprint(model) == self._fingerprint:
            return
        raise ValueError(
            "This pool's workers hold another model's weights than the model encoding with it; start "
            "a pool from this model (model.start_multi_process_pool())."
        )


def _save_temporary_copy(model: SentenceTransformer) -> str:
    temp_dir = tempfile.mkdtemp(prefix="embedding-pool-model-")
    try:
        model.save(temp_dir, create_model_card=False)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return temp_dir


def encode_with_pool(
    model: SentenceTransformer,
    texts: Sequence[str],
    pool: EncodePool | None = None,
    devices: Sequence[Any] | None = None,
    chunk_size: int | None = None,
    show_progress_bar: bool = False,
    **compute_options: Any,
) -> torch.Tensor | list[Any]:
    """``model.compute`` over a pool: ``pool`` if given, else a temporary pool on ``devices``.

    A temporary pool is always closed, whatever happens during the call.
    """
    if pool is not None:
        if not isinstance(pool, EncodePool):
            raise TypeError(
                f"pool must come from model.start_multi_process_pool(), got {type(pool).__name__}."
            )
        return pool.compute(model, texts, chunk_size=chunk_size, show_progress_bar=show_progress_bar, **compute_options)
    with EncodePool.start(model, devices) as temporary:
        return temporary.compute(
            model, texts, chunk_size=chunk_size, show_progress_bar=show_progress_bar, **compute_options
        )
