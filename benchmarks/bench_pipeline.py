"""End to end: the backfill command on a fresh store vs sentence-transformers' encode + pickle.

    .venv/bin/python benchmarks/bench_pipeline.py [--n 20000] [--files 4] [--backends auto openvino-int8]
    .venv/bin/python benchmarks/bench_pipeline.py --n 200000 --memory --backends auto --no-reference
    .venv/bin/python benchmarks/bench_pipeline.py --device cuda --backends torch torch-fp16   # GPU
    .venv/bin/python benchmarks/bench_pipeline.py --device cuda --target-devices cuda:0 --backends torch

Texts: ``--n`` distinct real texts of mixed length (about a third Python-documentation
chunks of 10-900 words, the rest PyPI summaries of 3-32 words), built by
tests/data/build_corpora.py's functions with other chunkings than the test corpora, minus the
int8 calibration texts; shuffled into ``--files`` JSONL landing files.

Reference: a fresh process imports sentence-transformers, loads the bundled model, reads the
landing files, ``encode``s every text and ``pickle.dump``s the array (the seed's way to store
embeddings). Pipeline: a fresh process runs ``python -m embedding_assets.backfill`` (every
landing file a partition, a fresh store, the instance under a scratch ``DAGSTER_HOME``) with
``EMBEDDING_BACKEND``. Both are timed whole, from launch to exit, in the same run (reference
first). Built OpenVINO models are cached like in a deployment, so their one-time build is done
before timing (and reported).

The pipeline's phases come from the run's event log (event timestamps, the ``embeddings``
step's log lines and its ``encode_seconds`` metadata): start-up (launch to the first run's
start: imports, definitions, instance, partitions), model load (the ``model_snapshot`` step:
resolve, load, canary check), corpus, reuse lookup, encode, write + read-back, checks (shard
checks and the ``embeddings_match_model`` spot check), other (run bookkeeping, exit).

Quality: the stored vectors against the reference's, by id: mean/min row cosine and top-10
neighbour overlap. ``--memory`` samples the peak RSS of each process tree. ``--json PATH``
writes every figure. Timings on a shared machine are noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import bundled_model_path, row_cosines, top_k_overlap, write_results  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CORPUS_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "embedding_core" / "bench_pipeline"
DOC_SHARE = 0.35


# ------------------------------------------------------------------------------------ texts
def build_texts(n: int, seed: int = 11) -> list[dict[str, str]]:
    """``n`` distinct held-out texts (cached under ~/.cache/embedding_core/bench_pipeline)."""
    cached = CORPUS_CACHE / f"texts-{n}-{seed}.jsonl"
    if cached.exists():
        return [json.loads(line) for line in cached.read_text(encoding="utf-8").splitlines()]
    sys.path.insert(0, str(REPO / "tests" / "data"))
    import build_corpora

    held_out = {json.loads(line)["text"] for line in
                (REPO / "embedding_core" / "data" / "calibration_texts.jsonl").read_text().splitlines() if line}
    docs: dict[str, dict[str, str]] = {}
    for offset in range(1, 6):  # other chunkings than the test corpora's seed: more distinct texts
        for row in build_corpora.chunk_docs(random.Random(build_corpora.SEED + offset)):
            if row["text"] not in held_out and row["text"] not in docs:
                docs[row["text"]] = {"id": f"{row['id']}-s{offset}", "text": row["text"]}
    rng = random.Random(seed)
    doc_rows = rng.sample(sorted(docs.values(), key=lambda r: r["id"]), min(len(docs), int(n * DOC_SHARE)))
    summaries = [row for row in build_corpora.load_pypi_summaries(build_corpora.DEFAULT_PYPI_TSV)
                 if row["text"] not in held_out and row["text"] not in docs]
    rows = doc_rows + rng.sample(summaries, n - len(doc_rows))
    rng.shuffle(rows)
    assert len({row["text"] for row in rows}) == n, "texts must be distinct"
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return rows


def write_landing(rows: list[dict[str, str]], folder: Path, files: int) -> None:
    folder.mkdir(parents=True)
    for index in range(files):
        part = rows[index::files]
        (folder / f"shard-{index:02d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part),
                                                         encoding="utf-8")


# ------------------------------------------------------------------------------------ processes
def run_timed(command: list[str], env: dict[str, str], memory: bool) -> dict:
    """Run ``command`` to completion; wall seconds, launch time, output, peak RSS of its tree."""
    launched = time.time()
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        root = psutil.Process(process.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    if memory:
        sampler.start()
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - started
    done.set()
    if process.returncode != 0:
        raise RuntimeError(f"{command} failed ({process.returncode}):\n{stderr[-4000:]}")
    return {"wall_s": wall, "launched": launched, "stdout": stdout, "stderr": stderr,
            "peak_rss_mb": peak[0] / 2**20 if memory else None}


def reference_main(landing: str, output: str, device: str, batch_size: int) -> None:
    """The reference process: sentence-transformers encode + pickle.dump, with its own phases."""
    started = time.perf_counter()
    from sentence_transformers import SentenceTransformer

    imported = time.perf_counter()
    model = SentenceTransformer(bundled_model_path(), device=device)
    loaded = time.perf_counter()
    rows = [json.loads(line) for path in sorted(Path(landing).glob("*.jsonl"))
            for line in path.read_text(encoding="utf-8").splitlines() if line]
    texts = [row["text"] for row in rows]
    read = time.perf_counter()
    vectors = model.encode(texts, batch_size=batch_size)
    encoded = time.perf_counter()
    with open(output, "wb") as fh:
        pickle.dump({"ids": [row["id"] for row in rows], "vectors": vectors}, fh)
    dumped = time.perf_counter()
    print(json.dumps({"import": imported - started, "model load": loaded - imported, "read": read - loaded,
                      "encode": encoded - read, "pickle.dump": dumped - encoded}))


def run_reference(landing: Path, output: Path, args) -> dict:
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); from benchmarks.bench_pipeline import "
            f"reference_main; reference_main({str(landing)!r}, {str(output)!r}, {args.device!r}, "
            f"{args.batch_size})")
    result = run_timed([sys.executable, "-c", code], dict(os.environ), args.memory)
    result["phases"] = json.loads(result["stdout"].strip().splitlines()[-1])
    return result


def pipeline_env(landing: Path, work: Path, backend: str, args) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DAGSTER_HOME": str(work / "dagster_home"),
           "EMBEDDING_STORE_ROOT": str(work / "store"), "EMBEDDING_LANDING_DIR": str(landing),
           "EMBEDDING_BACKEND": backend, "EMBEDDING_BATCH_SIZE": str(args.batch_size)}
    if args.device:
        env["EMBEDDING_DEVICE"] = args.device
    if args.target_devices:
        env["EMBEDDING_TARGET_DEVICES"] = args.target_devices
    (work / "dagster_home").mkdir(parents=True)
    (work / "dagster_home" / "dagster.yaml").write_text("")  # the default: SQLite under DAGSTER_HOME
    return env


def warm_backend(backend: str, args) -> float:
    """Build (or find) the cached model ``backend`` needs, outside the timed runs."""
    code = (f"from embedding_core.hub import DEFAULT_MODEL_NAME; from embedding_core.snapshot import "
            f"EncoderConfig; c = EncoderConfig(DEFAULT_MODEL_NAME, device={args.device!r}, "
            f"backend={backend!r}); c.load(c.resolve())")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return run_timed([sys.executable, "-c", code], env, False)["wall_s"]


# ------------------------------------------------------------------------------------ phases
def pipeline_phases(home: Path, launched: float, wall: float) -> dict[str, float]:
    """Seconds per phase, from the event log of the runs the backfill recorded under ``home``."""
    os.environ["DAGSTER_HOME"] = str(home)
    from dagster import DagsterEventType, DagsterInstance

    phases = dict.fromkeys(["start-up", "model load", "corpus", "reuse lookup", "encode",
                            "write + read-back", "checks", "other"], 0.0)
    with DagsterInstance.get() as instance:
        events = [event for run in instance.get_runs() for event in instance.all_logs(run.run_id)]
    events.sort(key=lambda event: event.timestamp)
    phases["start-up"] = events[0].timestamp - launched
    step_start: dict[str, float] = {}
    mark = started = 0.0  # end of the embeddings step's previous partition; start of its encode
    spans = 0.0
    for event in events:
        kind = event.dagster_event.event_type if event.dagster_event else None
        step, message = event.step_key or "", event.user_message or ""
        if kind == DagsterEventType.STEP_START:
            step_start[step] = mark = event.timestamp
        elif kind in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            seconds = event.timestamp - step_start.pop(step)
            if step == "model_snapshot":
                phases["model load"] += seconds
            elif step == "landing_buckets":
                phases["checks"] += event.timestamp - mark  # shard checks after the last write
            else:
                phases["checks"] += seconds  # embeddings_match_model
        elif step == "landing_buckets" and kind is None and " read and stored, " in message:
            phases["corpus"] += event.timestamp - mark  # the landing sync, before any encode
            mark = event.timestamp
        elif step == "landing_buckets" and kind is None and message.startswith("encoding "):
            phases["reuse lookup"] += event.timestamp - mark
            started = event.timestamp
        elif step == "landing_buckets" and kind is None and " texts encoded, " in message:
            if started:  # a bucket that encoded (an empty or fully reused one logs no "encoding")
                spans += event.timestamp - started
                started = 0.0
            mark = event.timestamp
        elif kind == DagsterEventType.ASSET_MATERIALIZATION and step == "landing_buckets":
            metadata = event.dagster_event.event_specific_data.materialization.metadata
            if "encode_seconds" in metadata:  # left out for a bucket that encoded nothing
                phases["encode"] += float(metadata["encode_seconds"].value)
    phases["write + read-back"] = spans - phases["encode"]
    phases["other"] = wall - sum(phases.values())
    return phases


def stored_vectors(store_root: Path) -> dict[str, np.ndarray]:
    from embedding_core.store import EmbeddingStore

    store = EmbeddingStore(store_root)
    out = {}
    for version in store.embedding_versions():
        ids, vectors = store.read_embeddings(version)
        out.update(zip(ids.column("id").to_pylist(), vectors, strict=True))
    return out


def quality(store_root: Path, reference: Path) -> dict[str, float]:
    with open(reference, "rb") as fh:
        ref = pickle.load(fh)
    stored = stored_vectors(store_root)
    ours = np.stack([stored[row_id] for row_id in ref["ids"]])
    cosines = row_cosines(ours, ref["vectors"])
    sample = np.random.default_rng(0).choice(len(ours), size=min(5000, len(ours)), replace=False)
    return {"mean_cosine": float(cosines.mean()), "min_cosine": float(cosines.min()),
            "top10_overlap": top_k_overlap(ours[sample], ref["vectors"][sample])}


# ------------------------------------------------------------------------------------ main
def report_line(name: str, n: int, result: dict, reference_wall: float | None) -> str:
    rate = n / result["wall_s"]
    ratio = f"{reference_wall / result['wall_s']:5.2f}x" if reference_wall else "   - "
    rss = f", peak RSS {result['peak_rss_mb']:.0f} MB" if result.get("peak_rss_mb") else ""
    return f"{name:<28} {result['wall_s']:8.1f} s {rate:8.1f} texts/s {ratio}{rss}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="texts (default 20000)")
    parser.add_argument("--files", type=int, default=4, help="landing files (partitions)")
    parser.add_argument("--backends", nargs="+", default=["auto", "openvino-int8"])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    parser.add_argument("--target-devices", help="EMBEDDING_TARGET_DEVICES for the pipeline's pool")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--memory", action="store_true", help="sample each process tree's peak RSS")
    parser.add_argument("--no-reference", action="store_true", help="skip sentence-transformers")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()

    rows = build_texts(args.n)
    words = np.array([len(row["text"].split()) for row in rows])
    print(f"{args.n} distinct texts in {args.files} landing files; words per text: median "
          f"{int(np.median(words))}, p90 {int(np.percentile(words, 90))}, max {words.max()}; "
          f"device {args.device}, batch size {args.batch_size}")
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_pipeline-") as scratch:
        scratch = Path(scratch)
        landing = scratch / "landing"
        write_landing(rows, landing, args.files)
        reference_path, reference = scratch / "reference.pkl", None
        if not args.no_reference:
            reference = run_reference(landing, reference_path, args)
            phases = ", ".join(f"{k} {v:.1f}" for k, v in reference["phases"].items())
            print(report_line("sentence-transformers", args.n, reference, None) + f"  ({phases} s)")
            results.append({"side": "sentence-transformers", "n": args.n, "wall_s": reference["wall_s"],
                            "phases": reference["phases"], "peak_rss_mb": reference["peak_rss_mb"]})
        for backend in args.backends:
            build = warm_backend(backend, args)
            work = scratch / f"pipeline-{backend}"
            result = run_timed([sys.executable, "-m", "embedding_assets.backfill"],
                               pipeline_env(landing, work, backend, args), args.memory)
            phases = pipeline_phases(work / "dagster_home", result["launched"], result["wall_s"])
            row = {"side": f"pipeline {backend}", "n": args.n, "wall_s": result["wall_s"], "phases": phases,
                   "peak_rss_mb": result["peak_rss_mb"], "warm_up_s": build}
            line = report_line(f"backfill, backend={backend}", args.n, result,
                               reference["wall_s"] if reference else None)
            if reference:
                row.update(quality(work / "store", reference_path))
                row["speedup"] = reference["wall_s"] / result["wall_s"]
                line += (f"  cosine mean {row['mean_cosine']:.6f} min {row['min_cosine']:.6f}, "
                         f"top-10 overlap {row['top10_overlap']:.3f}")
            print(line)
            print("    phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))
            results.append(row)
    write_results(args.json, results)


if __name__ == "__main__":
    main()
