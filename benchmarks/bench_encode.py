"""embedding_core vs sentence-transformers: throughput, vectors and memory on real text.

Both libraries run in this process on the same texts with the same model (the bundled
all-MiniLM-L6-v2, max_seq_length 256, batch_size 32). Each round times the reference and
then every embedding_core backend once, so slow spells on a shared machine hit both; the
ratio is the median over rounds of (reference time / backend time).

Per corpus it prints sentences/s of each, the ratio, the peak RSS while encoding, the worst
and mean row cosine against the reference and, for the mixed corpus, the overlap of each
text's top-10 neighbours with the reference's. The roofline line gives a large fp32 matrix
product's GFLOP/s here and the model's FLOPs per text, so the share of the hardware limit
reached is visible.

    .venv/bin/python benchmarks/bench_encode.py                # torch + the openvino backends
    .venv/bin/python benchmarks/bench_encode.py --backends torch --rounds 5 --limit 1000
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    CORPORA,
    PeakRss,
    bundled_model_path,
    encoder_flops,
    matmul_gflops,
    read_corpus,
    row_cosines,
    top_k_overlap,
    write_results,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", default="short,mixed", help="comma-separated: short, mixed")
    parser.add_argument(
        "--backends",
        default="torch,openvino,openvino-bf16,openvino-int8",
        help="embedding_core backends to time (also: onnx, onnx-int8)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (reference + each backend)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N texts of each corpus")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch/onnxruntime threads (default: all)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args(argv)


def timed(fn) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from sentence_transformers import SentenceTransformer as ReferenceModel

    from embedding_core import SentenceTransformer

    path = bundled_model_path()
    reference = ReferenceModel(path, device="cpu")
    backends = [name for name in args.backends.split(",") if name]
    models = {}
    for backend in backends:
        started = time.perf_counter()
        models[backend] = SentenceTransformer(path, device="cpu", backend=backend)
        if models[backend].backend != backend:
            print(f"!! backend {backend} fell back to {models[backend].backend}", file=sys.stderr)
        print(f"loaded embedding_core backend={backend} in {time.perf_counter() - started:.1f} s")
    assert reference.max_seq_length == models[backends[0]].max_seq_length == 256

    peak_gflops = matmul_gflops()
    print(
        f"\nmachine: {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads; "
        f"fp32 4096^3 matmul: {peak_gflops:.0f} GFLOP/s"
    )
    config = models[backends[0]].transformer.auto_model.config
    results = []
    for corpus in [name for name in args.corpora.split(",") if name]:
        if corpus not in CORPORA:
            raise SystemExit(f"unknown corpus {corpus!r}; choose from {list(CORPORA)}")
        texts = read_corpus(corpus)[: args.limit]
        lengths = models[backends[0]].prepare(texts).lengths
        flops = encoder_flops(config, lengths)
        print(
            f"\n== {corpus}: {len(texts)} texts, tokens mean {lengths.mean():.1f} / max {lengths.max()}; "
            f"{flops / 1e9:.2f} GFLOP per text -> roofline {peak_gflops * 1e9 / flops:.0f} texts/s"
        )
        warm = texts[:64]
        reference.encode(warm, batch_size=args.batch_size)
        for model in models.values():
            model.encode(warm, batch_size=args.batch_size)

        names = ["reference"] + backends
        seconds: dict[str, list[float]] = {name: [] for name in names}
        peaks: dict[str, int] = dict.fromkeys(names, 0)
        vectors: dict[str, np.ndarray] = {}
        for _ in range(args.rounds):
            for name in names:
                gc.collect()
                if name == "reference":
                    run = lambda t=texts: reference.encode(t, batch_size=args.batch_size)  # noqa: E731
                else:
                    run = lambda t=texts, m=models[name]: m.encode(t, batch_size=args.batch_size)  # noqa: E731
                with PeakRss() as rss:
                    elapsed, vectors[name] = timed(run)
                seconds[name].append(elapsed)
                peaks[name] = max(peaks[name], rss.peak)

        header = f"{'encoder':<20}{'texts/s':>9}{'ratio':>7}{'roofline':>9}{'min cos':>10}{'mean cos':>10}"
        header += f"{'top10':>7}{'peak RSS':>10}"
        print(header)
        for name in names:
            rate = len(texts) / float(np.median(seconds[name]))
            ratio = float(np.median(np.array(seconds["reference"]) / np.array(seconds[name])))
            cosines = row_cosines(vectors[name], vectors["reference"])
            overlap = top_k_overlap(vectors[name], vectors["reference"]) if corpus == "mixed" else float("nan")
            share = rate * flops / (peak_gflops * 1e9)
            row = {
                "corpus": corpus, "encoder": name, "texts": len(texts), "texts_per_s": rate, "ratio": ratio,
                "roofline_share": share, "min_cosine": float(cosines.min()), "mean_cosine": float(cosines.mean()),
                "top10_overlap": overlap, "peak_rss_mb": peaks[name] / 2**20,
                "seconds": seconds[name], "gflop_per_text": flops / 1e9, "matmul_gflops": peak_gflops,
            }
            results.append(row)
            print(
                f"{name:<20}{rate:>9.1f}{ratio:>6.2f}x{share:>8.0%}{row['min_cosine']:>10.6f}"
                f"{row['mean_cosine']:>10.6f}{overlap:>7.3f}{row['peak_rss_mb']:>8.0f}MB"
            )
    write_results(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
