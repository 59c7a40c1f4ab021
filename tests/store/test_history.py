"""Time travel over earlier versions and lake snapshots, and maintenance that only ever
removes what is no longer current."""

import glob
import os
from datetime import timedelta

import numpy as np

from embedding_core.store import EmbeddingParams, version_key
from tests.store.fakes import SNAPSHOT, TextHashEncoder, bumped


def parquet_files(root: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root, "**", "*.parquet"), recursive=True))


def test_the_whole_store_reads_as_of_an_earlier_lake_snapshot(store, sample_rows):
    corpus = store.write_corpus("docs", sample_rows)
    old = store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), TextHashEncoder(), run_id="r1").version
    new = store.write_embeddings("docs", corpus, bumped(), EmbeddingParams(), TextHashEncoder(salt="v2"),
                                 run_id="r2").version
    store.promote(SNAPSHOT.model, version_key(new.revision, new.params_hash), run_id="r3")  # it serves now

    messages = [snapshot.message for snapshot in store.lake_snapshots()]
    assert [m for m in messages if m and m.startswith("embeddings")] == [
        f"embeddings docs test/model@{'a' * 12} {EmbeddingParams().params_hash} (run r1)",
        f"embeddings docs test/model@{'b' * 12} {EmbeddingParams().params_hash} (run r2)"]
    assert messages[-1] == f"promote test/model: {version_key(new.revision, new.params_hash)}"
    query = TextHashEncoder().vector(sample_rows.column("text")[4].as_py())
    with store.connect(snapshot=old.snapshot_id) as con:
        assert con.execute("SELECT DISTINCT revision FROM embeddings").fetchall() == [("a" * 40,)]
        best = con.execute("SELECT id FROM embeddings ORDER BY array_cosine_similarity(embedding, ?::FLOAT[8]) "
                           "DESC LIMIT 1", [query.tolist()]).fetchone()
        assert best == (sample_rows.column("id")[4].as_py(),)
    with store.connect() as con:
        assert con.execute("SELECT DISTINCT revision FROM embeddings").fetchall() == [("b" * 40,)]


def test_maintenance_expires_only_versions_no_longer_current(store, sample_rows):
    encoder = TextHashEncoder()
    first_corpus = store.write_corpus("docs", sample_rows.slice(0, 20))
    replaced = store.write_embeddings("docs", first_corpus, SNAPSHOT, EmbeddingParams(), encoder).version
    corpus = store.write_corpus("docs", sample_rows)
    current = store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), encoder).version
    other_corpus = store.write_corpus("other", sample_rows.slice(0, 5))
    other = store.write_embeddings("other", other_corpus, SNAPSHOT, EmbeddingParams(), encoder).version
    files_before = parquet_files(store.root)

    # Everything is younger than a day: nothing goes.
    kept = store.maintain(older_than=timedelta(days=1))
    assert (kept.expired_embedding_versions, kept.expired_corpus_versions, kept.deleted_files) == ([], [], 0)
    assert store.read_embeddings(replaced)[1].shape == (20, 8)

    report = store.maintain(older_than=timedelta(0))
    assert report.expired_embedding_versions == [replaced.version_id]
    assert report.expired_corpus_versions == [f"docs@{first_corpus.corpus_version[:16]}"]
    assert report.expired_snapshots > 0 and report.deleted_files > 0
    assert len(parquet_files(store.root)) < len(files_before)
    assert [v.version_id for v in store.embedding_versions()] == [current.version_id, other.version_id]
    assert store.corpus_version("docs", first_corpus.corpus_version) is None

    # The current versions of every partition stay whole and readable.
    for version, rows in ((current, sample_rows), (other, sample_rows.slice(0, 5))):
        ids, vectors = store.read_embeddings(version)
        assert ids.column("id").to_pylist() == rows.column("id").to_pylist()
        np.testing.assert_array_equal(vectors, np.stack([encoder.vector(t) for t in rows.column("text").to_pylist()]))
    with store.connect() as con:
        assert con.execute("SELECT partition, count(*) FROM embeddings GROUP BY ALL ORDER BY 1").fetchall() == [
            ("docs", 30), ("other", 5)]
        assert con.execute("SELECT count(*) FROM documents").fetchone() == (35,)
    hits = store.search(encoder.vector(sample_rows.column("text")[25].as_py()), SNAPSHOT.model, top_k=1)
    assert hits[0].id == sample_rows.column("id")[25].as_py()


def test_maintenance_keeps_the_corpus_a_current_embedding_was_made_from(store, sample_rows):
    corpus = store.write_corpus("docs", sample_rows.slice(0, 10))
    version = store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), TextHashEncoder()).version
    store.write_corpus("docs", sample_rows)  # newer corpus, not embedded yet
    assert store.maintain(older_than=timedelta(0)).expired_corpus_versions == []
    assert store.read_corpus(store.corpus_version("docs", version.corpus_version)).num_rows == 10


def test_maintenance_never_touches_files_outside_the_lake_folder(store, sample_rows):
    old_store_file = os.path.join(store.root, "embeddings", "test--model", "old.parquet")
    os.makedirs(os.path.dirname(old_store_file))
    with open(old_store_file, "wb") as fh:
        fh.write(b"PAR1 an older store's file")
    corpus = store.write_corpus("docs", sample_rows)
    store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), TextHashEncoder())
    store.maintain(older_than=timedelta(0))
    assert os.path.exists(old_store_file)
    assert all(path.startswith(os.path.join(store.root, "lake", "")) for path in parquet_files(store.root)
               if path != old_store_file)
