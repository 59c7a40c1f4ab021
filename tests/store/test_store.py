"""EmbeddingStore on a local DuckDB catalog: versions, views, reuse, idempotence, bad input.

The store takes any `encode(texts) -> array` function; these tests use `TextHashEncoder`,
a deterministic function of each text that also records what it was asked to encode.
Model-backed runs are in tests/assets; many writers on Postgres + S3 in test_distributed.
"""

import glob
import os

import numpy as np
import pytest

from embedding_core.store import (
    EmbeddingParams,
    EmbeddingStore,
    corpus_table,
    text_sha256,
    version_key,
)
from tests.store.fakes import DIM, SNAPSHOT, TextHashEncoder, bumped


def snapshot_count(store: EmbeddingStore) -> int:
    return len(store.lake_snapshots())


def test_corpus_versions_are_content_addressed_and_idempotent(store, sample_rows):
    first = store.write_corpus("docs", sample_rows, source_uri="docs.jsonl")
    commits = snapshot_count(store)
    again = store.write_corpus("docs", sample_rows)
    assert again == first and snapshot_count(store) == commits  # nothing new committed

    second = store.write_corpus("docs", sample_rows.slice(0, 29))
    assert second.corpus_version != first.corpus_version
    assert store.corpus_version("docs") == second
    assert store.read_corpus(first).equals(sample_rows)  # the old version is intact
    assert store.corpus_version("docs", first.corpus_version).source_uri == "docs.jsonl"

    # The first shard again: its stored rows become current, nothing is rewritten.
    assert store.write_corpus("docs", sample_rows).write_id == first.write_id
    assert store.corpus_version("docs").corpus_version == first.corpus_version
    assert store.corpus_partitions() == ["docs"]


def test_embeddings_view_is_float_array_queryable_with_array_cosine_similarity(store, sample_rows):
    encoder = TextHashEncoder()
    corpus = store.write_corpus("docs", sample_rows)
    version = store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), encoder).version

    query = encoder.vector("a query")
    with store.connect() as con:
        assert con.execute("SELECT DISTINCT typeof(embedding) FROM embeddings").fetchall() == [(f"FLOAT[{DIM}]",)]
        rows = con.execute(
            f"SELECT id, text_sha256, partition, model, revision, params_hash, corpus_version, version_id, "
            f"array_cosine_similarity(embedding, ?::FLOAT[{DIM}]) FROM embeddings ORDER BY id",
            [query.tolist()],
        ).fetchall()
    texts = dict(zip(sample_rows.column("id").to_pylist(), sample_rows.column("text").to_pylist(), strict=True))
    assert len(rows) == 30
    for row_id, sha, partition, model, revision, params_hash, corpus_version, version_id, score in rows:
        vector = encoder.vector(texts[row_id])
        expected = vector @ query / (np.linalg.norm(vector) * np.linalg.norm(query))
        assert (sha, partition, model, revision, params_hash, corpus_version, version_id) == (
            text_sha256(texts[row_id]), "docs", SNAPSHOT.model, SNAPSHOT.revision,
            EmbeddingParams().params_hash, corpus.corpus_version, version.version_id)
        assert score == pytest.approx(expected, abs=1e-5)


def test_documents_view_shows_the_current_corpus_texts(store, sample_rows):
    store.write_corpus("docs", sample_rows)
    current = store.write_corpus("docs", sample_rows.slice(0, 3))
    with store.connect() as con:
        rows = con.execute("SELECT id, text, text_sha256, partition, corpus_version FROM documents "
                           "ORDER BY id").fetchall()
    expected = sorted(zip(sample_rows.column("id").to_pylist()[:3], sample_rows.column("text").to_pylist()[:3],
                          sample_rows.column("text_sha256").to_pylist()[:3], strict=True))
    assert rows == [(*row, "docs", current.corpus_version) for row in expected]


def test_a_shard_commits_rows_record_and_run_message_in_one_lake_snapshot(store, sample_rows):
    corpus = store.write_corpus("docs", sample_rows)
    before = store.lake_snapshots()[-1].snapshot_id
    version = store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), TextHashEncoder(),
                                     run_id="run-42").version

    latest = store.lake_snapshots()[-1]
    assert latest.snapshot_id == version.snapshot_id == before + 1
    assert "run-42" in latest.message and "docs" in latest.message
    assert version.run_id == "run-42"
    with store.connect(snapshot=before) as con:  # one snapshot earlier: no rows, no record
        assert con.execute("SELECT count(*) FROM embeddings").fetchone() == (0,)
        assert con.execute("SELECT count(*) FROM embedding_rows").fetchone() == (0,)
    with store.connect() as con:
        assert con.execute("SELECT typeof(embedding), count(*) FROM embedding_rows GROUP BY 1").fetchall() == [
            ("FLOAT[]", 30)]
    assert glob.glob(os.path.join(store.root, "**", "*.parquet"), recursive=True)  # data files under root


