"""Chunked embeddings in the store, with the bundled model: a row per chunk with its span,
reuse per chunk, the chunking settings as part of the version, search by document (best
chunk) or by chunk through the scan and the vector index, and `document_embeddings`."""

import numpy as np
import pytest

from embedding_core.chunking import ChunkingParams, chunk_strings, chunk_texts
from embedding_core.corpus import read_corpus_file
from embedding_core.snapshot import EncoderConfig
from embedding_core.store import (
    EmbeddingParams,
    EmbeddingStore,
    corpus_table,
    text_sha256,
    version_key,
)
from tests.store.conftest import SAMPLE_CORPUS
from tests.store.fakes import SNAPSHOT, TextHashEncoder

WINDOW, OVERLAP = 128, 32


@pytest.fixture(scope="module")
def config(bundled_model_path) -> EncoderConfig:
    return EncoderConfig(bundled_model_path, chunk_tokens=WINDOW, chunk_overlap=OVERLAP, normalize_embeddings=True)


@pytest.fixture(scope="module")
def session(config):
    snapshot = config.resolve()
    with config.session(snapshot, config.params(snapshot)) as session:
        yield session


@pytest.fixture(scope="module")
def documents(session) -> tuple[list[str], list[str]]:
    """ids and texts: 8 texts longer than the model's 256 tokens and 12 short ones."""
    table = read_corpus_file(SAMPLE_CORPUS).table
    texts = table.column("text").to_pylist()
    lengths = model_of(session).token_lengths(texts)
    long = [i for i, n in enumerate(lengths) if n > 300][:8]
    short = [i for i, n in enumerate(lengths) if n < 100][:12]
    picked = long + short
    return [f"doc-{i}" for i in picked], [texts[i] for i in picked]


def model_of(session):
    return session.config.load(session.snapshot)


def write(store, session, partition, ids, texts, params=None):
    params = params or session.params
    corpus = store.write_corpus(partition, corpus_table(ids, texts))
    return store.write_embeddings(partition, corpus, session.snapshot, params, session.encode,
                                  chunker=session.chunk if params.chunked else None)


