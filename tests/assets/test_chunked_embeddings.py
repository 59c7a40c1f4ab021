"""Chunking through the pipeline: EMBEDDING_CHUNK_TOKENS / EMBEDDING_CHUNK_OVERLAP give a row
per token window, every check passes (nothing is cut), the metadata counts documents and
chunks, search finds a long document by a sentence beyond its 256th token, and the
unchunked version stays stored beside it."""

from dagster import AssetKey

from embedding_assets.backfill import landing_partitions, materialize_selection
from embedding_assets.definitions import definitions_from_env
from embedding_core.chunking import ChunkingParams, chunk_texts
from embedding_core.hub import DEFAULT_MODEL_NAME
from tests.assets.conftest import (
    LONG_DOCS,
    ROWS_PER_SHARD,
    append_long_docs,
    materialize_everything,
)
from tests.assets.test_checks import DOCS_BUCKET, EMBEDDINGS_CHECKS, embeddings_check_evaluations

DOCS = "python_docs.jsonl"


def test_chunked_embeddings_split_long_documents_and_pass_every_check(tmp_path, landing, instance):
    rows = append_long_docs(landing)
    env = {"EMBEDDING_STORE_ROOT": str(tmp_path / "store"), "EMBEDDING_LANDING_DIR": str(landing),
           "EMBEDDING_CHUNK_TOKENS": "128", "EMBEDDING_CHUNK_OVERLAP": "32"}
    defs = definitions_from_env(env)
    results = materialize_everything(defs, instance)
    evaluations = embeddings_check_evaluations(results, EMBEDDINGS_CHECKS - {"unit_norm"})  # not normalized
    assert {key: e.passed for key, e in evaluations.items() if not e.passed} == {}
    fit = evaluations["texts_fit_max_seq_length", DOCS_BUCKET].metadata
    assert {key: fit[key].value for key in ("texts_over_max_seq_length", "truncated_texts", "chunk_tokens",
                                            "chunk_overlap", "texts")} == {
        "texts_over_max_seq_length": len(LONG_DOCS), "truncated_texts": 0, "chunk_tokens": 128,
        "chunk_overlap": 32, "texts": rows}

    store = defs.resources["embedding_store"].open()
    version = store.current_embedding_version(DOCS, DEFAULT_MODEL_NAME)
    corpus = store.read_corpus(store.corpus_version(DOCS))
    texts = corpus.column("text").to_pylist()
    config = defs.resources["encoder"].open()
    snapshot = store.current_model_snapshot(DEFAULT_MODEL_NAME)
    model = config.load(snapshot)
    chunks = chunk_texts(model, texts, ChunkingParams(128, 32))
    assert version.rows == len(chunks) > rows and version.params["chunk_tokens"] == 128
    (event,) = [e for r in results for e in r.get_asset_materialization_events()
                if e.asset_key == AssetKey("embeddings") and e.partition == DOCS_BUCKET]
    metadata = event.materialization.metadata
    assert {key: metadata[key].value for key in ("documents", "chunks", "truncated_texts", "dagster/row_count")} == {
        "documents": rows, "chunks": len(chunks), "truncated_texts": 0, "dagster/row_count": len(chunks)}
    assert [c.name for c in metadata["dagster/column_schema"].value.columns] == [
        "id", "text_sha256", "chunk", "char_start", "char_end", "embedding"]

    # A sentence from beyond the 256th token of the longest document finds it, by its chunk.
    long_text = texts[corpus.column("id").to_pylist().index("pydoc-formatstrings-11")]
    cut = model.tokenizer(long_text, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"][300][0]
    sentence = long_text[cut:].split(". ")[1]
    query = model.encode([sentence])[0]
    hits = store.search(query, snapshot.model, top_k=3)
    start = long_text.index(sentence, cut)
    assert hits[0].id == "pydoc-formatstrings-11" and len({(h.partition, h.id) for h in hits}) == 3
    # The best chunk holds (some of) the sentence, and its text is that span of the document.
    assert hits[0].char_start < start + len(sentence) and hits[0].char_end > start
    assert hits[0].text == long_text[hits[0].char_start:hits[0].char_end]

    # Chunking off again: the unchunked version is written beside the chunked one, which
    # keeps serving until the unchunked one is promoted.
    plain = definitions_from_env({**env, "EMBEDDING_CHUNK_TOKENS": ""})
    assert all(r.success for r in materialize_selection(plain, instance, [AssetKey("embeddings")],
                                                        landing_partitions()))
    assert [v.rows for v in store.embedding_versions(DOCS)] == [len(chunks), rows]
    assert store.current_embedding_version(DOCS, DEFAULT_MODEL_NAME).rows == len(chunks)
    (candidate,) = [s for s in store.version_sets(DEFAULT_MODEL_NAME) if not s.serving]
    store.promote(DEFAULT_MODEL_NAME, candidate.key, reason="chunking off")
    assert store.current_embedding_version(DOCS, DEFAULT_MODEL_NAME).rows == ROWS_PER_SHARD + len(LONG_DOCS)


def test_a_chunk_window_past_the_model_limit_fails_the_model_snapshot_naming_both(tmp_path, landing, instance):
    defs = definitions_from_env({"EMBEDDING_STORE_ROOT": str(tmp_path / "store"), "EMBEDDING_LANDING_DIR": str(landing),
                                 "EMBEDDING_CHUNK_TOKENS": "512", "EMBEDDING_CHUNK_OVERLAP": "16"})
    result = defs.resolve_job_def("snapshot_model").execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert ("EMBEDDING_CHUNK_TOKENS=512 is larger than the model's max_seq_length 256 (EMBEDDING_CHUNK_OVERLAP=16)"
            in failure.step_failure_data.error.to_string())
    assert defs.resources["embedding_store"].open().current_model_snapshots() == []  # nothing recorded
