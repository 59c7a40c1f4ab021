"""The distributed profile, run for real on loopback: Postgres instance storage, Redis broker,
S3 (moto) store data, webserver, daemon, code server and 2 Celery workers, started by
`deploy.cluster` and stopped by PID at the end, pass or fail.

A backfill submitted through the webserver (`python -m embedding_assets.backfill --submit`)
is one Dagster asset backfill (a row of Postgres' `bulk_actions`, COMPLETED_SUCCESS, over the
selected buckets); it runs every step in a Celery worker process, on both workers; the vectors
in the store equal a direct sentence-transformers encode; the runs are rows of Postgres. Then a worker process is
SIGKILLed while it encodes a shard: the run fails naming the lost worker, the shard's previous
version stays current and readable, and a rerun completes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from dagster_graphql import DagsterGraphQLClient

from deploy import cluster as cluster_mod
from deploy import processes
from embedding_assets.backfill import MAX_RETRIES_TAG
from embedding_assets.partitions import partition_range_tags
from embedding_assets.submit import Deployment
from tests.conftest import DATA_DIR

# The first test also pays for the module's cluster and backfill (minutes on 2 busy cores).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

PROJECT = Path(__file__).resolve().parents[2]
SHARDS = ["shard_a.jsonl", "shard_b.jsonl", "shard_c.jsonl", "shard_d.jsonl"]
# Their landing buckets (embedding_core.landing.bucket_of(name, 16)): the Dagster partitions.
BUCKETS = {"shard_a.jsonl": "bucket-03", "shard_b.jsonl": "bucket-10", "shard_c.jsonl": "bucket-11",
           "shard_d.jsonl": "bucket-13"}
ROWS_PER_SHARD = 12
# The shard re-landed bigger for the kill test: seconds of encoding on one CPU thread, so the
# kill (sent as soon as the step says it encodes) lands mid-step; the rerun encodes them all.
BIG_ROWS = 1000
# The two shards re-landed for the Postgres kill: paragraphs (about 100 words each).
PG_ROWS = 200
STORE = os.environ.get("EMBEDDING_TEST_CLUSTER_STORE", "s3")  # s3: Postgres catalog + S3 data


def _rows(name: str) -> list[dict]:
    with open(DATA_DIR / name, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in rows))


@pytest.fixture(scope="module")
def landing() -> Path:
    path = Path(tempfile.mkdtemp(prefix="embedding-landing-"))
    rows = _rows("short_texts.jsonl")
    for index, name in enumerate(SHARDS):
        _write_jsonl(path / name, rows[index * ROWS_PER_SHARD:(index + 1) * ROWS_PER_SHARD])
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(landing):
    state = Path(tempfile.mkdtemp(prefix="embedding-cluster-"))
    try:
        yield cluster_mod.start(cluster_mod.ClusterConfig(
            state_dir=state, webserver_port=0, workers=2, store=STORE, landing_dir=str(landing),
            # two workers share two cores, and encode on them on any machine (a GPU would finish
            # the kill test's shard before the kill)
            env={"OMP_NUM_THREADS": "1", "EMBEDDING_DEVICE": "cpu"},
        ))
    finally:
        stopped = cluster_mod.stop(state)
        leftovers = [name for name, _, alive in cluster_mod.status(state) if alive]
        shutil.rmtree(state, ignore_errors=True)
        assert not leftovers, f"still running after stop: {leftovers} (stopped {stopped})"


def _backfill(cluster, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, **cluster.env}
    return subprocess.run(
        [sys.executable, "-m", "embedding_assets.backfill", "--submit", cluster.webserver_url,
         *args], env=env, cwd=PROJECT, capture_output=True, text=True, timeout=timeout,
    )


def _pg(cluster):
    postgres = processes.load(cluster.state_dir, "postgres")
    return postgres.connect(cluster_mod.DAGSTER_DB)


def _runs(cluster) -> dict[str, str]:
    """run_id -> status, straight from the instance's Postgres `runs` table."""
    con = _pg(cluster)
    try:
        with con.cursor() as cur:
            cur.execute("SELECT run_id, status FROM runs")
            return dict(cur.fetchall())
    finally:
        con.close()


def _events(cluster, run_ids) -> list:
    """The event log entries of the runs, from Postgres."""
    from dagster import EventLogEntry
    from dagster_shared.serdes import deserialize_value

    con = _pg(cluster)
    try:
        with con.cursor() as cur:
            cur.execute("SELECT event FROM event_logs WHERE run_id = ANY(%s) ORDER BY id",
                        (list(run_ids),))
            return [deserialize_value(row[0], EventLogEntry) for row in cur.fetchall()]
    finally:
        con.close()


