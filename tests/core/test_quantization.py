"""quantization: int8, uint8, binary and ubinary against the reference."""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers.util import quantize_embeddings as reference_quantize

from embedding_core import quantize_embeddings


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