def test_same_inputs_twice_encode_nothing_and_keep_one_version(store, sample_rows):
    encoder = TextHashEncoder()
    corpus = store.write_corpus("docs", sample_rows)
    first = store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), encoder)
    commits = snapshot_count(store)
    second = store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), encoder)
    assert (first.created, second.created) == (True, False)
    assert len(encoder.calls) == 1 and second.encoded_rows == 0
    assert second.version == first.version
    assert len(store.embedding_versions("docs")) == 1
    assert snapshot_count(store) == commits


def test_texts_already_embedded_in_another_partition_are_reused_not_encoded(store, sample_rows):
    encoder = TextHashEncoder()
    first_ids, first_texts = sample_rows.column("id").to_pylist()[:20], sample_rows.column("text").to_pylist()[:20]
    docs = store.write_corpus("docs", corpus_table(first_ids, first_texts))
    store.write_embeddings("docs", docs, SNAPSHOT, EmbeddingParams(), encoder)

    # 10 texts seen before (under other ids), 5 new, one new text twice.
    texts = first_texts[5:15] + [f"brand new text {i}" for i in range(5)] + ["brand new text 0"]
    more = store.write_corpus("more", corpus_table([f"m{i}" for i in range(len(texts))], texts))
    result = store.write_embeddings("more", more, SNAPSHOT, EmbeddingParams(), encoder)

    assert encoder.calls[-1] == [f"brand new text {i}" for i in range(5)]
    # 5 distinct texts encoded (6 rows, one text twice); 10 rows taken from the store.
    assert (result.encoded_rows, result.reused_rows, result.version.rows) == (5, 10, 16)
    ids, vectors = store.read_embeddings(result.version)
    assert ids.column("id").to_pylist() == [f"m{i}" for i in range(16)]
    np.testing.assert_array_equal(vectors, np.stack([encoder.vector(t) for t in texts]))


def test_the_reuse_lookup_finds_stored_vectors_and_leaves_the_connection_settings_alone(store, sample_rows):
    """The lookup turns DuckDB's join filter pushdown off for itself only (it pushed every
    hash of the shard into the scan: 2-4 s per 25k-text shard) and restores what was set."""
    from embedding_core.store import queries

    encoder = TextHashEncoder()
    corpus = store.write_corpus("docs", sample_rows)
    store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), encoder)
    texts = sample_rows.column("text").to_pylist()
    wanted = [text_sha256(t) for t in texts[:7]] + [text_sha256("never stored")]
    with store.connect() as con:
        con.execute("SET disabled_optimizers = 'compressed_materialization'")
        found = queries.stored_vectors(con, SNAPSHOT.model, SNAPSHOT.revision, EmbeddingParams().params_hash,
                                       "float32", wanted, DIM)
        setting = con.execute("SELECT current_setting('disabled_optimizers')").fetchone()[0]
    assert setting == "compressed_materialization"
    assert sorted(found) == sorted(wanted[:7])
    for text in texts[:7]:
        np.testing.assert_array_equal(found[text_sha256(text)], encoder.vector(text))


def test_reuse_never_crosses_revisions_or_params(store, sample_rows):
    encoder = TextHashEncoder()
    corpus = store.write_corpus("docs", sample_rows)
    store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), encoder)
    store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(normalize_embeddings=True), encoder)
    store.write_embeddings("docs", corpus, bumped(), EmbeddingParams(), encoder)
    assert [len(call) for call in encoder.calls] == [30, 30, 30]


def test_revision_bump_adds_a_version_beside_the_old_one(store, sample_rows):
    corpus = store.write_corpus("docs", sample_rows)
    old = store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), TextHashEncoder()).version
    new = store.write_embeddings("docs", corpus, bumped(), EmbeddingParams(), TextHashEncoder(salt="v2")).version

    assert [v.revision for v in store.embedding_versions("docs")] == ["a" * 40, "b" * 40]
    # The new revision is a candidate beside the serving one until it is promoted.
    assert store.current_embedding_version("docs", SNAPSHOT.model) == old
    store.promote(SNAPSHOT.model, version_key(new.revision, new.params_hash))
    assert store.current_embedding_version("docs", SNAPSHOT.model) == new
    with store.connect() as con:
        assert con.execute("SELECT DISTINCT revision FROM embeddings").fetchall() == [("b" * 40,)]
    _, old_vectors = store.read_embeddings(old)  # not current, still readable
    np.testing.assert_array_equal(old_vectors[0], TextHashEncoder().vector(sample_rows.column("text")[0].as_py()))

    # Asking for the old inputs again finds the stored version without encoding.
    encoder = TextHashEncoder()
    again = store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), encoder)
    assert not again.created and encoder.calls == [] and again.version == old
    store.rollback(SNAPSHOT.model)
    with store.connect() as con:
        assert con.execute("SELECT DISTINCT revision FROM embeddings").fetchall() == [("a" * 40,)]


