"""Throughput of the encode pool against one process, and against the reference's pool.

On the 2000 real mixed texts (10-900 words) with the bundled all-MiniLM-L6-v2,
max_seq_length 256, batch_size 32:

* single: one process, torch threads = the cores;
* ours: ``start_multi_process_pool(["cpu", "cpu"])``, one torch thread per worker;
* reference: sentence-transformers' ``start_multi_process_pool(["cpu", "cpu"])``, default settings.

Runs alternate (the order rotates each round) and each figure is the median. Pool start-up
is timed separately and excluded (every configuration runs a warm-up call first). The parent's
peak RSS is sampled during each configuration's runs.

    .venv/bin/python benchmarks/bench_pool.py [--limit 2000] [--rounds 3] [--reference-rounds 1]
    .venv/bin/python benchmarks/bench_pool.py --backend openvino --reference-rounds 0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
MIXED_TEXTS = ROOT / "tests" / "data" / "mixed_texts.jsonl"


class PeakRss:
    """Samples this process's RSS in a background thread; ``peak`` since the last ``reset``."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self._process = psutil.Process()
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def reset(self) -> None:
        self.peak = self._process.memory_info().rss

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=2000, help="texts from mixed_texts.jsonl")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of single and ours")
    parser.add_argument("--reference-rounds", type=int, default=1, help="timed runs of the reference pool (0: skip)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--backend", default="torch", help="torch (default), openvino, openvino-int8, ...")
    args = parser.parse_args()

    from embedding_core import SentenceTransformer
    from embedding_core.hub import bundled_model_path
    from embedding_core.pool import available_cores

    with open(MIXED_TEXTS, encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh][: args.limit]
    cores = available_cores()
    torch.set_num_threads(cores)
    rss = PeakRss()
    model = SentenceTransformer(bundled_model_path(), device="cpu", backend=args.backend)
    model.max_seq_length = args.max_seq_length
    model_loaded_rss = psutil.Process().memory_info().rss
    encode = dict(batch_size=args.batch_size, show_progress_bar=False)

    started = time.perf_counter()
    pool = model.start_multi_process_pool(["cpu", "cpu"])
    our_start_s = time.perf_counter() - started

    runners = {
        "single": lambda: model.encode(texts, **encode),
        "ours": lambda: model.encode(texts, pool=pool, **encode),
    }
    reference_start_s = None
    reference_pool = None
    if args.reference_rounds > 0:
        from sentence_transformers import SentenceTransformer as ReferenceModel

        reference = ReferenceModel(bundled_model_path(), device="cpu")
        reference.max_seq_length = args.max_seq_length
        started = time.perf_counter()
        reference_pool = reference.start_multi_process_pool(["cpu", "cpu"])
        reference.encode(texts[:8], pool=reference_pool, **encode)  # its workers start lazily
        reference_start_s = time.perf_counter() - started
        runners["reference"] = lambda: reference.encode(texts, pool=reference_pool, **encode)

    # Warm-up: first-call costs are not throughput.
    model.encode(texts[:64], **encode)
    model.encode(texts[:64], pool=pool, **encode)

    timings: dict[str, list[float]] = {name: [] for name in runners}
    peaks: dict[str, int] = dict.fromkeys(runners, 0)
    outputs: dict[str, np.ndarray] = {}
    names = list(runners)
    for round_index in range(max(args.rounds, args.reference_rounds)):
        rotated = names[round_index % len(names):] + names[: round_index % len(names)]
        for name in rotated:
            wanted = args.reference_rounds if name == "reference" else args.rounds
            if len(timings[name]) >= wanted:
                continue
            rss.reset()
            started = time.perf_counter()
            outputs[name] = runners[name]()
            timings[name].append(time.perf_counter() - started)
            peaks[name] = max(peaks[name], rss.peak)
            print(f"  round {round_index + 1} {name:9s} {timings[name][-1]:7.2f} s", flush=True)
    workers_rss = sum(psutil.Process(pid).memory_info().rss for pid in pool.pids)
    model.stop_multi_process_pool(pool)
    if reference_pool is not None:
        reference.stop_multi_process_pool(reference_pool)
    rss.close()

    median = {name: statistics.median(values) for name, values in timings.items()}
    print()
    print(
        f"{len(texts)} mixed texts, max_seq_length {args.max_seq_length}, batch_size {args.batch_size}, "
        f"{cores} cores, torch {torch.__version__}, backend {model.backend}"
    )
    print(f"{'config':34s} {'median s':>9s} {'texts/s':>8s} {'vs single':>9s} {'runs':>5s} {'parent peak RSS':>16s}")
    labels = {
        "single": f"single process ({cores} threads)",
        "ours": "our pool (2 CPU workers x 1 thread)",
        "reference": "reference pool (2 CPU, defaults)",
    }
    for name in runners:
        print(
            f"{labels[name]:34s} {median[name]:9.2f} {len(texts) / median[name]:8.1f} "
            f"{median['single'] / median[name]:9.2f} {len(timings[name]):5d} {peaks[name] / 2**20:13.0f} MiB"
        )
    print(f"pool start-up (excluded above): ours {our_start_s:.1f} s"
          + (f", reference {reference_start_s:.1f} s" if reference_start_s is not None else ""))
    print(f"parent RSS after model load: {model_loaded_rss / 2**20:.0f} MiB; "
          f"our 2 workers together: {workers_rss / 2**20:.0f} MiB")
    print(f"min cosine, our pool vs single process: {min_cosine(outputs['ours'], outputs['single']):.7f}")
    ratio = median["single"] / median["ours"]
    print(f"our pool / single throughput: {ratio:.2f} (target >= 0.90): {'OK' if ratio >= 0.9 else 'BELOW TARGET'}")


if __name__ == "__main__":
    main()
