"""util: similarity matrices and semantic search against the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sentence_transformers import util as reference_util

from embedding_core import util


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
