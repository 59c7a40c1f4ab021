"""util: similarity matrices, semantic search and quantization against the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sentence_transformers import util as reference_util
from sentence_transformers.util import quantize_embeddings as reference_quantize

from embedding_core import quantize_embeddings, util


@pytest.fixture(scope="module")
def vectors() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return rng.normal(size=(23, 48)).astype(np.float32), rng.normal(size=(1000, 48)).astype(np.float32)


def test_cos_sim_and_dot_score_match_reference(vectors):
    queries, corpus = vectors
    torch.testing.assert_close(util.cos_sim(queries, corpus), reference_util.cos_sim(queries, corpus))
    torch.testing.assert_close(util.dot_score(queries, corpus), reference_util.dot_score(queries, corpus))
    assert util.cos_sim(queries[0], corpus).shape == (1, 1000)


def test_semantic_search_with_chunked_corpus_matches_reference(vectors):
    queries, corpus = vectors
    ours = util.semantic_search(queries, corpus, top_k=7, corpus_chunk_size=97, query_chunk_size=5)
    theirs = reference_util.semantic_search(torch.from_numpy(queries), torch.from_numpy(corpus), top_k=7)
    assert [[hit["corpus_id"] for hit in hits] for hits in ours] == [
        [hit["corpus_id"] for hit in hits] for hits in theirs
    ]
    np.testing.assert_allclose(
        [[h["score"] for h in hits] for hits in ours], [[h["score"] for h in hits] for hits in theirs], atol=1e-6
    )
    top = util.semantic_search(corpus[:3], corpus, top_k=1, score_function=util.dot_score)
    assert all(hits[0]["corpus_id"] == i for i, hits in enumerate(top))


def test_semantic_search_rejects_bad_top_k(vectors):
    with pytest.raises(ValueError, match="top_k"):
        util.semantic_search(vectors[0], vectors[1], top_k=0)


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_quantize_matches_reference(vectors, precision):
    _, corpus = vectors
    ours = quantize_embeddings(corpus, precision)
    theirs = reference_quantize(corpus, precision=precision)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)


def test_quantize_with_ranges_or_calibration(vectors):
    queries, corpus = vectors
    ranges = np.vstack([corpus.min(axis=0), corpus.max(axis=0)])
    by_ranges = quantize_embeddings(queries, "int8", ranges=ranges)
    by_calibration = quantize_embeddings(queries, "int8", calibration_embeddings=corpus)
    np.testing.assert_array_equal(by_ranges, by_calibration)
    np.testing.assert_array_equal(by_ranges, reference_quantize(queries, "int8", calibration_embeddings=corpus))
    single = quantize_embeddings(queries[0], "uint8", ranges=ranges)
    assert single.shape == (48,) and single.dtype == np.uint8


def test_binary_packs_to_ceil_dim_over_eight():
    vectors = np.random.default_rng(1).normal(size=(4, 13)).astype(np.float32)
    packed = quantize_embeddings(vectors, "ubinary")
    assert packed.shape == (4, 2)
    unpacked = np.unpackbits(packed, axis=1)[:, :13]
    np.testing.assert_array_equal(unpacked, (vectors > 0).astype(np.uint8))


def test_quantize_errors_are_clear():
    with pytest.raises(ValueError, match="single embedding"):
        quantize_embeddings(np.ones(8, dtype=np.float32), "int8")
    with pytest.raises(ValueError, match="precision 'fp8'"):
        quantize_embeddings(np.ones((2, 8), dtype=np.float32), "fp8")
    with pytest.raises(TypeError, match="must be floats"):
        quantize_embeddings(np.ones((2, 8), dtype=np.int8), "int8")
