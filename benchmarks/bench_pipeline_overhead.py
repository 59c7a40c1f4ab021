"""Pipeline overhead: materializing the sample corpus vs a raw `encode` of the same texts.

    .venv/bin/python benchmarks/bench_pipeline_overhead.py [--rows N] [--repeats R]

Both sides use the same loaded model (the pipeline's per-process model cache is warmed
first), so the ratio measures what the pipeline adds around encoding: Dagster runs, corpus
parsing and hashing, Parquet writes with fsync, the DuckDB catalog, read-back verification
and the asset checks (which encode a few texts again). The raw side encodes the distinct
texts, the least any pipeline has to encode. Sides alternate and the best of `--repeats`
is kept, so load from other processes hurts both alike. Prints one summary line per side
and the ratio (target <= 1.2).
"""

import argparse
import tempfile
import time
from pathlib import Path

from dagster import AssetKey, DagsterInstance

from embedding_assets.backfill import landing_partitions, materialize_selection
from embedding_assets.definitions import SAMPLE_CORPUS_DIR, build_definitions
from embedding_core.corpus import read_corpus_file


def landing_slice(folder: Path, rows: int | None) -> list[str]:
    """Copy the sample corpus (its first `rows` records per file) to `folder`; return all texts."""
    folder.mkdir(parents=True)
    texts = []
    for source in sorted(Path(SAMPLE_CORPUS_DIR).iterdir()):
        lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
        header = 1 if source.suffix == ".csv" else 0
        (folder / source.name).write_text("".join(lines[: rows + header] if rows else lines), encoding="utf-8")
        texts += read_corpus_file(folder / source.name).table.column("text").to_pylist()
    return texts


def materialize_sample(landing: Path, store_root: Path) -> float:
    defs = build_definitions(store_root=str(store_root), landing_dir=str(landing))
    started = time.perf_counter()
    with DagsterInstance.ephemeral() as instance:
        keys = landing_partitions()
        results = materialize_selection(defs, instance, [AssetKey("model_snapshot")], log_level="WARNING")
        results += materialize_selection(defs, instance, [AssetKey("corpus"), AssetKey("embeddings")],
                                         keys, log_level="WARNING")
    elapsed = time.perf_counter() - started
    assert all(result.success for result in results)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=None, help="records per sample file (default: all)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        texts = landing_slice(scratch / "landing", args.rows)
        distinct = list(dict.fromkeys(texts))
        # Warm-up: loads the model into the pipeline's per-process cache.
        landing_slice(scratch / "warmup", 4)
        materialize_sample(scratch / "warmup", scratch / "warmup_store")
        defs = build_definitions(store_root=str(scratch / "warmup_store"))
        encoder = defs.resources["encoder"]
        store = defs.resources["embedding_store"].open()
        snapshot = store.current_model_snapshot(encoder.model_name)
        model = encoder.open().load(snapshot)

        raw_times, pipeline_times = [], []
        for repeat in range(args.repeats):
            started = time.perf_counter()
            model.encode(distinct, batch_size=encoder.batch_size, show_progress_bar=False)
            raw_times.append(time.perf_counter() - started)
            pipeline_times.append(materialize_sample(scratch / "landing", scratch / f"store{repeat}"))

    raw, pipeline = min(raw_times), min(pipeline_times)
    print(f"texts: {len(texts)} rows, {len(distinct)} distinct; model {snapshot.model} "
          f"({snapshot.source}) on {model.device}")
    print(f"raw encode:      {raw:8.2f} s  ({len(distinct) / raw:7.1f} texts/s)")
    print(f"materialization: {pipeline:8.2f} s  ({len(texts) / pipeline:7.1f} rows/s)")
    print(f"overhead ratio (materialization / raw encode): {pipeline / raw:.3f}")


if __name__ == "__main__":
    main()
