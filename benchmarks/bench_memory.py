"""Memory of encoding + storing many texts: peak RSS at 50k and 200k texts must stay flat.

Each size runs in its own subprocess. Texts are built by recombining the real corpora
(a package summary + one sentence of a Python-doc paragraph, each pair used once, so every
text differs and none is reused by the store). They are produced shard by shard, encoded
and written with ``embedding_core.store.EmbeddingStore`` (one corpus partition and one
embeddings version per shard), so no stage ever holds all texts or vectors at once.

    .venv/bin/python benchmarks/bench_memory.py                  # 50k and 200k, backend openvino
    .venv/bin/python benchmarks/bench_memory.py --sizes 20000 --backend torch
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PeakRss, bundled_model_path, read_corpus, rss_bytes, write_results  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def recombined_texts(total: int, seed: int = 0) -> Iterator[str]:
    """``total`` distinct texts: summary i + sentence j for a fixed random sequence of (i, j)."""
    summaries = read_corpus("short")
    sentences = [
        sentence.strip()
        for paragraph in read_corpus("mixed")
        for sentence in re.split(r"(?<=[.!?])\s+", paragraph)
        if len(sentence.split()) >= 4
    ]
    pairs = len(summaries) * len(sentences)
    if total > pairs:
        raise SystemExit(f"only {pairs} distinct texts can be built, {total} asked")
    # k -> (step * k + offset) mod pairs is a bijection when step and pairs are coprime:
    # a scrambled sequence of distinct pairs without holding a permutation in memory.
    step = 2_654_435_761 % pairs
    while math.gcd(step, pairs) != 1:
        step += 1
    offset = seed * 7919 % pairs
    for k in range(total):
        summary, sentence = divmod((step * k + offset) % pairs, len(sentences))
        yield f"{summaries[summary]} {sentences[sentence]}"


def run_child(args: argparse.Namespace) -> None:
    from embedding_core import SentenceTransformer
    from embedding_core.store import EmbeddingParams, EmbeddingStore, ModelSnapshot, corpus_table

    model = SentenceTransformer(bundled_model_path(), device="cpu", backend=args.backend)
    store_root = Path(args.store)
    store = EmbeddingStore(str(store_root))
    snapshot = store.record_model_snapshot(
        ModelSnapshot(
            model_key="bench-memory", model="sentence-transformers/all-MiniLM-L6-v2",
            revision=model.revision or "unknown", source=model.model_source, path=model.snapshot_path or "",
            dim=model.get_sentence_embedding_dimension(), max_seq_length=model.max_seq_length,
        )
    )
    params = EmbeddingParams()
    model.encode(["warm up"])
    after_load = rss_bytes()
    checkpoints = []
    started = time.perf_counter()
    with PeakRss() as peak:
        texts = recombined_texts(args.texts)
        done = 0
        while done < args.texts:
            count = min(args.shard_size, args.texts - done)
            shard = [next(texts) for _ in range(count)]
            ids = [f"t{done + i:07d}" for i in range(count)]
            partition = f"shard-{done // args.shard_size:05d}"
            corpus = store.write_corpus(partition, corpus_table(ids, shard))
            store.write_embeddings(partition, corpus, snapshot, params, model.encode)
            done += count
            checkpoints.append({"texts": done, "rss_mb": rss_bytes() / 2**20, "peak_mb": peak.peak / 2**20})
    elapsed = time.perf_counter() - started
    with store.connect() as con:
        stored = con.execute("SELECT count(*) FROM embeddings").fetchone()[0]
    print(json.dumps({
        "texts": args.texts, "stored_rows": int(stored), "backend": model.backend,
        "seconds": elapsed, "texts_per_s": args.texts / elapsed,
        "rss_after_load_mb": after_load / 2**20, "peak_rss_mb": peak.peak / 2**20,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "store_bytes": sum(p.stat().st_size for p in store_root.rglob("*") if p.is_file()),
        "checkpoints": checkpoints,
    }))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="50000,200000", help="comma-separated text counts, one subprocess each")
    parser.add_argument("--shard-size", type=int, default=10000, help="texts per stored partition")
    parser.add_argument("--backend", default="openvino", help="embedding_core backend (openvino = fp32, same vectors)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--texts", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.texts is not None:
        run_child(args)
        return 0

    results = []
    for size in [int(s) for s in args.sizes.split(",") if s]:
        with tempfile.TemporaryDirectory(prefix="bench-memory-") as store:
            command = [sys.executable, __file__, "--texts", str(size), "--store", store,
                       "--shard-size", str(args.shard_size), "--backend", args.backend]
            completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            print(completed.stderr[-4000:], file=sys.stderr)
            return completed.returncode
        result = json.loads(completed.stdout.strip().splitlines()[-1])
        results.append(result)
        print(
            f"{result['texts']:>8} texts  stored {result['stored_rows']:>8}  {result['texts_per_s']:7.1f} texts/s  "
            f"RSS after load {result['rss_after_load_mb']:6.0f} MB  peak {result['peak_rss_mb']:6.0f} MB  "
            f"store {result['store_bytes'] / 2**20:6.0f} MB  ({result['backend']})"
        )
    if len(results) >= 2:
        growth = results[-1]["peak_rss_mb"] / results[0]["peak_rss_mb"] - 1
        print(f"peak RSS growth {results[0]['texts']} -> {results[-1]['texts']} texts: {growth:+.1%}")
    write_results(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
