"""A foreign connection to the DuckDB catalog file (issue 10, item 9): readers never wait
on a writer that waits, and whoever waits says what for, then gives up with StoreBusyError.

The foreign holder is a real `duckdb` process with the catalog file open; the waiting
writer is a real writer process (`writer_process.py`).
"""

import logging
import subprocess
import sys
import threading
import time

import pytest

import embedding_core.store.catalog as catalog
from embedding_core.store import EmbeddingParams, EmbeddingStore, StoreBusyError
from tests.store.fakes import DIM, SNAPSHOT, TextHashEncoder, bumped

HOLDER = """
import sys, duckdb
con = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == "read_only")
con.execute("SELECT count(*) FROM duckdb_tables()").fetchall()
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


class Holder:
    """A foreign process holding a connection to the catalog file until `release`."""

    def __init__(self, catalog_file: str, mode: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", HOLDER, catalog_file, mode],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "held"
        self.pid = self.process.pid

    def release(self) -> None:
        self.process.stdin.close()
        assert self.process.wait(timeout=30) == 0


class Lines:
    """A process's stderr, read line by line as it comes."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(stream), daemon=True)
        self.thread.start()

    def wait_for(self, word: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in list(self.lines) if word in line]
            if found:
                return found[0]
            time.sleep(0.1)
        raise AssertionError(f"no line with {word!r} within {timeout} s: {self.lines}")


@pytest.fixture
def filled(store, sample_rows) -> EmbeddingStore:
    corpus = store.write_corpus("docs", sample_rows)
    store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), TextHashEncoder())
    return store


def test_a_search_returns_while_a_writer_waits_for_a_foreign_read_only_connection(filled, sample_rows):
    holder = Holder(filled.catalog, "read_only")
    try:
        writer = subprocess.Popen(
            [sys.executable, "-m", "tests.store.writer_process", filled.root, filled.catalog, "docs", str(DIM),
             "--busy-timeout", "12", "--revision", "e" * 40], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stderr = Lines(writer.stderr)
        waiting = stderr.wait_for("Waiting", timeout=60)
        assert f"to write the catalog {filled.catalog}, held by process {holder.pid}" in waiting

        # The writer is waiting: readers are not (they return while it still waits).
        hits = filled.search(TextHashEncoder().vector(sample_rows.column("text")[4].as_py()), SNAPSHOT.model)
        version = filled.current_embedding_version("docs", SNAPSHOT.model)
        ids, vectors = filled.read_embeddings(version)
        assert hits[0].id == sample_rows.column("id")[4].as_py() and vectors.shape == (30, DIM)
        assert writer.poll() is None  # still waiting

        assert writer.wait(timeout=60) != 0
        stderr.thread.join(10)
        text = "".join(stderr.lines)
        assert "StoreBusyError: could not write the catalog" in text
        assert f"it stayed held by process {holder.pid}" in text
    finally:
        holder.release()
    # Nothing was left held or half-written: the same write now goes through.
    result = filled.write_embeddings("docs", filled.corpus_version("docs"), bumped(dim=DIM), EmbeddingParams(),
                                     TextHashEncoder())
    assert result.created and len(filled.embedding_versions("docs")) == 2


def test_a_foreign_read_write_connection_is_named_while_a_reader_waits_then_busy(
        filled, monkeypatch, caplog):
    monkeypatch.setattr(catalog, "BUSY_LOG_INTERVAL_S", 1.0)
    waiting_store = EmbeddingStore(filled.root, busy_timeout_s=3.5)
    holder = Holder(filled.catalog, "read_write")
    try:
        with caplog.at_level(logging.WARNING, logger="embedding_core.store.catalog"), \
                pytest.raises(StoreBusyError) as caught:
            waiting_store.corpus_partitions()
    finally:
        holder.release()
    assert f"could not read the catalog {filled.catalog}: it stayed held by process {holder.pid}" in str(caught.value)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Waiting")]
    assert len(lines) >= 2
    assert all(f"to read the catalog {filled.catalog}, held by process {holder.pid}" in line for line in lines)
    assert waiting_store.corpus_partitions() == ["docs"]


def test_on_postgres_a_foreign_open_read_transaction_blocks_neither_writers_nor_readers(
        tmp_path, pg_catalog, sample_rows):
    import psycopg2

    store = EmbeddingStore(tmp_path / "store", pg_catalog, busy_timeout_s=30)
    corpus = store.write_corpus("docs", sample_rows)
    foreign = psycopg2.connect(pg_catalog.removeprefix("postgres:"))
    try:
        with foreign.cursor() as cursor:  # a repeatable-read transaction, left open
            cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            cursor.execute("SELECT count(*) FROM ducklake_snapshot")
            cursor.execute("SELECT count(*) FROM ducklake_data_file")
        outcome: list = []

        def write():
            outcome.append(store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), TextHashEncoder()))

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        writer.join(60)
        assert not writer.is_alive() and outcome and outcome[0].created
        hits = store.search(TextHashEncoder().vector(sample_rows.column("text")[7].as_py()), SNAPSHOT.model)
        assert hits[0].id == sample_rows.column("id")[7].as_py()
    finally:
        foreign.close()
