"""Store commit time: one 10k-row, 384-d shard committed to the DuckLake store.

    .venv/bin/python benchmarks/bench_store_commit.py [--rows N] [--dim D] [--rounds R] [--json PATH]

`encode` returns precomputed random unit vectors, so the figure is the store's own work in
`write_embeddings`: reading the corpus shard back, looking up reusable vectors, and the one
lake transaction (Parquet files + version record + commit message). Every round is a new
partition of distinct texts, so nothing is reused and the lookup sees the growing store.
Two setups: a local DuckDB catalog with a local folder, and a Postgres catalog with S3 data
(loopback servers from deploy/servers.py, started and stopped here). Prints the median
seconds per setup, and the median CPU seconds of this process (targets: under 1 s local, under 3 s Postgres + S3).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import write_results  # noqa: E402
from embedding_core.store import EmbeddingParams, EmbeddingStore, ModelSnapshot, corpus_table  # noqa: E402


@contextmanager
def postgres_and_s3(state_dir: Path):
    """A loopback Postgres (catalog) and S3 server (data), stopped by PID on exit."""
    from deploy import servers

    postgres = servers.start_postgres(state_dir, durable=False)
    s3 = servers.start_s3(state_dir)
    try:
        os.environ.update(s3.env())
        yield s3.create_bucket("bench") + "/store", "postgres:" + postgres.create_database("bench")
    finally:
        s3.stop()
        postgres.stop()


def time_commits(store: EmbeddingStore, rows: int, dim: int, rounds: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU seconds of `write_embeddings`, one new shard per round (CPU time
    is this process's, all threads: it shows the work when other processes share the cores)."""
    snapshot = ModelSnapshot(model_key="bench", model="bench", revision="0" * 40, source="hub",
                             path="/nonexistent", dim=dim)
    vectors = np.random.default_rng(0).standard_normal((rows, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    seconds, cpu_seconds = [], []
    for round_ in range(rounds):
        partition = f"shard-{round_:03d}"
        corpus = store.write_corpus(partition, corpus_table(
            [f"{partition}:{i}" for i in range(rows)], [f"{partition} text {i}" for i in range(rows)]))
        started, cpu_started = time.perf_counter(), time.process_time()
        result = store.write_embeddings(partition, corpus, snapshot, EmbeddingParams(), lambda texts: vectors)
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
        assert result.created and result.encoded_rows == rows
    return seconds, cpu_seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-store-") as scratch:
        setups = {"local DuckDB catalog + folder": lambda: EmbeddingStore(Path(scratch) / "local")}
        with postgres_and_s3(Path(scratch) / "servers") as (root, catalog):
            setups["Postgres catalog + S3 (loopback)"] = lambda: EmbeddingStore(root, catalog)
            for name, open_store in setups.items():
                seconds, cpu_seconds = time_commits(open_store(), args.rows, args.dim, args.rounds)
                median, cpu_median = statistics.median(seconds), statistics.median(cpu_seconds)
                results.append({"setup": name, "rows": args.rows, "dim": args.dim, "median_s": median,
                                "median_cpu_s": cpu_median, "seconds": seconds, "cpu_seconds": cpu_seconds})
                print(f"{name:34s} {args.rows} x {args.dim}: median {median:.3f} s, CPU {cpu_median:.3f} s "
                      f"(rounds: {', '.join(f'{s:.3f}' for s in seconds)})", flush=True)
    write_results(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
