"""The documented command lines: the CI backfill and `embedding-search`, run as processes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from embedding_core.store import EmbeddingStore
from tests.assets.conftest import write_sample_slice

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture
def command_env(tmp_path) -> dict:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")
    return {**os.environ, "DAGSTER_HOME": str(home), "EMBEDDING_STORE_ROOT": str(tmp_path / "store"),
            "EMBEDDING_LANDING_DIR": str(write_sample_slice(tmp_path / "landing", rows=6))}


def run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=PROJECT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_backfill_command_embeds_the_range_and_search_command_finds_a_stored_text(tmp_path, command_env):
    # A range of landing file keys selects the buckets of the files in it: package_summaries.csv
    # (bucket-11) and python_docs.jsonl (bucket-04), not stdlib_docstrings.txt (bucket-07).
    backfill = run([sys.executable, "-m", "embedding_assets.backfill",
                    "--from", "package_summaries.csv", "--to", "python_docs.jsonl"], command_env)
    assert backfill.returncode == 0, backfill.stderr[-3000:]
    assert "bucket-04...bucket-04: ok" in backfill.stdout and "bucket-11...bucket-11: ok" in backfill.stdout
    assert f"2 partition(s); catalog: {tmp_path / 'store' / 'catalog.ducklake'}" in backfill.stdout

    store = EmbeddingStore(tmp_path / "store")
    with store.connect() as con:
        assert con.execute("SELECT partition, count(*) FROM embeddings GROUP BY 1 ORDER BY 1").fetchall() == [
            ("package_summaries.csv", 6), ("python_docs.jsonl", 6)]
        (target_id, target_text), = con.execute(
            "SELECT id, text FROM documents WHERE partition = 'package_summaries.csv' ORDER BY id LIMIT 1"
        ).fetchall()

    search = run([str(Path(sys.executable).with_name("embedding-search")), target_text,
                  "--store", str(tmp_path / "store"), "--top-k", "3", "--json"], command_env)
    assert search.returncode == 0, search.stderr[-3000:]
    hits = [json.loads(line) for line in search.stdout.splitlines()]
    assert len(hits) == 3 and hits[0]["id"] == target_id and hits[0]["text"] == target_text
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4) and hits[1]["score"] < hits[0]["score"]

    # The backfill built no vector index: the search scanned, and says so. Once an index
    # exists it answers, unless --exact asks for the scan.
    def searched(*options: str) -> str:
        result = run([str(Path(sys.executable).with_name("embedding-search")), target_text,
                      "--store", str(tmp_path / "store"), "--top-k", "1", *options], command_env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"] {target_id}\n" in result.stdout, result.stdout
        return result.stdout.splitlines()[0]

    assert searched().endswith("(exact scan)")
    (build,) = store.build_vector_indexes()
    assert build.record.rows == 12
    assert searched().endswith("(vector index)")
    assert searched("--exact").endswith("(exact scan)")


def test_backfill_command_names_an_unknown_partition(command_env):
    result = run([sys.executable, "-m", "embedding_assets.backfill", "--from", "missing.jsonl"], command_env)
    assert result.returncode == 2
    assert ("--from 'missing.jsonl' is neither a partition (bucket-00 ... bucket-15) nor a landing file "
            "of the landing folder") in result.stderr


def test_search_command_without_a_catalog_says_what_to_do(tmp_path, command_env):
    result = run([str(Path(sys.executable).with_name("embedding-search")), "query",
                  "--store", str(tmp_path / "empty")], command_env)
    assert result.returncode == 2
    assert "no embedding catalog under" in result.stderr and "make demo" in result.stderr


def test_definitions_validate_loads_the_workspace(command_env):
    result = run([str(Path(sys.executable).with_name("dagster")), "definitions", "validate",
                  "-w", "workspace.yaml"], command_env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Validation successful for code location embedding_pipeline." in output
    assert "All code locations passed validation." in output


def test_dg_check_and_list_defs_load_the_project(command_env):
    """`dg` finds the project through [tool.dg] in pyproject.toml (what `make test` and
    `make dev` use); the instance comes from DAGSTER_HOME, the top-level dagster.yaml is only read."""
    env = {**command_env, "PATH": f"{Path(sys.executable).parent}:{command_env.get('PATH', '')}",
           "PYTHONPATH": str(PROJECT)}
    dg = str(Path(sys.executable).with_name("dg"))
    instance_settings = (PROJECT / "dagster.yaml").read_text()
    check = run([dg, "check", "defs"], env)
    assert check.returncode == 0, (check.stdout + check.stderr)[-3000:]
    assert "All definitions loaded successfully." in check.stdout + check.stderr
    assert (PROJECT / "dagster.yaml").read_text() == instance_settings  # read, never rewritten

    listed = run([dg, "list", "defs", "--json"], env)
    assert listed.returncode == 0, listed.stderr[-3000:]
    defs = json.loads(listed.stdout)
    assert {a["asset_key"]: a["group_name"] for a in defs["assets"]} == {
        "corpus": "ingest", "model_snapshot": "models", "embeddings": "vectors",
        "vector_index": "vectors", "serving_version": "vectors", "store_maintenance": "maintenance"}
    assert all(a["owners"] == [{"team": "search-platform"}] for a in defs["assets"])
    assert sorted(j["name"] for j in defs["jobs"]) == [
        "embed_corpus", "index_vectors", "promote_candidate", "snapshot_model", "store_maintenance_job",
        "verify_embeddings"]
    assert sorted(s["name"] for s in defs["sensors"]) == [
        "corpus_landing_sensor", "embeddings_automation", "model_revision_sensor"]


@pytest.mark.slow
def test_two_concurrent_backfill_processes_of_different_partitions_are_both_recorded(tmp_path, command_env,
                                                                                    monkeypatch):
    partitions = ("package_summaries.csv", "python_docs.jsonl")  # bucket-11, bucket-04
    buckets = {"package_summaries.csv": "bucket-11", "python_docs.jsonl": "bucket-04"}
    # Dagster creates its SQLite tables on first use, which two processes must not race for.
    initialized = run([str(Path(sys.executable).with_name("dagster")), "instance", "info"], command_env)
    assert initialized.returncode == 0, initialized.stderr[-3000:]
    processes = [
        subprocess.Popen([sys.executable, "-m", "embedding_assets.backfill", "--partitions", partition],
                         env=command_env, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for partition in partitions
    ]
    outputs = [process.communicate(timeout=600) for process in processes]
    for partition, process, (stdout, stderr) in zip(partitions, processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-3000:]
        bucket = buckets[partition]
        assert f"{bucket}...{bucket}: ok" in stdout and "FAILED" not in stdout

    store = EmbeddingStore(tmp_path / "store")
    versions = store.embedding_versions()
    assert sorted(v.partition for v in versions) == list(partitions)
    assert all(v.rows == 6 == len(store.read_embeddings(v)[1]) for v in versions)
    with store.connect() as con:
        assert con.execute(
            "SELECT partition, version_id, count(*), min(array_length(embedding)) FROM embeddings "
            "GROUP BY 1, 2 ORDER BY 1").fetchall() == [(v.partition, v.version_id, 6, 384)
                                                       for v in sorted(versions, key=lambda v: v.partition)]

    from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, DagsterRunStatus, RunsFilter

    monkeypatch.setenv("DAGSTER_HOME", command_env["DAGSTER_HOME"])  # dagster.yaml reads it
    with DagsterInstance.get() as instance:
        runs = instance.get_runs(RunsFilter(tags={"embedding/trigger": "backfill-cli"}))
        assert len(runs) == 4 and {run.status for run in runs} == {DagsterRunStatus.SUCCESS}
        materialized = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("embeddings")), limit=10).records
        assert sorted(r.partition_key for r in materialized) == ["bucket-04", "bucket-11"]


@pytest.mark.slow
def test_search_by_chunk_and_verify_read_rows_run_as_commands(tmp_path, command_env):
    """`embedding-search --by-chunk --json` finds a chunk by its own text, with its span;
    `embedding-store verify --read-rows --json` reads every row, and names a damaged file."""
    env = {**command_env, "EMBEDDING_CHUNK_TOKENS": "24"}
    backfill = run([sys.executable, "-m", "embedding_assets.backfill",
                    "--from", "python_docs.jsonl", "--to", "python_docs.jsonl"], env)
    assert backfill.returncode == 0, backfill.stderr[-3000:]
    store_root = tmp_path / "store"
    with EmbeddingStore(store_root).connect() as con:
        (doc_id, chunk, start, end, text), = con.execute(
            "SELECT e.id, e.chunk, e.char_start, e.char_end, d.text FROM embeddings e JOIN documents d "
            "USING (partition, id) WHERE e.chunk = 1 ORDER BY e.id LIMIT 1").fetchall()

    search = run([str(Path(sys.executable).with_name("embedding-search")), text[start:end],
                  "--store", str(store_root), "--top-k", "3", "--by-chunk", "--json"], env)
    assert search.returncode == 0, search.stderr[-3000:]
    hits = [json.loads(line) for line in search.stdout.splitlines()]
    assert len(hits) == 3 and all(hit["chunk"] is not None for hit in hits)
    assert (hits[0]["id"], hits[0]["chunk"], hits[0]["char_start"], hits[0]["char_end"]) == (doc_id, 1, start, end)
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-3)

    verify = [str(Path(sys.executable).with_name("embedding-store")), "verify", "--store", str(store_root),
              "--read-rows", "--json"]
    healthy = run(verify, env)
    assert healthy.returncode == 0, healthy.stderr[-3000:]
    report = json.loads(healthy.stdout)
    assert report["read_rows"] is True and report["files_checked"] > 0
    assert report["damaged_files"] == [] and report["damaged_partitions"] == []

    damaged = max(store_root.rglob("*.parquet"), key=lambda path: path.stat().st_size)
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    broken = run(verify, env)
    assert broken.returncode == 1, broken.stderr[-3000:]
    report = json.loads(broken.stdout)
    assert [Path(file["path"]).name for file in report["damaged_files"]] == [damaged.name]
    assert report["damaged_partitions"] == ["python_docs.jsonl"]
