"""EncodePool: start the workers, encode one call over them, close for sure."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from embedding_core.batching import EncodeOptions, Gather, TokenizedTexts, length_order
from embedding_core.pool.dispatch import Job, PoolState, shutdown
from embedding_core.pool.errors import PoolStartError, PoolWorkerError
from embedding_core.pool.planning import available_cores, plan_chunks, plan_workers
from embedding_core.pool.processes import (
    CLOSE_GRACE_S,
    discard_workers,
    heartbeat_interval,
    refuse_while_bootstrapping,
    stall_timeout,
    start_workers,
)
from embedding_core.pool.worker import Recipe, unpack, weights_fingerprint

logger = logging.getLogger(__name__)


class EncodingModel(Protocol):
    """What the pool needs of a model (``SentenceTransformer`` is one)."""

    snapshot_path: str | None

    def prepare(self, texts: Sequence[str], prompt: str | None = None) -> TokenizedTexts: ...

    def forward_tokens(self, tokens: TokenizedTexts, options: EncodeOptions | None = None) -> Any: ...

    def recipe(self, path: str) -> Recipe: ...

    def save(self, path: str, create_model_card: bool = True) -> None: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...


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

    A worker that holds work and shows no progress (no result, and none of the heartbeats a
    running worker sends every second) for ``stall_timeout_s`` seconds (default
    ``$EMBEDDING_POOL_STALL_TIMEOUT``, else 30) is killed and the call fails with
    ``WorkerStalledError`` naming the worker, its pid and its device: a stopped (SIGSTOP)
    or frozen worker never hangs ``encode``.
    """

    def __init__(self, state: PoolState, model: EncodingModel, fingerprint: str, folder: str) -> None:
        self._state = state
        self._model_folder = folder
        self._model_ref = weakref.ref(model)
        self._fingerprint = fingerprint
        self._finalizer = weakref.finalize(self, shutdown, state)

    @classmethod
    def start(cls, model: EncodingModel, target_devices: Sequence[Any] | None = None,
              stall_timeout_s: float | None = None) -> EncodePool:
        """Validate the devices, start the workers and wait until each has loaded ``model``."""
        refuse_while_bootstrapping()
        stall_s = stall_timeout(stall_timeout_s)
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
            workers, fingerprints = start_workers(specs, model.recipe(path), heartbeat_interval(stall_s))
            if any(fp != expected for fp in fingerprints) and temp_dir is None:
                logger.warning(
                    "The model's weights differ from its folder %s (changed in memory since loading): "
                    "the pool's workers load a copy saved to a temporary folder instead.", path
                )
                discard_workers(workers, grace_s=CLOSE_GRACE_S)
                temp_dir = _save_temporary_copy(model)
                workers, fingerprints = start_workers(specs, model.recipe(temp_dir), heartbeat_interval(stall_s))
            if any(fp != expected for fp in fingerprints):
                discard_workers(workers, grace_s=0.0)
                raise PoolStartError(
                    "The pool's workers could not reproduce the model's weights from its saved folder "
                    "(a module that does not save all its state?)."
                )
        except BaseException:
            if temp_dir is not None:
                shutil.rmtree(temp_dir, ignore_errors=True)
            raise
        state = PoolState(workers, temp_dir, stall_s)
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
    def chunks_in_flight(self) -> list[int]:
        """Each worker's chunks sent and not yet answered: above 0 while it holds work."""
        with self._state.lock:
            return [len(w.in_flight) for w in self._state.workers]

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
        model: EncodingModel,
        texts: Sequence[str],
        prompt: str | None = None,
        options: EncodeOptions | None = None,
        chunk_size: int | None = None,
        show_progress_bar: bool = False,
    ) -> torch.Tensor | list[Any]:
        """What ``model.compute`` returns for ``texts``, computed by the workers.

        Sentence embeddings come back as one float32 ``[n, dim]`` CPU tensor in the caller's
        order; token embeddings and ``output_value=None`` as a list with one entry per text.
        """
        options = options or EncodeOptions()
        state = self._state
        with state.lock:
            state.raise_if_unusable_locked()
        self._check_model(model)
        with state.tokenize_lock:  # a fast tokenizer refuses concurrent calls ("Already borrowed")
            tokens = model.prepare(texts, prompt)
        if not texts:
            return model.forward_tokens(tokens, options)
        order = length_order(tokens.lengths)
        chunks = plan_chunks(
            tokens.lengths[order], options.batch_size, len(state.workers), options.max_tokens_per_batch, chunk_size
        )
        job = Job(next(state.job_ids), tokens, order, options, deque(chunks))
        gather = Gather(len(texts), options.output_value)
        state.register(job)
        try:
            with tqdm(total=len(texts), desc="Encoding", unit="text", disable=not show_progress_bar) as progress:
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
                    gather.add(task.rows, unpack(payload))
                    progress.update(len(task.rows))
        finally:
            state.unregister(job)
        return gather.result()

    def _check_model(self, model: EncodingModel) -> None:
        if self._model_ref() is model or weights_fingerprint(model) == self._fingerprint:
            return
        raise ValueError(
            "This pool's workers hold another model's weights than the model encoding with it; start "
            "a pool from this model (model.start_multi_process_pool())."
        )


def _save_temporary_copy(model: EncodingModel) -> str:
    temp_dir = tempfile.mkdtemp(prefix="embedding-pool-model-")
    try:
        model.save(temp_dir, create_model_card=False)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return temp_dir


def encode_with_pool(
    model: EncodingModel,
    texts: Sequence[str],
    prompt: str | None = None,
    options: EncodeOptions | None = None,
    pool: EncodePool | None = None,
    devices: Sequence[Any] | None = None,
    chunk_size: int | None = None,
    show_progress_bar: bool = False,
    stall_timeout_s: float | None = None,
) -> torch.Tensor | list[Any]:
    """``model.compute`` over a pool: ``pool`` if given, else a temporary pool on ``devices``
    (with ``stall_timeout_s``, see `EncodePool`).

    A temporary pool is always closed, whatever happens during the call.
    """
    if pool is not None:
        if not isinstance(pool, EncodePool):
            raise TypeError(
                f"pool must come from model.start_multi_process_pool(), got {type(pool).__name__}."
            )
        return pool.compute(model, texts, prompt, options, chunk_size, show_progress_bar)
    with EncodePool.start(model, devices, stall_timeout_s) as temporary:
        return temporary.compute(model, texts, prompt, options, chunk_size, show_progress_bar)