def test_long_texts_are_stored_as_chunks_reused_per_chunk_and_found_by_document(tmp_path, session, documents):
    ids, texts = documents
    store = EmbeddingStore(tmp_path / "store")
    store.record_model_snapshot(session.snapshot)
    model = session.snapshot.model
    result = write(store, session, "docs", ids, texts)
    chunks = chunk_texts(model_of(session), texts, ChunkingParams(WINDOW, OVERLAP))
    assert result.created and result.version.rows == len(chunks) == result.encoded_rows > len(texts) + 16
    assert result.version.params["chunk_tokens"] == WINDOW and result.version.params["chunk_overlap"] == OVERLAP

    with store.connect() as con:
        rows = con.execute("SELECT id, chunk, char_start, char_end, text_sha256, embedding FROM embeddings "
                           "ORDER BY id, chunk").fetchall()
    expected = sorted((ids[c.document], c.chunk, c.char_start, c.char_end) for c in chunks)
    assert [row[:4] for row in rows] == expected
    text_of = dict(zip(ids, texts, strict=True))
    # Each row's hash is its chunk's text, a short text's chunk is the whole text.
    assert all(sha == text_sha256(text_of[id_][start:end]) for id_, _, start, end, sha, _ in rows)
    short = [row for row in rows if row[0] == ids[-1]]
    assert len(short) == 1 and short[0][2:5] == (0, len(texts[-1]), text_sha256(texts[-1]))
    table, vectors = store.read_embeddings(result.version)
    assert table.column_names == ["id", "text_sha256", "chunk", "char_start", "char_end"]
    assert sorted(zip(*(table.column(n).to_pylist() for n in ("id", "chunk", "char_start", "char_end")))) == expected
    assert np.array_equal(vectors[0], np.array(rows[[r[:2] for r in rows].index((table.column("id")[0].as_py(), 0))][5],
                                                dtype=np.float32))
    # The vectors are those of the chunks' texts.
    sample = rows[:: max(1, len(rows) // 6)]
    fresh = session.encode([text_of[id_][start:end] for id_, _, start, end, _, _ in sample])
    assert np.allclose(np.array([row[5] for row in sample]), fresh, atol=1e-5)

    # Reuse per chunk: a copy with one long text grown at its end encodes only what changed.
    grown = texts[0] + " This sentence was appended to the end of the first document, after everything else."
    before = set(chunk_strings(texts, chunks))
    grown_chunks = chunk_strings([grown], chunk_texts(model_of(session), [grown], ChunkingParams(WINDOW, OVERLAP)))
    copy = write(store, session, "copy", ids[:3], [grown, *texts[1:3]])
    new = {piece for piece in grown_chunks if piece not in before}
    assert 0 < copy.encoded_rows == len(new) < len(grown_chunks)
    assert copy.reused_rows == copy.version.rows - len(new)

    # Search returns documents, each by its best chunk, with the chunk's span and text.
    target = next(c for c in chunks if c.document == 2 and c.chunk == 2)
    query = session.encode([texts[2][target.char_start:target.char_end]])[0]
    hits = store.search(query, model, top_k=5)
    assert len({(h.partition, h.id) for h in hits}) == 5
    assert (hits[0].id, hits[0].chunk, hits[0].char_start, hits[0].char_end) == (ids[2], 2, target.char_start,
                                                                                 target.char_end)
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    texts_of = {"docs": text_of, "copy": {**text_of, ids[0]: grown}}
    assert all(h.text == texts_of[h.partition][h.id][h.char_start:h.char_end] for h in hits)
    chunk_hits = store.search(query, model, top_k=5, by_chunk=True)
    assert chunk_hits[0] == hits[0]
    assert [h.id for h in chunk_hits].count(ids[2]) >= 2  # its neighbouring, overlapping chunks

    # Through the vector index: the same documents, still one hit per document.
    (build,) = store.build_vector_indexes()
    assert build.record.rows == result.version.rows + copy.version.rows
    searcher = store.searcher(model)
    assert searcher.uses_index
    indexed = searcher.search(query, 5)
    assert [(h.partition, h.id, h.chunk) for h in indexed] == [(h.partition, h.id, h.chunk) for h in hits]
    assert indexed[0].text == hits[0].text
    assert [(h.id, h.chunk) for h in store.search(query, model, top_k=5, by_chunk=True)] == \
           [(h.id, h.chunk) for h in chunk_hits]

    # document_embeddings: a vector per document, the normalized mean of its chunks.
    with store.connect() as con:
        documents_view = {row[0]: (row[1], np.array(row[2])) for row in con.execute(
            "SELECT id, chunks, embedding FROM document_embeddings WHERE partition = 'docs'").fetchall()}
    assert set(documents_view) == set(ids)
    for id_ in (ids[0], ids[-1]):
        vectors = np.array([row[5] for row in rows if row[0] == id_])
        mean = vectors.mean(axis=0)
        count, vector = documents_view[id_]
        assert count == len(vectors)
        assert np.allclose(vector, mean / np.linalg.norm(mean), atol=1e-5)


def test_changing_the_chunking_makes_partitions_stale_and_keeps_every_version(tmp_path, session, documents):
    ids, texts = documents
    store = EmbeddingStore(tmp_path / "store")
    store.record_model_snapshot(session.snapshot)
    chunked = session.params
    plain = EmbeddingParams(**{**chunked.__dict__, "chunk_tokens": None, "chunk_overlap": None})
    assert plain.params_hash != chunked.params_hash
    assert "chunk_tokens" not in plain.to_json()  # unchunked params hash as before chunking existed
    first = write(store, session, "docs", ids, texts, chunked)
    assert store.stale_partitions(session.snapshot, chunked) == []
    second = write(store, session, "docs", ids, texts, plain)
    assert second.version.rows == len(texts) and second.created
    assert store.read_embeddings(second.version)[0].column_names == ["id", "text_sha256"]
    # Each chunking is a version set of its own: the chunked one serves until the other is promoted.
    assert store.stale_partitions(session.snapshot, chunked) == []
    assert [v.version_id for v in store.embedding_versions("docs")] == [first.version.version_id,
                                                                        second.version.version_id]
    store.promote(session.snapshot.model, version_key(session.snapshot.revision, plain.params_hash))
    with store.connect() as con:  # a text embedded whole: chunk 0, no span
        assert con.execute("SELECT DISTINCT chunk, char_start, char_end FROM embeddings").fetchall() == [(0, None, None)]
    hits = store.search(session.encode([texts[0]])[0], session.snapshot.model, top_k=1)
    assert (hits[0].id, hits[0].text, hits[0].char_start) == (ids[0], texts[0], None)
    # Back to the chunked settings: the first version again, nothing encoded.
    again = write(store, session, "docs", ids, texts, chunked)
    assert (again.version.version_id, again.encoded_rows) == (first.version.version_id, 0)


def test_bad_chunk_settings_fail_naming_both_values(bundled_model_path, session):
    with pytest.raises(ValueError, match="EMBEDDING_CHUNK_OVERLAP=64 must be smaller than EMBEDDING_CHUNK_TOKENS=64"):
        EncoderConfig(bundled_model_path, chunk_tokens=64, chunk_overlap=64)
    too_long = EncoderConfig(bundled_model_path, chunk_tokens=512, chunk_overlap=16)
    with pytest.raises(ValueError, match="EMBEDDING_CHUNK_TOKENS=512 is larger than the model's max_seq_length "
                                         r"256 \(EMBEDDING_CHUNK_OVERLAP=16\)"):
        too_long.params(session.snapshot)
    with pytest.raises(ValueError, match="chunk_tokens=128 and chunk_overlap=None: set both"):
        EmbeddingParams(chunk_tokens=128)


def test_chunked_params_without_a_chunker_store_nothing(tmp_path, session, documents):
    ids, texts = documents
    store = EmbeddingStore(tmp_path / "store")
    corpus = store.write_corpus("docs", corpus_table(ids, texts))
    with pytest.raises(ValueError, match="chunk texts .*pass a chunker"):
        store.write_embeddings("docs", corpus, session.snapshot, session.params, session.encode)
    assert store.embedding_versions() == []


def test_a_store_of_older_code_gets_the_chunk_columns_and_keeps_its_rows(tmp_path):
    """A store made before chunking (no chunk columns, views version 2) opens with them:
    old rows read as chunk 0 with no span, and new rows can be written."""
    root = tmp_path / "store"
    store = EmbeddingStore(root)
    encoder = TextHashEncoder()
    corpus = store.write_corpus("a", corpus_table(["1", "2"], ["first text", "second text"]))
    store.write_embeddings("a", corpus, SNAPSHOT, EmbeddingParams(), encoder)
    with store._catalog.connection(read_only=False) as con:  # back to what older code made
        for table in ("embedding_rows", "embedding_rows_int8", "embedding_rows_uint8"):
            for column in ("chunk", "char_start", "char_end"):
                con.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        con.execute("CREATE OR REPLACE VIEW embeddings AS SELECT r.id, v.partition, v.model, r.embedding "
                    "FROM current_embedding_versions v JOIN embedding_rows r ON r.write_id = v.write_id")
        con.execute("DROP VIEW document_embeddings")
        con.execute("CREATE OR REPLACE VIEW store_schema AS SELECT 2 AS version")
    reopened = EmbeddingStore(root)
    with reopened.connect() as con:
        assert con.execute("SELECT id, chunk, char_start FROM embeddings ORDER BY id").fetchall() == [
            ("1", 0, None), ("2", 0, None)]
        assert con.execute("SELECT count(*) FROM document_embeddings").fetchone() == (2,)
    corpus = reopened.write_corpus("b", corpus_table(["3"], ["third text"]))
    reopened.write_embeddings("b", corpus, SNAPSHOT, EmbeddingParams(), encoder)
    assert [h.id for h in reopened.search(encoder.vector("third text"), SNAPSHOT.model, top_k=1)] == ["3"]