def test_changed_corpus_of_a_partition_gets_a_new_version_not_an_overwrite(store, sample_rows):
    first = store.write_corpus("docs", sample_rows.slice(0, 10))
    v1 = store.write_embeddings("docs", first, SNAPSHOT, EmbeddingParams(), TextHashEncoder()).version
    second = store.write_corpus("docs", sample_rows.slice(0, 12))
    v2 = store.write_embeddings("docs", second, SNAPSHOT, EmbeddingParams(), TextHashEncoder()).version
    assert v1.version_id != v2.version_id and (v1.rows, v2.rows) == (10, 12)
    assert store.read_embeddings(v1)[1].shape == (10, DIM)
    with store.connect() as con:
        assert con.execute("SELECT count(*) FROM embeddings").fetchone() == (12,)


def test_large_shard_reads_back_in_corpus_order(store):
    rows = 60_000
    corpus = store.write_corpus("big", corpus_table([f"r{i}" for i in range(rows)], [f"row {i}" for i in range(rows)]))
    encode = lambda texts: np.arange(len(texts) * 4, dtype=np.float32).reshape(-1, 4)  # noqa: E731
    version = store.write_embeddings("big", corpus, bumped(dim=4), EmbeddingParams(), encode).version
    ids, vectors = store.read_embeddings(version)
    assert ids.column("id").to_pylist() == [f"r{i}" for i in range(rows)]
    np.testing.assert_array_equal(vectors[:, 0], np.arange(rows, dtype=np.float32) * 4)
    assert store.read_corpus(corpus).column("id").to_pylist() == ids.column("id").to_pylist()


def test_stale_partitions_lists_missing_and_outdated_embeddings(store, sample_rows):
    params = EmbeddingParams()
    a = store.write_corpus("a", sample_rows.slice(0, 5))
    b = store.write_corpus("b", sample_rows.slice(5, 5))
    store.write_corpus("c", sample_rows.slice(10, 5))
    store.write_embeddings("a", a, SNAPSHOT, params, TextHashEncoder())
    store.write_embeddings("b", b, SNAPSHOT, params, TextHashEncoder())
    assert store.stale_partitions(SNAPSHOT, params) == ["c"]

    store.write_corpus("b", sample_rows.slice(5, 6))  # new corpus version for b
    assert store.stale_partitions(SNAPSHOT, params) == ["b", "c"]
    assert store.stale_partitions(bumped(), params) == ["a", "b", "c"]
    assert store.stale_partitions(SNAPSHOT, EmbeddingParams(normalize_embeddings=True)) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("bad_output", "message"),
    [
        (lambda texts: np.zeros((len(texts), DIM + 1), np.float32), r"shape \(30, 9\).*partition 'docs'"),
        (lambda texts: np.zeros((len(texts) - 1, DIM), np.float32), r"shape \(29, 8\)"),
        (lambda texts: np.zeros((len(texts), DIM), np.float64), r"float64 vectors.*'docs'"),
        (lambda texts: np.where(np.arange(len(texts))[:, None] == 3, np.nan, 1.0).repeat(DIM, 1).astype(np.float32),
         r"non-finite vector for partition 'docs' \(text 3"),
    ],
)
def test_bad_encoder_output_is_rejected_and_nothing_is_committed(store, sample_rows, bad_output, message):
    corpus = store.write_corpus("docs", sample_rows)
    commits = snapshot_count(store)
    with pytest.raises(ValueError, match=message):
        store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), bad_output)
    assert store.embedding_versions() == [] and snapshot_count(store) == commits


def test_invalid_corpus_tables_name_the_partition_row_and_id(store):
    with pytest.raises(ValueError, match=r"shard 'docs' repeats id 'x' at row 2"):
        store.write_corpus("docs", corpus_table(["x", "y", "x"], ["a", "b", "c"]))
    with pytest.raises(ValueError, match=r"shard 'docs' lacks column\(s\) \['text_sha256'\]"):
        store.write_corpus("docs", corpus_table(["x"], ["a"]).drop_columns(["text_sha256"]))
    assert store.corpus_partitions() == []


def test_corpus_of_another_partition_is_refused_by_name(store, sample_rows):
    corpus = store.write_corpus("docs", sample_rows)
    with pytest.raises(ValueError, match=r"belongs to partition 'docs', not 'other'"):
        store.write_embeddings("other", corpus, SNAPSHOT, EmbeddingParams(), TextHashEncoder())


