"""EmbeddingStore: versioned layout, catalog views, reuse, idempotence and bad input.

The store takes any `encode(texts) -> array` function; these tests use `TextHashEncoder`, a
deterministic function of each text that also records what it was asked to encode, so
reuse and idempotence can be asserted exactly. Model-backed runs are in tests/assets.
"""

import hashlib
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedding_core.corpus import read_corpus_file
from embedding_core.store import (
    EmbeddingParams,
    EmbeddingStore,
    ModelSnapshot,
    corpus_table,
    text_sha256,
)

DIM = 8
SNAPSHOT = ModelSnapshot(model_key="test/model", model="test/model", revision="a" * 40,
                         source="hub", path="/nonexistent", dim=DIM)


class TextHashEncoder:
    """vector(text) = DIM floats drawn from the text's SHA-256; records every call."""

    def __init__(self, dim: int = DIM, salt: str = "") -> None:
        self.dim, self.salt, self.calls = dim, salt, []

    def vector(self, text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256((self.salt + text).encode()).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([self.vector(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)


def files_under(root, sub: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, fs in os.walk(os.path.join(root, sub)) for f in fs)


@pytest.fixture
def store(tmp_path) -> EmbeddingStore:
    return EmbeddingStore(tmp_path / "store")


@pytest.fixture
def sample_rows():
    shard = read_corpus_file(os.path.join(os.path.dirname(__file__), "..", "..",
                                          "embedding_assets", "sample_corpus", "python_docs.jsonl"))
    return shard.table.slice(0, 30)


def test_corpus_versions_are_content_addressed_and_idempotent(store, sample_rows):
    first = store.write_corpus("docs", sample_rows, source_uri="docs.jsonl")
    again = store.write_corpus("docs", sample_rows)
    assert again.corpus_version == first.corpus_version
    assert files_under(store.root, "corpus") == [f"corpus/docs/{first.corpus_version[:16]}.parquet"]

    changed = sample_rows.slice(0, 29)
    second = store.write_corpus("docs", changed)
    assert second.corpus_version != first.corpus_version
    assert len(files_under(store.root, "corpus")) == 2
    assert store.corpus_version("docs").corpus_version == second.corpus_version
    assert store.read_corpus(first).num_rows == 30  # the old version is intact


def test_embeddings_view_is_float_array_queryable_with_array_cosine_similarity(store, sample_rows):
    encoder = TextHashEncoder()
    corpus = store.write_corpus("docs", sample_rows)
    store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), encoder)

    query = encoder.vector("a query")
    with store.connect() as con:
        assert con.execute("SELECT DISTINCT typeof(embedding) FROM embeddings").fetchall() == [(f"FLOAT[{DIM}]",)]
        rows = con.execute(
            f"SELECT id, text_sha256, partition, model, revision, "
            f"array_cosine_similarity(embedding, ?::FLOAT[{DIM}]) FROM embeddings ORDER BY id",
            [query.tolist()],
        ).fetchall()
    texts = dict(zip(sample_rows.column("id").to_pylist(), sample_rows.column("text").to_pylist(), strict=True))
    assert len(rows) == 30
    for row_id, sha, partition, model, revision, score in rows:
        vector = encoder.vector(texts[row_id])
        expected = vector @ query / (np.linalg.norm(vector) * np.linalg.norm(query))
        assert (sha, partition, model, revision) == (text_sha256(texts[row_id]), "docs",
                                                     SNAPSHOT.model, SNAPSHOT.revision)
        assert score == pytest.approx(expected, abs=1e-5)


def test_layout_is_model_revision_params_partition_corpus_version(store, sample_rows):
    corpus = store.write_corpus("docs", sample_rows)
    result = store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), TextHashEncoder())
    params_hash = EmbeddingParams().params_hash
    assert result.version.path == (
        f"embeddings/test--model/{'a' * 40}/{params_hash}/docs/{corpus.corpus_version[:16]}.parquet"
    )
    table = pq.read_table(result.version.uri)
    vector_type = table.schema.field("embedding").type
    assert pa.types.is_fixed_size_list(vector_type)
    assert (vector_type.value_type, vector_type.list_size) == (pa.float32(), DIM)
    recorded = json.loads(table.schema.metadata[b"embedding_store"])
    assert recorded["revision"] == SNAPSHOT.revision and recorded["dim"] == DIM


def test_same_inputs_twice_encode_nothing_and_keep_one_version(store, sample_rows):
    encoder = TextHashEncoder()
    corpus = store.write_corpus("docs", sample_rows)
    first = store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), encoder)
    second = store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), encoder)
    assert (first.created, second.created) == (True, False)
    assert len(encoder.calls) == 1 and second.encoded_rows == 0
    assert second.version.version_id == first.version.version_id
    assert len(store.embedding_versions("docs")) == 1
    assert len(files_under(store.root, "embeddings")) == 1


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