def _step_evidence(events) -> tuple[dict[str, int], dict[str, str]]:
    """(step -> pid of its STEP_START, step -> Celery worker that ran it) per run/step."""
    pids, nodes = {}, {}
    for entry in events:
        event = entry.dagster_event
        if event is None or not entry.step_key:
            continue
        key = f"{entry.run_id[:8]}:{entry.step_key}"
        if event.event_type_value == "STEP_START":
            pids[key] = event.pid
        elif event.event_type_value == "ENGINE_EVENT" and event.engine_event_data:
            worker = event.engine_event_data.metadata.get("Celery worker")
            if worker is not None:
                nodes[key] = worker.value
    return pids, nodes


def _worker_pids(cluster) -> dict[int, str]:
    """pid of every process of each worker (its main process and its pool) -> worker node."""
    owners = {}
    for worker in cluster.workers():
        for proc in [psutil.Process(worker.pid), *psutil.Process(worker.pid).children(recursive=True)]:
            owners[proc.pid] = worker.extra["node"]
    return owners


def _store_env(cluster, monkeypatch):
    for key in ("EMBEDDING_STORE_ROOT", "EMBEDDING_CATALOG", "AWS_ENDPOINT_URL",
                "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
        if key in cluster.env:
            monkeypatch.setenv(key, cluster.env[key])


def _stored(cluster, partition: str):
    """(version ids, ids, vectors) of the current embeddings of a partition."""
    from embedding_core.store import EmbeddingStore

    store = EmbeddingStore(cluster.env["EMBEDDING_STORE_ROOT"], cluster.env.get("EMBEDDING_CATALOG"))
    with store.connect() as con:
        rows = con.execute(
            "SELECT version_id, id, embedding FROM embeddings WHERE partition = ? ORDER BY id",
            [partition],
        ).fetchall()
    versions = {row[0] for row in rows}
    return versions, [row[1] for row in rows], np.array([row[2] for row in rows], dtype=np.float32)


def _assert_equal_to_direct_encode(model, ids, vectors, texts_by_id):
    expected = model.encode([texts_by_id[i] for i in ids], convert_to_numpy=True)
    cosine = np.sum(vectors * expected, axis=1) / (
        np.linalg.norm(vectors, axis=1) * np.linalg.norm(expected, axis=1))
    assert vectors.shape == expected.shape
    np.testing.assert_allclose(cosine, 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def reference_model(reference):
    return reference


def _backfills(cluster) -> dict[str, tuple[str, list[str]]]:
    """backfill id -> (status, partitions of `embeddings` it targets), as the Backfills tab."""
    data = Deployment(cluster.webserver_url)("""{ partitionBackfillsOrError { ... on PartitionBackfills {
        results { id status partitionsTargetedForAssetKey(assetKey: {path: ["embeddings"]}) {
          partitionKeys ranges { start end } } } } } }""")["partitionBackfillsOrError"]["results"]
    return {b["id"]: (b["status"], b["partitionsTargetedForAssetKey"]["partitionKeys"]
                      or [r["start"] + "..." + r["end"] for r in b["partitionsTargetedForAssetKey"]["ranges"]])
            for b in data}


@pytest.fixture(scope="module")
def backfilled(cluster):
    started = time.monotonic()
    result = _backfill(cluster, "--partitions", ",".join(SHARDS))
    run_ids = [run_id for run_id, _ in _runs(cluster).items()]
    assert result.returncode == 0, _failure_report(cluster, result, run_ids)
    # one Dagster backfill: model_snapshot, then the 4 buckets, every partition done
    [(backfill_id, (status, partitions))] = _backfills(cluster).items()
    assert status == "COMPLETED_SUCCESS" and sorted(partitions) == sorted(BUCKETS.values()), (status, partitions)
    assert f"backfill {backfill_id} COMPLETED_SUCCESS" in result.stderr and "4/4 partitions done" in result.stderr
    print(f"backfill of {len(SHARDS)} shards through the cluster: {time.monotonic() - started:.0f} s")
    return run_ids


def test_backfill_runs_every_step_on_both_celery_workers(cluster, backfilled, landing,
                                                         reference_model, monkeypatch):
    # the instance's runs are rows of its Postgres database
    runs = _runs(cluster)
    assert {run_id: runs.get(run_id) for run_id in backfilled} == dict.fromkeys(backfilled, "SUCCESS")

    # every step started in a process of a Celery worker, and each was handed to a worker
    pids, nodes = _step_evidence(_events(cluster, backfilled))
    owners = _worker_pids(cluster)
    assert pids and set(pids) == set(nodes), (pids, nodes)
    assert any(key.endswith(":landing_buckets") for key in pids)
    not_on_workers = {step: pid for step, pid in pids.items() if pid not in owners}
    assert not not_on_workers, f"steps outside the Celery workers: {not_on_workers}"
    assert all(owners[pids[step]] == nodes[step] for step in pids), (pids, nodes, owners)
    # ... and both workers got work
    assert set(nodes.values()) == {w.extra["node"] for w in cluster.workers()}, nodes

    # every vector is in the store, equal to a direct encode with sentence-transformers
    _store_env(cluster, monkeypatch)
    for name in SHARDS:
        texts_by_id = {r["id"]: r["text"] for r in _rows_of(landing / name)}
        versions, ids, vectors = _stored(cluster, name)
        assert len(versions) == 1 and sorted(ids) == sorted(texts_by_id)
        _assert_equal_to_direct_encode(reference_model, ids, vectors, texts_by_id)


def _failure_report(cluster, result, run_ids) -> str:
    """The backfill's output and the errors its runs logged, for a failed assertion."""
    errors = [
        f"{e.run_id[:8]} {e.step_key}: {e.dagster_event.event_specific_data.error.to_string()[-1500:]}"
        for e in _events(cluster, run_ids)
        if e.dagster_event is not None and e.dagster_event.event_type_value == "STEP_FAILURE"
    ]
    return "\n".join([result.stdout[-2000:], result.stderr[-2000:], *errors])[-8000:]


def _rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _wait_for_encoding_step(cluster, known_runs: set[str], timeout: float = 180):
    """(run id, pid) of the `embeddings` step of a new run, once it has started encoding."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new_runs = set(_runs(cluster)) - known_runs
        pid = None
        for entry in _events(cluster, new_runs):
            if entry.step_key != "landing_buckets":
                continue
            event = entry.dagster_event
            if event is not None and event.event_type_value == "STEP_START":
                pid = event.pid
            elif event is None and "encoding" in (entry.user_message or "") and pid:
                return entry.run_id, pid
        time.sleep(0.2)
    raise AssertionError("no embeddings step started encoding")


def test_killed_worker_fails_the_run_clearly_keeps_the_store_and_a_rerun_completes(
    cluster, backfilled, landing, reference_model, monkeypatch
):
    _store_env(cluster, monkeypatch)
    target = SHARDS[0]
    before_versions, before_ids, before_vectors = _stored(cluster, target)

    # the shard lands again, much bigger: a new corpus version, and a long encode
    rows = _rows_of(landing / target)
    extra = _rows("short_texts.jsonl")[len(SHARDS) * ROWS_PER_SHARD:] + _rows("mixed_texts.jsonl")
    rows += [{"id": f"big-{i}", "text": r["text"]} for i, r in enumerate(extra[:BIG_ROWS])]
    _write_jsonl(landing / target, rows)

    # (the model snapshot is current: launch the shard's run itself, as the backfill does),
    # with no run retry (the cluster's dagster.yaml allows one): the failure itself is tested
    known = set(_runs(cluster))
    host, port = cluster.webserver_url.removeprefix("http://").rstrip("/").split(":")
    client = DagsterGraphQLClient(host, port_number=int(port))
    launched = client.submit_job_execution(
        "embed_corpus", asset_selection=["corpus", "embeddings"],
        tags={**partition_range_tags(BUCKETS[target], BUCKETS[target]), MAX_RETRIES_TAG: "0"})
    run_id, pid = _wait_for_encoding_step(cluster, known)
    assert run_id == launched
    owners = _worker_pids(cluster)
    assert pid in owners and pid not in {w.pid for w in cluster.workers()}
    os.kill(pid, signal.SIGKILL)  # the worker's pool process, mid-encode
    deadline = time.monotonic() + 240
    while client.get_run_status(run_id).value not in {"SUCCESS", "FAILURE", "CANCELED"}:
        assert time.monotonic() < deadline, f"run {run_id} not finished 240 s after the kill"
        time.sleep(1)

    # the run failed, naming the lost worker, and nothing retried it
    runs = _runs(cluster)
    assert runs[run_id] == "FAILURE", runs
    assert [r for r in runs if r not in known] == [run_id], runs
    messages = " ".join(
        (e.message or "") + json.dumps(str(e.dagster_event.event_specific_data))
        if e.dagster_event else (e.message or "")
        for e in _events(cluster, [run_id])
    )
    assert "WorkerLostError" in messages and "SIGKILL" in messages, messages[-3000:]

    # the store is consistent: the shard's previous version is still the current one, whole
    after_versions, after_ids, after_vectors = _stored(cluster, target)
    assert after_versions == before_versions and after_ids == before_ids
    np.testing.assert_array_equal(after_vectors, before_vectors)
    for name in SHARDS[1:]:
        assert len(_stored(cluster, name)[0]) == 1

    # the pool process is replaced, and a rerun (the backfill command again) completes
    started = time.monotonic()
    rerun = _backfill(cluster, "--partitions", target)
    print(f"rerun of {len(rows)} rows: {time.monotonic() - started:.0f} s")
    assert rerun.returncode == 0, _failure_report(cluster, rerun, set(_runs(cluster)) - known)
    versions, ids, vectors = _stored(cluster, target)
    assert len(versions) == 1 and versions != before_versions
    texts_by_id = {r["id"]: r["text"] for r in rows}
    assert sorted(ids) == sorted(texts_by_id)
    sample = np.random.default_rng(0).choice(len(ids), size=200, replace=False)
    _assert_equal_to_direct_encode(
        reference_model, [ids[i] for i in sample], vectors[sample], texts_by_id
    )


def test_postgres_killed_mid_backfill_then_restarted_a_rerun_stores_every_text_once(
    cluster, backfilled, landing, monkeypatch
):
    """Postgres (the instance's runs and events, and the store's DuckLake catalog) is
    SIGKILLed while a `--submit` backfill encodes, and started again on its data. The command
    ends (done, failed partitions, or the deployment unreachable past --retry-for) with one line
    and no traceback; the same command again completes; the store holds each landing row once,
    with its vector, and verifies clean."""
    _store_env(cluster, monkeypatch)
    targets = SHARDS[1:3]
    texts = _rows("mixed_texts.jsonl")
    for index, name in enumerate(targets):  # new content: an encode of seconds, so the kill lands mid-way
        rows = _rows_of(landing / name)[:ROWS_PER_SHARD]
        rows += [{"id": f"pg-{index}-{i}", "text": r["text"]} for i, r in enumerate(texts[index::2][:PG_ROWS])]
        _write_jsonl(landing / name, rows)
    known = set(_runs(cluster))
    env = {**os.environ, **cluster.env}
    command = [sys.executable, "-m", "embedding_assets.backfill", "--submit", cluster.webserver_url,
               "--partitions", ",".join(targets), "--retry-for", "60"]
    first = subprocess.Popen(command, env=env, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_encoding_step(cluster, known, timeout=300)

    postgres = processes.load(cluster.state_dir, "postgres")
    os.killpg(postgres.pid, signal.SIGKILL)  # the postmaster and every backend
    deadline = time.monotonic() + 30
    while psutil.pid_exists(postgres.pid):  # reaped (our child): its pid file then names no process
        processes.reap_children()
        assert time.monotonic() < deadline, "postgres survived SIGKILL"
        time.sleep(0.2)
    time.sleep(5)  # the deployment and the command see it gone
    from deploy import servers

    servers.start_postgres(cluster.state_dir, port=postgres.port)

    out, err = first.communicate(timeout=900)
    assert first.returncode in (0, 1, 75), (first.returncode, out[-2000:], err[-4000:])
    assert "Traceback" not in out + err, err[-4000:]
    if first.returncode:
        print(f"first backfill ended {first.returncode}: {err.strip().splitlines()[-1]}")

    rerun = _backfill(cluster, "--partitions", ",".join(targets), timeout=900)
    assert rerun.returncode == 0, _failure_report(cluster, rerun, set(_runs(cluster)) - known)
    from embedding_core.store import EmbeddingStore

    store = EmbeddingStore(cluster.env["EMBEDDING_STORE_ROOT"], cluster.env.get("EMBEDDING_CATALOG"))
    with store.connect() as con:
        for name in targets:
            expected = sorted(r["id"] for r in _rows_of(landing / name))
            ids = [row[0] for row in con.execute(
                "SELECT id FROM embeddings WHERE partition = ? ORDER BY id", [name]).fetchall()]
            documents = [row[0] for row in con.execute(
                "SELECT id FROM documents WHERE partition = ? ORDER BY id", [name]).fetchall()]
            assert ids == documents == expected, name  # each row once, each with its vector
    verify = subprocess.run([str(Path(sys.executable).with_name("embedding-store")), "verify",
                             "--store", cluster.env["EMBEDDING_STORE_ROOT"],
                             *(["--catalog", cluster.env["EMBEDDING_CATALOG"]] if cluster.env.get("EMBEDDING_CATALOG") else [])],
                            env=env, capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0 and " 0 damaged" in verify.stdout, verify.stdout + verify.stderr
