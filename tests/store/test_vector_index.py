"""The vector index: built over the current vectors, updated in place of a rebuild, found
by search, and never trusted past what it covers (newer rows, retired rows, damaged files)."""

import logging
import os
from datetime import timedelta

import numpy as np
import pytest

from embedding_core.corpus import read_corpus_file
from embedding_core.store import EmbeddingParams, EmbeddingStore, corpus_table
from tests.store.conftest import SAMPLE_CORPUS
from tests.store.fakes import SNAPSHOT, TextHashEncoder, bumped

DIM = 24
SNAP = bumped(SNAPSHOT, revision=SNAPSHOT.revision, dim=DIM)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return read_corpus_file(SAMPLE_CORPUS).table.column("text").to_pylist()


def write(store: EmbeddingStore, partition: str, texts: list[str], encoder: TextHashEncoder) -> None:
    corpus = store.write_corpus(partition, corpus_table([f"{partition}:{i}" for i in range(len(texts))], texts))
    store.write_embeddings(partition, corpus, SNAP, EmbeddingParams(), encoder)


def exact_top10(store: EmbeddingStore, queries: np.ndarray) -> list[list]:
    """The exact search's top 10 of each query (a scan of every row per query: slow)."""
    return store.search_batch(queries, SNAP.model, top_k=10, exact=True)


def agree(store: EmbeddingStore, queries: np.ndarray, exact: list[list]) -> float:
    """Share of the exact top 10 the index search finds (recall@10), over `queries`."""
    fast = store.search_batch(queries, SNAP.model, top_k=10)
    return float(np.mean([len({h.id for h in f} & {h.id for h in e}) / len(e) for f, e in zip(fast, exact, strict=True)]))


def test_the_index_answers_like_exact_search_and_follows_new_and_retired_rows(tmp_path, texts, caplog):
    store = EmbeddingStore(tmp_path / "store")
    encoder = TextHashEncoder(dim=DIM)
    for partition, (start, stop) in zip("abc", [(0, 100), (100, 350), (350, 600)], strict=True):
        write(store, partition, texts[start:stop], encoder)
    assert not store.searcher(SNAP.model).uses_index  # none built yet: exact, said in a log line
    (build,) = store.build_vector_indexes()
    record = build.record
    assert (record.rows, record.mode, record.dim, record.metric, build.added_rows) == (600, "full", DIM, "cosine", 600)
    assert record.versions == tuple(sorted(v.version_id for p in "abc" for v in [store.current_embedding_version(p, SNAP.model)]))
    assert os.path.getsize(store.uri(record.path)) == record.bytes > 0 and os.path.exists(store.uri(record.rows_path))

    target = texts[250]
    hits = store.search(encoder.vector(target), SNAP.model, top_k=3)
    assert store.searcher(SNAP.model).uses_index
    assert (hits[0].id, hits[0].partition, hits[0].text) == ("b:150", "b", target)
    assert hits[0].score == pytest.approx(1.0, abs=2e-3)  # float16 vectors in the index
    queries = np.stack([encoder.vector(t) for t in texts[:600:12]])
    assert agree(store, queries, exact_top10(store, queries)) >= 0.98

    # New rows after the index (partition d, a new version of a): found at once, exactly;
    # the old rows of a are no longer returned.
    write(store, "d", texts[600:700], encoder)
    write(store, "a", texts[700:800], encoder)
    searcher = store.searcher(SNAP.model)
    assert searcher.uses_index and len(searcher.delta) == 200
    assert store.search(encoder.vector(texts[650]), SNAP.model, top_k=1)[0].id == "d:50"
    assert store.search(encoder.vector(texts[720]), SNAP.model, top_k=1)[0].id == "a:20"
    assert store.search(encoder.vector(texts[20]), SNAP.model, top_k=1)[0].text != texts[20]  # retired
    everything = np.stack([encoder.vector(t) for t in texts[:800:8]])
    exact = exact_top10(store, everything)  # the same rows are current until the end: asked once
    assert agree(store, everything, exact) >= 0.98

    # The update adds the new versions' rows and removes the retired ones (1/6 of its rows:
    # less than REBUILD_SHARE): no full rebuild.
    (update,) = store.build_vector_indexes()
    assert (update.record.mode, update.added_rows, update.removed_rows, update.record.rows) == ("update", 200, 100, 700)
    assert update.record.path != record.path and os.path.exists(store.uri(record.path))  # the old one stays
    assert len(store.searcher(SNAP.model).delta) == 0
    assert store.search(encoder.vector(texts[650]), SNAP.model, top_k=1)[0].id == "d:50"
    assert agree(store, everything, exact) >= 0.98
    (again,) = store.build_vector_indexes()
    assert again.unchanged and again.record == update.record

    # Maintenance removes the superseded index's files, never the current one's.
    report = store.maintain(older_than=timedelta(0))
    assert report.deleted_index_files == 2
    assert not os.path.exists(store.uri(record.path)) and os.path.exists(store.uri(update.record.path))
    assert [r.index_id for r in store.vector_indexes()] == [update.record.index_id]

    # Errors: a query of the wrong dimension names both; exact=True never uses the index.
    with pytest.raises(ValueError, match=f"the query has 5 dimensions; the vectors of {SNAP.model} have {DIM}"):
        store.search(np.ones(5, np.float32), SNAP.model)
    assert not store.searcher(SNAP.model, exact=True).uses_index
    assert store.search(np.ones(DIM, np.float32), "no/such-model") == []


def test_a_damaged_index_file_falls_back_to_exact_search_and_the_next_build_replaces_it(tmp_path, texts, caplog):
    store = EmbeddingStore(tmp_path / "store")
    encoder = TextHashEncoder(dim=DIM)
    write(store, "a", texts[:300], encoder)
    (build,) = store.build_vector_indexes()
    with open(store.uri(build.record.path), "r+b") as file:
        file.truncate(build.record.bytes // 3)
    with caplog.at_level(logging.WARNING):
        hits = store.search(encoder.vector(texts[42]), SNAP.model, top_k=2)
    assert hits[0].id == "a:42" and hits[0].score == pytest.approx(1.0, abs=1e-5)  # exact: float32 score
    assert "vector index of test/model unusable, exact search instead" in caplog.text
    assert build.record.path in caplog.text
    (rebuilt,) = store.build_vector_indexes()
    assert (rebuilt.record.mode, rebuilt.record.rows, rebuilt.unchanged) == ("full", 300, False)
    assert store.searcher(SNAP.model).uses_index
    assert store.search(encoder.vector(texts[42]), SNAP.model, top_k=1)[0].id == "a:42"
    # A missing file of a newer index (one this process has not opened): the same fallback.
    write(store, "b", texts[300:320], encoder)
    (updated,) = store.build_vector_indexes()
    os.remove(store.uri(updated.record.rows_path))
    with caplog.at_level(logging.WARNING):
        assert store.search(encoder.vector(texts[310]), SNAP.model, top_k=1)[0].id == "b:10"
    assert f"index file {updated.record.rows_path} is missing" in caplog.text


def test_an_empty_store_has_no_index_and_no_hits(tmp_path):
    store = EmbeddingStore(tmp_path / "store")
    assert store.build_vector_indexes() == []
    assert store.search(np.ones(DIM, np.float32), SNAP.model) == []
    assert store.search_batch(np.ones((3, DIM), np.float32), SNAP.model) == [[], [], []]