def test_reuse_never_crosses_revisions_or_params(store, sample_rows):
    encoder = TextHashEncoder()
    corpus = store.write_corpus("docs", sample_rows)
    store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), encoder)
    store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(normalize_embeddings=True), encoder)
    bumped = ModelSnapshot(**{**SNAPSHOT.__dict__, "revision": "b" * 40})
    store.write_embeddings("docs", corpus, bumped, EmbeddingParams(), encoder)
    assert [len(call) for call in encoder.calls] == [30, 30, 30]


def test_revision_bump_adds_a_version_beside_the_old_one(store, sample_rows):
    corpus = store.write_corpus("docs", sample_rows)
    old = store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), TextHashEncoder()).version
    bumped = ModelSnapshot(**{**SNAPSHOT.__dict__, "revision": "b" * 40})
    new = store.write_embeddings("docs", corpus, bumped, EmbeddingParams(), TextHashEncoder(salt="v2")).version

    assert old.path != new.path and os.path.exists(old.uri) and os.path.exists(new.uri)
    assert [v.revision for v in store.embedding_versions("docs")] == ["a" * 40, "b" * 40]
    with store.connect() as con:
        assert con.execute("SELECT DISTINCT revision FROM embeddings").fetchall() == [("b" * 40,)]
    _, old_vectors = store.read_embeddings(old)
    np.testing.assert_array_equal(old_vectors[0], TextHashEncoder().vector(sample_rows.column("text")[0].as_py()))

    # Asking for the old inputs again re-activates the stored version without encoding.
    encoder = TextHashEncoder()
    again = store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), encoder)
    assert not again.created and encoder.calls == []
    with store.connect() as con:
        assert con.execute("SELECT DISTINCT revision FROM embeddings").fetchall() == [("a" * 40,)]


def test_changed_corpus_of_a_partition_gets_a_new_file_not_an_overwrite(store, sample_rows):
    first = store.write_corpus("docs", sample_rows.slice(0, 10))
    v1 = store.write_embeddings("docs", first, SNAPSHOT, EmbeddingParams(), TextHashEncoder()).version
    second = store.write_corpus("docs", sample_rows.slice(0, 12))
    v2 = store.write_embeddings("docs", second, SNAPSHOT, EmbeddingParams(), TextHashEncoder()).version
    assert os.path.dirname(v1.path) == os.path.dirname(v2.path) and v1.path != v2.path
    assert (v1.rows, v2.rows) == (10, 12)
    assert store.read_embeddings(v1)[1].shape == (10, DIM)
    with store.connect() as con:
        assert con.execute("SELECT count(*) FROM embeddings").fetchone() == (12,)


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
    bumped = ModelSnapshot(**{**SNAPSHOT.__dict__, "revision": "b" * 40})
    assert store.stale_partitions(bumped, params) == ["a", "b", "c"]
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
def test_bad_encoder_output_is_rejected_and_nothing_is_registered(store, sample_rows, bad_output, message):
    corpus = store.write_corpus("docs", sample_rows)
    with pytest.raises(ValueError, match=message):
        store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), bad_output)
    assert store.embedding_versions() == []
    assert files_under(store.root, "embeddings") == []


def test_invalid_corpus_tables_name_the_partition_row_and_id(store):
    with pytest.raises(ValueError, match=r"shard 'docs' repeats id 'x' at row 2"):
        store.write_corpus("docs", corpus_table(["x", "y", "x"], ["a", "b", "c"]))
    with pytest.raises(ValueError, match=r"shard 'docs' lacks column\(s\) \['text_sha256'\]"):
        store.write_corpus("docs", corpus_table(["x"], ["a"]).drop_columns(["text_sha256"]))
    assert store.corpus_partitions() == []


def test_int8_precision_is_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"precision 'int8' is not storable.*calibrate per call"):
        EmbeddingParams(precision="int8")