def test_binary_precision_is_stored_as_packed_int8_vectors(store, sample_rows):
    from embedding_core.quantization import quantize_embeddings

    encoder = TextHashEncoder(dim=16)
    snapshot = bumped(revision=SNAPSHOT.revision, dim=16)
    corpus = store.write_corpus("docs", sample_rows)
    result = store.write_embeddings(
        "docs", corpus, snapshot, EmbeddingParams(precision="binary"),
        lambda texts: quantize_embeddings(encoder(texts), precision="binary"),
    )
    assert (result.version.dtype, result.version.dim) == ("int8", 16)
    _, vectors = store.read_embeddings(result.version)
    assert (vectors.dtype, vectors.shape) == (np.int8, (30, 2))
    # sentence-transformers' binary: packed sign bits shifted into int8 (bits - 128).
    bits = np.packbits(encoder.vector(sample_rows.column("text")[0].as_py()) > 0)
    np.testing.assert_array_equal(vectors[0], (bits.astype(np.int16) - 128).astype(np.int8))
    with store.connect() as con:
        assert con.execute("SELECT DISTINCT typeof(embedding) FROM embedding_rows_int8").fetchall() == [("TINYINT[]",)]
        assert con.execute("SELECT count(*) FROM embeddings").fetchone() == (0,)  # float32 versions only


def test_search_returns_the_nearest_texts_with_their_documents(store, sample_rows):
    encoder = TextHashEncoder()
    corpus = store.write_corpus("docs", sample_rows)
    store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), encoder)
    target = sample_rows.column("text")[7].as_py()
    hits = store.search(encoder.vector(target), model=SNAPSHOT.model, top_k=3)
    assert hits[0].id == sample_rows.column("id")[7].as_py()
    assert hits[0].text == target and hits[0].partition == "docs"
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].score >= hits[1].score >= hits[2].score
    with pytest.raises(ValueError, match=r"similarity_fn must be one of \['cosine', 'dot'\]"):
        store.search(encoder.vector(target), model=SNAPSHOT.model, similarity_fn="l2")


def test_model_snapshots_are_recorded_and_the_latest_is_current(store):
    assert store.current_model_snapshot("test/model") is None
    store.record_model_snapshot(SNAPSHOT)
    newer = bumped(prompts={"query": "q: "}, pooling=("mean",))
    store.record_model_snapshot(newer)
    assert store.current_model_snapshot("test/model") == newer
    store.record_model_snapshot(SNAPSHOT)
    assert store.current_model_snapshot("test/model") == SNAPSHOT
    other = bumped(model_key="other", model="other")
    store.record_model_snapshot(other)
    assert store.current_model_snapshots() == [other, SNAPSHOT]


def test_models_of_different_dimensions_share_a_store_and_search_separately(store, sample_rows):
    corpus = store.write_corpus("docs", sample_rows)
    small = bumped(revision=SNAPSHOT.revision, model="test/small", model_key="test/small", dim=4)
    store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), TextHashEncoder())
    store.write_embeddings("docs", corpus, small, EmbeddingParams(), TextHashEncoder(dim=4))
    with store.connect() as con:
        assert con.execute(
            "SELECT model, typeof(embedding), min(len(embedding)), count(*) FROM embeddings GROUP BY ALL ORDER BY model"
        ).fetchall() == [("test/model", "FLOAT[]", DIM, 30), ("test/small", "FLOAT[]", 4, 30)]
    target = sample_rows.column("text")[5].as_py()
    for snapshot, dim in ((SNAPSHOT, DIM), (small, 4)):
        hits = store.search(TextHashEncoder(dim=dim).vector(target), snapshot.model, top_k=1)
        assert hits[0].id == sample_rows.column("id")[5].as_py()


def test_an_empty_corpus_stores_an_empty_current_version_and_keeps_the_others(store, sample_rows):
    params = EmbeddingParams()
    other = store.write_corpus("docs", sample_rows)
    store.write_embeddings("docs", other, SNAPSHOT, params, TextHashEncoder())
    empty = store.write_corpus("empty", corpus_table([], []))
    encoder = TextHashEncoder()
    # Before: ArrowTypeError "string vs null" and no embeddings version for the partition.
    result = store.write_embeddings("empty", empty, SNAPSHOT, params, encoder)
    assert (result.created, result.version.rows, result.encoded_rows, result.reused_rows) == (True, 0, 0, 0)
    assert encoder.calls == []  # nothing to encode
    assert store.embedding_versions("empty") == [result.version]
    ids, vectors = store.read_embeddings(result.version)
    assert ids.num_rows == 0 and len(vectors) == 0
    assert [v.rows for v in store.embedding_versions("docs")] == [30]
    with store.connect() as con:
        assert con.execute("SELECT partition, count(*) FROM embeddings GROUP BY ALL").fetchall() == [("docs", 30)]
    again = store.write_embeddings("empty", empty, SNAPSHOT, params, encoder)
    assert (again.created, again.version) == (False, result.version)
