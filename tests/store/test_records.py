"""The store's records and pure helpers."""

import pytest

from embedding_core.store import EmbeddingParams, corpus_table, text_sha256, vector_width


def test_int8_precision_is_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"precision 'int8' is not storable.*calibrate per call"):
        EmbeddingParams(precision="int8")


def test_params_hash_changes_with_every_parameter():
    hashes = {EmbeddingParams().params_hash, EmbeddingParams(normalize_embeddings=True).params_hash,
              EmbeddingParams(prompt="q: ").params_hash, EmbeddingParams(truncate_dim=4).params_hash,
              EmbeddingParams(precision="binary").params_hash}
    assert len(hashes) == 5 and all(len(h) == 16 for h in hashes)


def test_vector_width_is_dim_floats_or_packed_bytes():
    assert (vector_width("float32", 384), vector_width("binary", 384), vector_width("ubinary", 10)) == (384, 48, 2)


def test_corpus_table_hashes_each_text():
    table = corpus_table(["a", "b"], ["x", "y"])
    assert table.column("text_sha256").to_pylist() == [text_sha256("x"), text_sha256("y")]
    assert text_sha256("x") == "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
    with pytest.raises(ValueError, match="2 ids but 1 texts"):
        corpus_table(["a", "b"], ["x"])