def test_binary_precision_is_stored_as_packed_int8_fixed_size_list(store, sample_rows):
    from embedding_core.quantization import quantize_embeddings

    encoder = TextHashEncoder(dim=16)
    snapshot = ModelSnapshot(**{**SNAPSHOT.__dict__, "dim": 16})
    corpus = store.write_corpus("docs", sample_rows)
    result = store.write_embeddings(
        "docs", corpus, snapshot, EmbeddingParams(precision="binary"),
        lambda texts: quantize_embeddings(encoder(texts), precision="binary"),
    )
    assert (result.version.dtype, result.version.dim) == ("int8", 16)
    table = pq.read_table(result.version.uri)
    vector_type = table.schema.field("embedding").type
    assert pa.types.is_fixed_size_list(vector_type)
    assert (vector_type.value_type, vector_type.list_size) == (pa.int8(), 2)
    _, vectors = store.read_embeddings(result.version)
    # sentence-transformers' binary: packed sign bits shifted into int8 (bits - 128).
    bits = np.packbits(encoder.vector(sample_rows.column("text")[0].as_py()) > 0)
    expected = (bits.astype(np.int16) - 128).astype(np.int8)
    np.testing.assert_array_equal(vectors[0], expected)
    with store.connect() as con:  # the float view shows float32 versions only
        assert con.execute("SELECT count(*) FROM embeddings").fetchone() == (0,)


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


def test_model_snapshots_are_recorded_and_the_latest_is_current(store):
    assert store.current_model_snapshot("test/model") is None
    store.record_model_snapshot(SNAPSHOT)
    bumped = ModelSnapshot(**{**SNAPSHOT.__dict__, "revision": "b" * 40, "prompts": {"query": "q: "},
                              "pooling": ("mean",)})
    store.record_model_snapshot(bumped)
    assert store.current_model_snapshot("test/model") == bumped
    store.record_model_snapshot(SNAPSHOT)
    assert store.current_model_snapshot("test/model") == SNAPSHOT


def test_remote_root_needs_a_local_catalog_path(tmp_path):
    with pytest.raises(ValueError, match=r"'mock:///bucket/store' is remote: pass catalog_path"):
        EmbeddingStore("mock:///bucket/store")


def test_remote_filesystem_root_writes_reads_and_reuses_through_pyarrow(tmp_path, sample_rows):
    store = EmbeddingStore("mock:///bucket/store", catalog_path=tmp_path / "catalog.duckdb")
    encoder = TextHashEncoder()
    corpus = store.write_corpus("docs", sample_rows)
    result = store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), encoder)
    assert result.version.uri.startswith("mock://bucket/store/embeddings/test--model/")
    assert not os.path.exists(tmp_path / "bucket")  # nothing landed on local disk
    ids, vectors = store.read_embeddings(result.version)
    np.testing.assert_array_equal(vectors[3], encoder.vector(sample_rows.column("text")[3].as_py()))

    more = store.write_corpus("more", sample_rows.slice(0, 10))
    reused = store.write_embeddings("more", more, SNAPSHOT, EmbeddingParams(), encoder)
    assert (reused.encoded_rows, reused.reused_rows) == (0, 10)
    with store.connect() as con:  # views read through the pyarrow filesystem
        assert con.execute("SELECT count(*) FROM embeddings").fetchone() == (40,)
        assert con.execute("SELECT count(*) FROM documents").fetchone() == (40,)
    hits = store.search(encoder.vector(sample_rows.column("text")[3].as_py()), SNAPSHOT.model)
    assert hits[0].id == sample_rows.column("id")[3].as_py()


def test_store_moved_to_another_folder_rebuilds_its_views(tmp_path, sample_rows):
    store = EmbeddingStore(tmp_path / "a")
    corpus = store.write_corpus("docs", sample_rows)
    store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), TextHashEncoder())
    os.rename(tmp_path / "a", tmp_path / "b")
    moved = EmbeddingStore(tmp_path / "b")
    with moved.connect() as con:
        assert con.execute("SELECT count(*) FROM embeddings").fetchone() == (30,)
        assert con.execute("SELECT count(*) FROM documents").fetchone() == (30,)


def test_models_of_different_dimensions_share_a_store_and_search_separately(store, sample_rows):
    corpus = store.write_corpus("docs", sample_rows)
    small = ModelSnapshot(**{**SNAPSHOT.__dict__, "model": "test/small", "model_key": "test/small", "dim": 4})
    store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), TextHashEncoder())
    store.write_embeddings("docs", corpus, small, EmbeddingParams(), TextHashEncoder(dim=4))
    with store.connect() as con:
        assert con.execute(
            "SELECT model, min(len(embedding)), count(*) FROM embeddings GROUP BY model ORDER BY model"
        ).fetchall() == [("test/model", DIM, 30), ("test/small", 4, 30)]
    target = sample_rows.column("text")[5].as_py()
    for snapshot, dim in ((SNAPSHOT, DIM), (small, 4)):
        hits = store.search(TextHashEncoder(dim=dim).vector(target), snapshot.model, top_k=1)
        assert hits[0].id == sample_rows.column("id")[5].as_py()
