"""A worker process: load the model once from its recipe, then run ``forward_tokens`` on
each chunk of tokens it is sent, until its task pipe closes.

A worker never tokenizes: the parent sends token ids (prompt included) and the options.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import std as tqdm_std

from embedding_core.batching import EncodeOptions, TokenizedTexts
from embedding_core.pool.planning import WorkerSpec


class WorkerModel(Protocol):
    """What a worker runs: ``SentenceTransformer`` is one."""

    def forward_tokens(self, tokens: TokenizedTexts, options: EncodeOptions) -> torch.Tensor | list[Any]: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...


class Recipe(Protocol):
    """A picklable description of a model that loads itself (``model.ModelRecipe``)."""

    def load(self, device: str) -> WorkerModel: ...


def weights_fingerprint(model: WorkerModel) -> str:
    """Hash of every tensor of ``model.state_dict()`` (name, dtype, shape and bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in model.state_dict().items():
        value = tensor.detach()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        if value.numel():
            digest.update(value.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


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


def pack(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return _PackedTensor.pack(value)
    if isinstance(value, dict):
        return {key: pack(item) for key, item in value.items()}
    if isinstance(value, list):
        return [pack(item) for item in value]
    return value


def unpack(value: Any) -> Any:
    if isinstance(value, _PackedTensor):
        return value.unpack()
    if isinstance(value, dict):
        return {key: unpack(item) for key, item in value.items()}
    if isinstance(value, list):
        return [unpack(item) for item in value]
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


def _heartbeat(result_conn: Connection, send_lock: threading.Lock, interval_s: float) -> None:
    """Tell the parent every `interval_s` that this process runs: a worker that is stopped
    (SIGSTOP) or frozen falls silent, and the parent fails the call it holds."""
    while True:
        time.sleep(interval_s)
        try:
            with send_lock:
                result_conn.send(("alive", None, None))
        except (OSError, ValueError):  # the parent is gone or the pool is closing
            return


def worker_main(spec: WorkerSpec, recipe: Recipe, task_conn: Connection, result_conn: Connection,
                heartbeat_s: float = 1.0) -> None:
    """A worker process: load the model once, then encode token-id chunks until told to stop."""
    # Ctrl-C reaches the whole process group; the parent decides what stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # tqdm's default lock is a multiprocessing semaphore, which the fast exit below would leak.
    tqdm_std.tqdm.set_lock(threading.RLock())
    torch.set_num_threads(spec.threads)
    with contextlib.suppress(RuntimeError):  # already set by an import-time parallel region
        torch.set_num_interop_threads(1)
    try:
        model = recipe.load(spec.device)
        fingerprint = weights_fingerprint(model)
    except BaseException:
        result_conn.send(("failed_to_start", traceback.format_exc()))
        return
    result_conn.send(("ready", fingerprint))

    tasks: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_receive_tasks, args=(task_conn, tasks), daemon=True).start()
    send_lock = threading.Lock()
    threading.Thread(target=_heartbeat, args=(result_conn, send_lock, heartbeat_s), daemon=True).start()
    while (message := tasks.get()) is not None:
        task_id, tokens, options = message
        try:
            reply = ("done", task_id, pack(model.forward_tokens(tokens, options)))
        except Exception:
            reply = ("error", task_id, traceback.format_exc())
        try:
            with send_lock:
                result_conn.send(reply)
        except OSError:  # the parent is gone
            break
    # Nothing is left to flush or release: skip the interpreter's slow teardown of torch.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

