"""A landing folder at scale, through the real daemon (issue 17).

`dagster dev` on a temporary instance (the project's instance settings), the landing sensor
turned on over GraphQL as the UI's toggle does, then N small files dropped into the
landing folder at once. Reported: the longest sensor tick, the number of runs, the time
from the drop until the last vector is stored, and, in the same run, sentence-transformers'
encode of the same texts in one process. With ``--list-files M`` it also lays out M files
in a second folder and times one sensor tick over it (the listing) through a second server,
and the asset page's GraphQL query.

    .venv/bin/python benchmarks/bench_landing.py --files 5000 --texts-per-file 4 --list-files 100000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_pipeline import build_texts, run_reference  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
REPOSITORY = {"repositoryLocationName": "embedding_pipeline", "repositoryName": "__repository__"}
SENSOR = "corpus_landing_sensor"
ASSET_PAGE = """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
    partitionKeys partitionStats { numMaterialized numPartitions numFailed numMaterializing }
    assetPartitionStatuses { ... on DefaultPartitionStatuses { materializedPartitions failedPartitions } }
    assetMaterializations(limit: 1) { runId partition metadataEntries { label } } } } }"""


class GraphQL:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/graphql"

    def __call__(self, query: str, **variables) -> dict:
        request = urllib.request.Request(self.url, data=json.dumps({"query": query, "variables": variables}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            body = json.load(response)
        if "errors" in body:
            raise RuntimeError(body["errors"])
        return body["data"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def dagster_dev(work: Path, landing: Path, interval_s: int):
    """`dagster dev` over `landing` with a fresh instance and store under `work`."""
    home = work / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO),
           "EMBEDDING_STORE_ROOT": str(work / "store"), "EMBEDDING_LANDING_DIR": str(landing),
           "EMBEDDING_LANDING_SENSOR_INTERVAL_S": str(interval_s),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    log = open(work / "dagster_dev.log", "wb")
    process = subprocess.Popen([str(Path(sys.executable).with_name("dagster")), "dev", "-w", "workspace.yaml",
                                "--host", "127.0.0.1", "--port", str(port)], cwd=REPO, env=env,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        graphql = GraphQL(port)
        deadline = time.monotonic() + 300
        while True:
            try:
                if graphql("{ assetNodes { id } }")["assetNodes"]:
                    break
            except (urllib.error.URLError, ConnectionError, RuntimeError):
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError((work / "dagster_dev.log").read_text()[-3000:])
            time.sleep(1)
        yield graphql
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def start_sensor(graphql: GraphQL) -> None:
    graphql("""mutation($s: SensorSelector!) { startSensor(sensorSelector: $s) { __typename } }""",
            s={**REPOSITORY, "sensorName": SENSOR})


def ticks(graphql: GraphQL) -> list[dict]:
    data = graphql("""query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { ... on Sensor {
        sensorState { ticks(limit: 1000) { timestamp endTimestamp status runIds skipReason } } } } }""",
                   s={**REPOSITORY, "sensorName": SENSOR})
    return data["sensorOrError"]["sensorState"]["ticks"]


def runs(graphql: GraphQL) -> list[dict]:
    return graphql("{ runsOrError { ... on Runs { results { runId jobName status startTime endTime } } } }"
                   )["runsOrError"]["results"]


def stored_rows(store_root: Path) -> int:
    if not (store_root / "catalog.ducklake").exists():
        return 0
    from embedding_core.store import EmbeddingStore, StoreBusyError

    try:  # a DuckDB catalog file admits one process at a time: a busy one is "not yet"
        with EmbeddingStore(store_root, busy_timeout_s=5).connect() as con:
            return con.execute("SELECT count(*) FROM embeddings").fetchone()[0]
    except StoreBusyError:
        return 0


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 2.0) -> float:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(poll_s)
    return time.monotonic()


def write_files(folder: Path, rows: list[dict], files: int) -> None:
    per_file = len(rows) // files
    for index in range(files):
        part = rows[index * per_file:(index + 1) * per_file]
        (folder / f"doc-{index:06d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")


def tick_seconds(tick: dict) -> float | None:
    return tick["endTimestamp"] - tick["timestamp"] if tick.get("endTimestamp") else None


def landing_run(args, work: Path) -> dict:
    rows = build_texts(args.files * args.texts_per_file)
    reference_folder = work / "reference_landing"
    reference_folder.mkdir()
    write_files(reference_folder, rows, args.files)
    reference = run_reference(reference_folder, work / "reference.pkl", argparse.Namespace(
        device="cpu", batch_size=32, memory=False))
    landing = work / "landing"
    landing.mkdir()
    with dagster_dev(work / "pipeline", landing, args.interval) as graphql:
        start_sensor(graphql)
        # An empty folder: the first tick pins the model (model_snapshot), nothing else runs.
        wait_for(lambda: any(r["jobName"] == "snapshot_model" and r["status"] == "SUCCESS" for r in runs(graphql)),
                 600, "model_snapshot")
        dropped = time.monotonic()
        write_files(landing, rows, args.files)
        wrote_s = time.monotonic() - dropped
        total = len(rows) // args.files * args.files
        done = wait_for(lambda: stored_rows(work / "pipeline" / "store") >= total, args.timeout, "all vectors")
        # The runs go on with their checks after the last commit: wait for them to end.
        wait_for(lambda: all(r["status"] in {"SUCCESS", "FAILURE", "CANCELED"} for r in runs(graphql)),
                 args.timeout, "the runs to end")
        page_started = time.perf_counter()
        page = graphql(ASSET_PAGE, key={"path": ["embeddings"]})["assetNodeOrError"]
        page_s = time.perf_counter() - page_started
        time.sleep(1)
        all_ticks, all_runs = ticks(graphql), runs(graphql)
    durations = [s for s in map(tick_seconds, all_ticks) if s is not None]
    return {
        "files": args.files, "texts": total, "write_files_s": round(wrote_s, 2),
        "until_last_vector_s": round(done - dropped, 1),
        "reference_encode_s": round(reference["phases"]["encode"], 1),
        "reference_process_s": round(reference["wall_s"], 1),
        "ratio_to_reference_encode": round((done - dropped) / reference["phases"]["encode"], 2),
        "ticks": len(all_ticks), "longest_tick_s": round(max(durations), 2) if durations else None,
        "runs": {job: sum(r["jobName"] == job for r in all_runs) for job in sorted({r["jobName"] for r in all_runs})},
        "failed_runs": sum(r["status"] != "SUCCESS" for r in all_runs),
        "asset_page_query_s": round(page_s, 3), "partitions": page["partitionStats"],
    }


def listing_run(args, work: Path) -> dict:
    folder = work / "many"
    for index in range(args.list_files):
        sub = folder / f"d{index // 5000:03d}"
        if index % 5000 == 0:
            sub.mkdir(parents=True)
        (sub / f"f{index:07d}.jsonl").write_text(json.dumps({"id": "1", "text": f"text number {index}"}) + "\n")
    with dagster_dev(work / "listing", folder, args.interval) as graphql:
        start_sensor(graphql)
        # The first tick asks for the model snapshot; the first tick after it lists the folder.
        wait_for(lambda: any(r["jobName"] == "embed_corpus" for r in runs(graphql)), 900, "the listing tick")
        landing_ticks = [t for t in ticks(graphql) if t["runIds"]]  # model_snapshot's, then the listing's
        page_started = time.perf_counter()
        graphql(ASSET_PAGE, key={"path": ["corpus"]})
        page_s = time.perf_counter() - page_started
    return {"listed_files": args.list_files,
            "tick_s": [round(s, 2) for s in map(tick_seconds, landing_ticks) if s is not None],
            "asset_page_query_s": round(page_s, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--texts-per-file", type=int, default=4)
    parser.add_argument("--list-files", type=int, default=0, help="also time a tick over this many files")
    parser.add_argument("--interval", type=int, default=30, help="the sensor's minimum interval (s)")
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="bench_landing_") as tmp:
        work = Path(tmp)
        results = {}
        if args.files:
            results["landing"] = landing_run(args, work)
            print(json.dumps(results["landing"]), flush=True)
        if args.list_files:
            results["listing"] = listing_run(args, work)
            print(json.dumps(results["listing"]), flush=True)


if __name__ == "__main__":
    main()
