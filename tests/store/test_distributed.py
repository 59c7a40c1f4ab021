"""Many writer processes on one store with a Postgres catalog and S3 data (loopback servers).

Each writer is a real process (`writer_process.py`) encoding with `TextHashEncoder`, so the
parent can check every committed vector exactly. No lock is held while encoding: writers
meet only in their short commits, and a conflicting commit is retried. The concurrent-writer
tests hold every writer inside its open commit transaction until all have arrived (a
barrier, not a clock), so the commits overlap and genuinely conflict; each writer's log says
whether it retried.
"""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from embedding_core.store import EmbeddingParams, EmbeddingStore, corpus_table
from tests.store.fakes import TextHashEncoder, bumped

REPO = str(Path(__file__).resolve().parents[2])
DIM = 16

pytestmark = pytest.mark.slow


@pytest.fixture
def lake(s3_root, pg_catalog) -> EmbeddingStore:
    return EmbeddingStore(s3_root, pg_catalog)


def write_shard(store: EmbeddingStore, partition: str, rows: int):
    texts = [f"{partition} text {i}" for i in range(rows)]
    return store.write_corpus(partition, corpus_table([f"{partition}:{i}" for i in range(rows)], texts))


def start_writer(store: EmbeddingStore, partition: str, *options: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.store.writer_process", store.root, store.catalog, partition, str(DIM),
         *options],
        cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


def finish(writer: subprocess.Popen, timeout: float = 240) -> dict:
    """The writer's JSON result, with its log (stderr) under ``"log"``."""
    out, err = writer.communicate(timeout=timeout)
    assert writer.returncode == 0, err[-3000:]
    return {**json.loads(out.splitlines()[-1]), "log": err}


CONFLICT_RETRIED = "the commit conflicted with a concurrent writer (try 1 of"


def meeting(tmp_path: Path, writers: int, where: str = "commit") -> tuple[str, ...]:
    """Writer options: wait at a barrier (``where``: in the commit transaction, or while
    encoding) until all ``writers`` are there."""
    folder = tmp_path / f"meet-in-{where}"
    folder.mkdir()
    return "--meet", str(folder), "--writers", str(writers), "--meet-in", where


def assert_overlapped_and_a_conflict_was_retried(results: list[dict]) -> None:
    writers = len(results)
    assert all(f"met {writers} writers in commit" in result["log"] for result in results)  # all open at once
    retried = [result for result in results if CONFLICT_RETRIED in result["log"]]
    # The first commit wins; at least one other transaction conflicted and was rerun.
    assert retried, [result["log"][-2000:] for result in results]


