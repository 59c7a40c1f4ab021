"""Planning: which workers a pool starts, and how one call's texts are cut into chunks."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from embedding_core.batching import plan_batches

# Without a ``chunk_size``, a call is cut into about this many chunks per worker (equal padded
# tokens each), so a worker that finishes early takes more work and the progress bar moves.
CHUNKS_PER_WORKER = 16
# ... and no chunk holds more texts than this, so a huge call never ships a huge message.
MAX_CHUNK_TEXTS = 4096


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
