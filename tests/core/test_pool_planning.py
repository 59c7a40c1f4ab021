"""Pool planning: which workers a pool starts, and how a call is cut into chunks."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from embedding_core.batching import length_order, plan_batches
from embedding_core.pool import (
    CHUNKS_PER_WORKER,
    WorkerSpec,
    available_cores,
    plan_chunks,
    plan_workers,
)
from tests.conftest import read_jsonl_texts


@pytest.mark.parametrize("gpus", [1, 2, 8])
def test_default_devices_are_one_worker_per_gpu(gpus):
    specs = plan_workers(None, cuda_device_count=gpus, cores=16)
    assert [s.device for s in specs] == [f"cuda:{i}" for i in range(gpus)]
    assert all(s.threads == max(1, 16 // gpus) for s in specs)


@pytest.mark.parametrize(
    ("cores", "workers", "threads"),
    [(1, 1, 1), (2, 2, 1), (3, 3, 1), (4, 2, 2), (8, 4, 2), (16, 4, 4), (64, 8, 8)],
)
def test_default_cpu_workers_split_the_cores(cores, workers, threads):
    specs = plan_workers(None, cuda_device_count=0, cores=cores)
    assert specs == [WorkerSpec("cpu", threads)] * workers
    assert len(specs) * specs[0].threads <= cores


def test_explicit_devices_are_normalized_and_share_the_cores():
    assert plan_workers(["cpu", "cpu"], 0, cores=2) == [WorkerSpec("cpu", 1)] * 2
    assert plan_workers(["cpu"], 0, cores=2) == [WorkerSpec("cpu", 2)]
    assert plan_workers(["cuda", "CUDA:1", torch.device("cuda:0")], 2, cores=12) == [
        WorkerSpec("cuda:0", 4), WorkerSpec("cuda:1", 4), WorkerSpec("cuda:0", 4)
    ]
    assert plan_workers("cpu", 0, cores=4) == [WorkerSpec("cpu", 4)]
    assert plan_workers(["cpu"] * 5, 0, cores=2) == [WorkerSpec("cpu", 1)] * 5


@pytest.mark.parametrize(
    ("devices", "gpus", "message"),
    [
        (["tpu"], 8, "Unknown device 'tpu'"),
        (["cuda:7"], 0, "CUDA is not available"),
        (["cuda:0", "cuda:7"], 2, "'cuda:7' does not exist: this machine has 2 CUDA device"),
        (["cuda:x"], 2, "'cuda:x' is not a device name"),
        (["mps"], 0, "MPS is not available"),
        ([], 0, "target_devices is empty"),
    ],
)
def test_bad_devices_are_refused_by_name(devices, gpus, message):
    with pytest.raises(ValueError, match=message):
        plan_workers(devices, cuda_device_count=gpus, cores=8)


def test_available_cores_is_within_the_affinity():
    assert 1 <= available_cores() <= len(os.sched_getaffinity(0))


def test_chunks_are_whole_batches_of_the_global_length_order(model, parity_texts):
    lengths = model.prepare(parity_texts).lengths
    sorted_lengths = lengths[length_order(lengths)]
    batches = plan_batches(sorted_lengths, 4)
    chunks = plan_chunks(sorted_lengths, 4, workers=2)
    assert chunks[0].start == 0 and chunks[-1].stop == len(parity_texts)
    assert all(a.stop == b.start for a, b in zip(chunks, chunks[1:], strict=False))
    assert {c.start for c in chunks} <= {b.start for b in batches}
    assert CHUNKS_PER_WORKER <= len(chunks) <= 2 * CHUNKS_PER_WORKER + 1
    # With chunk_size, a chunk never holds more texts, and a larger batch is split.
    sized = plan_chunks(sorted_lengths, 16, workers=2, chunk_size=10)
    assert max(c.stop - c.start for c in sized) == 10
    assert sum(c.stop - c.start for c in sized) == len(parity_texts)


def test_ordering_the_whole_call_pads_less_than_sorting_inside_each_chunk(model):
    lengths = model.prepare(read_jsonl_texts("mixed_texts.jsonl")).lengths
    batch_size, workers = 32, 2

    def padded_tokens(chunk_lengths):
        ordered = np.sort(chunk_lengths)[::-1]
        return sum((b.stop - b.start) * ordered[b.start] for b in plan_batches(ordered, batch_size))

    sorted_lengths = lengths[length_order(lengths)]
    ours = sum(padded_tokens(sorted_lengths[c]) for c in plan_chunks(sorted_lengths, batch_size, workers))
    # The reference's way: chunks of the caller's order (n / workers / 10 texts), sorted inside.
    chunk = -(-len(lengths) // (workers * 10))
    theirs = sum(padded_tokens(lengths[start:start + chunk]) for start in range(0, len(lengths), chunk))
    assert ours < 1.03 * lengths.sum()  # 2000 texts of 10-900 words: under 3% padding
    assert ours < 0.85 * theirs
