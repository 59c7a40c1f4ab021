"""Prepared check for a GPU machine: the encode pool on one GPU against one process on it.

Encodes the 2000 real mixed texts (max_seq_length 256, batch_size 64) with the model in one
process on ``--device`` and through ``start_multi_process_pool([device])`` (and two workers on
the same GPU), alternating runs, and prints one summary line:

    gpu_pool_check: <GPU> texts=2000 single=<texts/s> pool=<texts/s> ratio=<pool/single> ...

Parity is the lowest cosine between the pool's and the single process's vectors. It runs in
well under 3 minutes on an H100, model load and pool start-up included. Without CUDA it says
so and exits 0; ``--cpu-fallback`` then runs the same steps on the CPU with a few texts, to
check the script itself.

    python benchmarks/gpu_pool_check.py [--model PATH] [--device cuda:0] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing it
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cpu-fallback", action="store_true", help="without CUDA, check the script on the CPU")
    args = parser.parse_args()

    if not torch.cuda.is_available():
        if not args.cpu_fallback:
            print("gpu_pool_check: CUDA is not available on this machine; nothing checked (run it on a GPU "
                  "machine, or pass --cpu-fallback to check the script on the CPU).")
            return 0
        args.device, args.limit, args.rounds = "cpu", min(args.limit, 48), 1

    from embedding_core import SentenceTransformer
    from embedding_core.hub import bundled_model_path

    started = time.perf_counter()
    with open(ROOT / "tests" / "data" / "mixed_texts.jsonl", encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh][: args.limit]
    model = SentenceTransformer(args.model or bundled_model_path(), device=args.device, local_files_only=True)
    model.to(getattr(torch, args.dtype))
    model.max_seq_length = 256
    encode = dict(batch_size=args.batch_size, show_progress_bar=False)
    model.encode(texts[:256], **encode)  # warm-up: CUDA context, kernels

    pools = {}
    start_s = {}
    for name, devices in (("pool", [args.device]), ("pool2", [args.device, args.device])):
        t0 = time.perf_counter()
        pools[name] = model.start_multi_process_pool(devices)
        start_s[name] = time.perf_counter() - t0
        model.encode(texts[:256], pool=pools[name], **encode)

    runners = {"single": lambda: model.encode(texts, **encode)}
    for name, pool in pools.items():
        runners[name] = lambda pool=pool: model.encode(texts, pool=pool, **encode)
    timings: dict[str, list[float]] = {name: [] for name in runners}
    outputs: dict[str, np.ndarray] = {}
    for _ in range(args.rounds):
        for name, run in runners.items():
            t0 = time.perf_counter()
            outputs[name] = run()
            timings[name].append(time.perf_counter() - t0)
    for pool in pools.values():
        model.stop_multi_process_pool(pool)

    rate = {name: len(texts) / statistics.median(values) for name, values in timings.items()}
    cosine = min(min_cosine(outputs[name], outputs["single"]) for name in pools)
    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    ok = cosine >= 0.9999
    print(
        f"gpu_pool_check: {device_name} ({args.device}, {args.dtype}) texts={len(texts)} "
        f"single={rate['single']:.0f}/s pool={rate['pool']:.0f}/s ratio={rate['pool'] / rate['single']:.2f} "
        f"pool2={rate['pool2']:.0f}/s ratio2={rate['pool2'] / rate['single']:.2f} "
        f"start={start_s['pool']:.1f}s start2={start_s['pool2']:.1f}s min_cos={cosine:.6f} "
        f"total={time.perf_counter() - started:.0f}s {'OK' if ok else 'PARITY FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
