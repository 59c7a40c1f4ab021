"""Similarity functions and semantic search over embeddings."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from enum import Enum
from typing import Any

import numpy as np
import torch

from embedding_core.quantization import quantize_embeddings

__all__ = [
    "cos_sim",
    "dot_score",
    "euclidean_sim",
    "manhattan_sim",
    "pairwise_cos_sim",
    "pairwise_dot_score",
    "pairwise_euclidean_sim",
    "pairwise_manhattan_sim",
    "normalize_embeddings",
    "truncate_embeddings",
    "SimilarityFunction",
    "semantic_search",
    "quantize_embeddings",
    "SIMILARITY_FUNCTIONS",
]


def _dense(tensor: torch.Tensor) -> torch.Tensor:
    # Scores of sparse inputs equal those of their dense form; the dense kernels serve both.
    return tensor.to_dense() if tensor.is_sparse else tensor


def _to_tensor(values: Any) -> torch.Tensor:
    """``values`` as a 2-D floating tensor: a 1-D vector becomes one row, a sparse tensor
    dense, and float16/bfloat16 float32 (a half-precision matmul rounds nearby scores into ties)."""
    if isinstance(values, torch.Tensor):
        tensor = _dense(values)
    elif isinstance(values, list) and values and isinstance(values[0], torch.Tensor):
        tensor = torch.stack([_dense(value) for value in values])
    else:
        tensor = torch.as_tensor(np.asarray(values))
    if tensor.dim() == 1:
        tensor = tensor.unsqueeze(0)
    if not tensor.is_floating_point() or torch.finfo(tensor.dtype).bits < 32:
        tensor = tensor.float()
    return tensor


def _same_device(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return a, b.to(a.device)


def normalize_embeddings(embeddings: Any) -> torch.Tensor:
    """Scale each row to unit L2 norm (rows of zeros stay zeros); a sparse input stays sparse."""
    if isinstance(embeddings, torch.Tensor) and embeddings.is_sparse:
        dense = embeddings.to_dense()
        return torch.nn.functional.normalize(dense.float(), p=2, dim=-1).to(dense.dtype).to_sparse()
    return torch.nn.functional.normalize(_to_tensor(embeddings), p=2, dim=1)


def truncate_embeddings(embeddings: np.ndarray | torch.Tensor, truncate_dim: int | None) -> np.ndarray | torch.Tensor:
    """The first ``truncate_dim`` dimensions of each embedding (``None``: all of them).

    Example::

        >>> truncate_embeddings(np.ones((2, 384)), 128).shape
        (2, 128)
    """
    return embeddings[..., :truncate_dim]


def cos_sim(a: Any, b: Any) -> torch.Tensor:
    """Cosine similarity of every row of ``a`` with every row of ``b``: a ``[len(a), len(b)]`` tensor.

    Example::

        >>> cos_sim([[1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]).tolist()
        [[1.0, 0.0]]
    """
    a_t, b_t = _same_device(_to_tensor(a), _to_tensor(b))
    return normalize_embeddings(a_t) @ normalize_embeddings(b_t).T


def dot_score(a: Any, b: Any) -> torch.Tensor:
    """Dot product of every row of ``a`` with every row of ``b``."""
    a_t, b_t = _same_device(_to_tensor(a), _to_tensor(b))
    return a_t @ b_t.T


def euclidean_sim(a: Any, b: Any) -> torch.Tensor:
    """Negative Euclidean distance between every pair of rows (higher is more similar)."""
    a_t, b_t = _same_device(_to_tensor(a), _to_tensor(b))
    return -torch.cdist(a_t, b_t, p=2.0)


def manhattan_sim(a: Any, b: Any) -> torch.Tensor:
    """Negative Manhattan distance between every pair of rows (higher is more similar)."""
    a_t, b_t = _same_device(_to_tensor(a), _to_tensor(b))
    return -torch.cdist(a_t, b_t, p=1.0)


def pairwise_cos_sim(a: Any, b: Any) -> torch.Tensor:
    """Cosine similarity of ``a[i]`` with ``b[i]`` for each ``i``."""
    a_t, b_t = _same_device(_to_tensor(a), _to_tensor(b))
    return (normalize_embeddings(a_t) * normalize_embeddings(b_t)).sum(dim=-1)


def pairwise_dot_score(a: Any, b: Any) -> torch.Tensor:
    """Dot product of ``a[i]`` with ``b[i]`` for each ``i``."""
    a_t, b_t = _same_device(_to_tensor(a), _to_tensor(b))
    return (a_t * b_t).sum(dim=-1)


def pairwise_euclidean_sim(a: Any, b: Any) -> torch.Tensor:
    a_t, b_t = _same_device(_to_tensor(a), _to_tensor(b))
    return -torch.linalg.vector_norm(a_t - b_t, ord=2, dim=-1)


def pairwise_manhattan_sim(a: Any, b: Any) -> torch.Tensor:
    a_t, b_t = _same_device(_to_tensor(a), _to_tensor(b))
    return -(a_t - b_t).abs().sum(dim=-1)


# similarity_fn_name -> (matrix function, pairwise function)
SIMILARITY_FUNCTIONS: dict[str, tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]] = {
    "cosine": (cos_sim, pairwise_cos_sim),
    "dot": (dot_score, pairwise_dot_score),
    "euclidean": (euclidean_sim, pairwise_euclidean_sim),
    "manhattan": (manhattan_sim, pairwise_manhattan_sim),
}
SIMILARITY_ALIASES = {"cos_sim": "cosine", "dot_score": "dot", "dot_product": "dot"}


class SimilarityFunction(Enum):
    """The ``similarity_fn_name`` values, as sentence-transformers' enum names them
    (``SimilarityFunction.COSINE``, ``DOT_PRODUCT``/``DOT``, ``EUCLIDEAN``, ``MANHATTAN``)."""

    COSINE = "cosine"
    DOT_PRODUCT = "dot"
    DOT = "dot"
    EUCLIDEAN = "euclidean"
    MANHATTAN = "manhattan"

    @staticmethod
    def to_similarity_fn(similarity_function: str | SimilarityFunction) -> Callable[..., torch.Tensor]:
        """The score-matrix function of a name or member, e.g. ``cos_sim`` for ``"cosine"``."""
        return SIMILARITY_FUNCTIONS[SimilarityFunction(similarity_function).value][0]

    @staticmethod
    def to_similarity_pairwise_fn(similarity_function: str | SimilarityFunction) -> Callable[..., torch.Tensor]:
        """The pairwise function of a name or member, e.g. ``pairwise_cos_sim`` for ``"cosine"``."""
        return SIMILARITY_FUNCTIONS[SimilarityFunction(similarity_function).value][1]

    @staticmethod
    def possible_values() -> list[str]:
        return [member.value for member in SimilarityFunction]


def semantic_search(
    query_embeddings: Any,
    corpus_embeddings: Any,
    query_chunk_size: int = 100,
    corpus_chunk_size: int = 500_000,
    top_k: int = 10,
    score_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cos_sim,
) -> list[list[dict[str, int | float]]]:
    """Top-``top_k`` corpus entries for each query, best first: ``[{"corpus_id", "score"}, ...]``.

    The corpus is scored in chunks of ``corpus_chunk_size`` rows so a large corpus never
    needs a full ``queries x corpus`` score matrix in memory.
    """
    if top_k <= 0:
        raise ValueError(f"top_k must be positive, got {top_k}.")
    queries = _to_tensor(query_embeddings)
    corpus = _to_tensor(corpus_embeddings).to(queries.device)
    heaps: list[list[tuple[float, int]]] = [[] for _ in range(len(queries))]
    for q_start in range(0, len(queries), query_chunk_size):
        query_chunk = queries[q_start : q_start + query_chunk_size]
        for c_start in range(0, len(corpus), corpus_chunk_size):
            scores = score_function(query_chunk, corpus[c_start : c_start + corpus_chunk_size])
            k = min(top_k, scores.shape[1])
            values, indices = torch.topk(scores, k, dim=1, largest=True, sorted=False)
            for row, (row_values, row_indices) in enumerate(zip(values.tolist(), indices.tolist())):
                heap = heaps[q_start + row]
                for score, index in zip(row_values, row_indices):
                    item = (score, c_start + index)
                    if len(heap) < top_k:
                        heapq.heappush(heap, item)
                    else:
                        heapq.heappushpop(heap, item)
    return [
        [{"corpus_id": corpus_id, "score": score} for score, corpus_id in sorted(heap, key=lambda x: (-x[0], x[1]))]
        for heap in heaps
    ]
