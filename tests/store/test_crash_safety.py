"""A writer killed mid-write loses nothing; concurrent writer processes serialize."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from embedding_core.store import EmbeddingParams, EmbeddingStore, corpus_table
from tests.store.writer_process import random_vectors, snapshot

WRITER = str(Path(__file__).with_name("writer_process.py"))
DIM = 384


def temp_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(".*.tmp")) if directory.exists() else []


@pytest.mark.slow
def test_writer_killed_mid_write_leaves_previous_version_readable_and_next_run_completes(tmp_path):
    store = EmbeddingStore(tmp_path / "store")
    small = store.write_corpus("big", corpus_table([f"s{i}" for i in range(50)], [f"small {i}" for i in range(50)]))
    previous = store.write_embeddings("big", small, snapshot(DIM), EmbeddingParams(), random_vectors(DIM)).version
    rows = 200_000
    large = store.write_corpus("big", corpus_table([f"r{i}" for i in range(rows)], [f"row {i}" for i in range(rows)]))
    target_dir = Path(store.root) / Path(previous.path).parent
    final_path = target_dir / f"{large.corpus_version[:16]}.parquet"

    writer = subprocess.Popen([sys.executable, WRITER, str(tmp_path / "store"), "embed", "big", str(DIM)],
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
    deadline = time.monotonic() + 120
    # The writer's temp file growing is its signal that it is writing the Parquet file.
    while not any(p.stat().st_size > 1 << 20 for p in temp_files(target_dir) if p.exists()):
        assert writer.poll() is None, "the writer finished before it could be killed"
        assert time.monotonic() < deadline, "the writer never started writing"
        time.sleep(0.002)
    writer.send_signal(signal.SIGKILL)
    assert writer.wait() == -signal.SIGKILL

    # Nothing under a final name, only the dead writer's temp file; the catalog is as before.
    assert not final_path.exists()
    assert len(temp_files(target_dir)) == 1
    assert [v.version_id for v in store.embedding_versions("big")] == [previous.version_id]
    with store.connect() as con:
        assert con.execute("SELECT count(*), min(id) FROM embeddings").fetchone() == (50, "s0")

    result = store.write_embeddings("big", large, snapshot(DIM), EmbeddingParams(), random_vectors(DIM))
    assert result.created and result.version.rows == rows and final_path.exists()
    assert temp_files(target_dir) == []  # the dead writer's leftover was removed
    with store.connect() as con:
        assert con.execute("SELECT count(*) FROM embeddings").fetchone() == (rows,)
    _, vectors = store.read_embeddings(result.version)
    np.testing.assert_array_equal(vectors[:3], random_vectors(DIM)([""] * rows)[:3])


@pytest.mark.slow
def test_concurrent_writer_processes_all_land_in_one_consistent_catalog(tmp_path):
    root = str(tmp_path / "store")
    EmbeddingStore(root)
    writers = [subprocess.Popen([sys.executable, WRITER, root, "shards", name, "4"],
                                env={**os.environ, "PYTHONPATH": os.getcwd()})
               for name in ("a", "b", "c")]
    assert [writer.wait(timeout=300) for writer in writers] == [0, 0, 0]

    store = EmbeddingStore(root)
    assert store.corpus_partitions() == [f"{name}-{i}" for name in "abc" for i in range(4)]
    assert len(store.embedding_versions()) == 12
    with store.connect() as con:
        assert con.execute("SELECT count(*), count(DISTINCT partition) FROM embeddings").fetchone() == (2400, 12)