def wait_for(path: Path, writer: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert writer.poll() is None, writer.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"the writer never touched {path.name}"
        time.sleep(0.05)


def assert_vectors_exact(store: EmbeddingStore, version, texts: list[str]) -> None:
    ids, vectors = store.read_embeddings(version)
    assert ids.num_rows == len(texts)
    np.testing.assert_array_equal(vectors, np.stack([TextHashEncoder(DIM).vector(t) for t in texts]))


def lake_files(s3_server, root: str) -> set[str]:
    bucket, prefix = root.removeprefix("s3://").split("/", 1)
    pages = s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def test_four_writer_processes_commit_different_partitions_at_once(lake, tmp_path):
    partitions = [f"shard-{i}" for i in range(4)]
    corpora = {p: write_shard(lake, p, 500) for p in partitions}
    meet = meeting(tmp_path, len(partitions))
    writers = [start_writer(lake, p, *meet, "--run-id", f"run-{p}") for p in partitions]
    results = [finish(writer) for writer in writers]
    assert_overlapped_and_a_conflict_was_retried(results)

    assert all(result["created"] for result in results)
    assert len({result["snapshot_id"] for result in results}) == 4  # four separate commits
    with lake.connect() as con:
        assert con.execute("SELECT partition, count(*) FROM embeddings GROUP BY ALL ORDER BY 1").fetchall() == [
            (p, 500) for p in partitions]
        assert con.execute("SELECT DISTINCT typeof(embedding) FROM embeddings").fetchall() == [(f"FLOAT[{DIM}]",)]
    messages = " ".join(s.message or "" for s in lake.lake_snapshots())
    for partition in partitions:
        assert f"run-{partition}" in messages
        version = lake.current_embedding_version(partition, bumped().model)
        assert_vectors_exact(lake, version, lake.read_corpus(corpora[partition]).column("text").to_pylist())


def test_two_writers_of_one_partition_both_commit_and_the_first_is_served(lake, tmp_path):
    corpus = write_shard(lake, "shared", 300)
    meet = meeting(tmp_path, 2)
    writers = [start_writer(lake, "shared", "--revision", revision * 40, *meet) for revision in "cd"]
    results = [finish(writer) for writer in writers]
    assert_overlapped_and_a_conflict_was_retried(results)

    versions = lake.embedding_versions("shared")
    assert sorted(v.revision for v in versions) == ["c" * 40, "d" * 40]
    # A model never promoted serves its first version set: the one committed first.
    first = min(results, key=lambda result: result["snapshot_id"])
    current = lake.current_embedding_version("shared", bumped().model)
    assert current.version_id == first["version_id"]
    with lake.connect() as con:
        assert con.execute("SELECT DISTINCT revision, count(*) FROM embeddings GROUP BY ALL").fetchall() == [
            (current.revision, 300)]
    texts = lake.read_corpus(corpus).column("text").to_pylist()
    for version in versions:  # both kept whole
        assert_vectors_exact(lake, version, texts)


def test_a_small_shard_started_while_a_large_one_encodes_finishes_first(lake, tmp_path):
    """No lock is held while encoding: the large shard's writer stays in its encode until the
    small one has committed (were encoding to hold the store, the small writer would wait)."""
    write_shard(lake, "large", 500)
    write_shard(lake, "small", 50)
    release = tmp_path / "release-large"
    large = start_writer(lake, "large", "--ready", str(tmp_path / "large-encoding"), "--encode-until", str(release))
    wait_for(tmp_path / "large-encoding", large)
    small = finish(start_writer(lake, "small"))
    assert large.poll() is None, "the large shard's writer ended while it should be encoding"
    release.touch()
    large_result = finish(large)
    assert small["snapshot_id"] < large_result["snapshot_id"]
    with lake.connect() as con:
        assert con.execute("SELECT partition, count(*) FROM embeddings GROUP BY ALL ORDER BY 1").fetchall() == [
            ("large", 500), ("small", 50)]


@pytest.mark.parametrize("moment", ["encode", "commit"])
def test_a_writer_killed_mid_encode_or_mid_commit_leaves_the_previous_version_current(
        lake, s3_server, tmp_path, moment):
    corpus = write_shard(lake, "docs", 400)
    texts = lake.read_corpus(corpus).column("text").to_pylist()
    previous = lake.write_embeddings("docs", corpus, bumped(dim=DIM), EmbeddingParams(), TextHashEncoder(DIM)).version
    commits = len(lake.lake_snapshots())
    files_before = lake_files(s3_server, lake.root)

    marker = tmp_path / moment
    option = "--ready" if moment == "encode" else "--hang-in-commit"
    # Mid-encode: held until a file nobody creates; mid-commit: hung in the open transaction.
    hold = ["--encode-until", str(tmp_path / "never")] if moment == "encode" else []
    writer = start_writer(lake, "docs", "--revision", "e" * 40, *hold, option, str(marker))
    wait_for(marker, writer)
    writer.send_signal(signal.SIGKILL)
    assert writer.wait() == -signal.SIGKILL

    assert len(lake.lake_snapshots()) == commits  # nothing committed
    assert [v.version_id for v in lake.embedding_versions("docs")] == [previous.version_id]
    assert lake.current_embedding_version("docs", previous.model) == previous
    assert_vectors_exact(lake, previous, texts)
    if moment == "commit":  # its Parquet files reached S3, unregistered: maintenance removes them
        assert lake_files(s3_server, lake.root) > files_before
        lake.maintain(older_than=timedelta(0))
        assert lake_files(s3_server, lake.root) == files_before

    rerun = lake.write_embeddings("docs", corpus, bumped(revision="e" * 40, dim=DIM), EmbeddingParams(), TextHashEncoder(DIM))
    # The rerun stores its revision whole; the served version stays the first until a promotion.
    assert rerun.created and lake.current_embedding_version("docs", previous.model) == previous
    assert_vectors_exact(lake, rerun.version, texts)


def test_processes_opening_a_brand_new_postgres_catalog_at_once_create_it_once(s3_root, pg_catalog):
    opener = "import sys; from embedding_core.store import EmbeddingStore; EmbeddingStore(sys.argv[1], sys.argv[2])"
    openers = [subprocess.Popen([sys.executable, "-c", opener, s3_root, pg_catalog], cwd=REPO,
                                env={**os.environ, "PYTHONPATH": REPO}, stderr=subprocess.PIPE, text=True)
               for _ in range(3)]
    errors = [opener.communicate(timeout=120)[1] for opener in openers]
    assert [opener.returncode for opener in openers] == [0, 0, 0], errors
    messages = [s.message for s in EmbeddingStore(s3_root, pg_catalog).lake_snapshots()]
    assert messages.count("create the store") == 1


def test_writer_processes_take_turns_on_a_local_catalog_file(tmp_path):
    store = EmbeddingStore(tmp_path / "store")
    partitions = [f"local-{i}" for i in range(3)]
    for partition in partitions:
        write_shard(store, partition, 200)
    # All three encode at once (a barrier); then one process at a time holds the catalog file.
    meet = meeting(tmp_path, len(partitions), "encode")
    results = [finish(writer) for writer in [start_writer(store, p, *meet) for p in partitions]]
    assert all("met 3 writers in encode" in result["log"] for result in results)
    assert all(result["created"] for result in results)
    assert len({result["snapshot_id"] for result in results}) == 3
    with store.connect() as con:
        assert con.execute("SELECT partition, count(*) FROM embeddings GROUP BY ALL ORDER BY 1").fetchall() == [
            (p, 200) for p in partitions]


def test_an_index_built_on_s3_is_found_by_a_reader_on_another_machine(lake, s3_server, tmp_path, monkeypatch):
    """The index files go to S3 beside the lake, recorded in the Postgres catalog; another
    machine (another process with an empty index cache) finds and uses them."""
    snapshot = bumped(dim=DIM)
    corpus = write_shard(lake, "a", 400)
    lake.write_embeddings("a", corpus, snapshot, EmbeddingParams(), TextHashEncoder(DIM))
    monkeypatch.setenv("EMBEDDING_INDEX_CACHE", str(tmp_path / "builder-cache"))
    (build,) = lake.build_vector_indexes()
    stored = lake_files(s3_server, lake.root)
    assert {f"{lake.root}/{p}".split("/", 3)[3] for p in (build.record.path, build.record.rows_path)} <= stored
    reader = subprocess.run(
        [sys.executable, "-c", "import json, sys\n"
         "from embedding_core.store import EmbeddingStore\n"
         "from tests.store.fakes import TextHashEncoder\n"
         f"store = EmbeddingStore({lake.root!r}, {lake.catalog!r})\n"
         f"searcher = store.searcher({snapshot.model!r})\n"
         f"hits = searcher.search(TextHashEncoder({DIM}).vector('a text 123'), top_k=1)\n"
         "print(json.dumps([searcher.uses_index, searcher.loaded.record.index_id, hits[0].id]))"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "EMBEDDING_INDEX_CACHE": str(tmp_path / "reader-cache")})
    assert reader.returncode == 0, reader.stderr[-3000:]
    assert json.loads(reader.stdout.splitlines()[-1]) == [True, build.record.index_id, "a:123"]
    assert sorted(p.name for p in (tmp_path / "reader-cache").iterdir()) == sorted(
        p.replace("/", "__") for p in (build.record.path, build.record.rows_path))
