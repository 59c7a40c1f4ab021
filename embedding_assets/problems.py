"""What a stored embeddings shard must satisfy: plain functions of the stored data.

Each returns None, or a sentence naming what is wrong, so it can be called on any vectors::

    ids, vectors = store.read_embeddings(version)
    unit_norm_problem(vectors, ids.column("id").to_pylist())   # None, or what is wrong

`embedding_assets.checks` runs them as the asset checks of `embeddings`, one result per
partition.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from embedding_core.store import EmbeddingParams, EmbeddingVersion, ModelSnapshot, vector_width

UNIT_NORM_TOLERANCE = 1e-4
SHOWN_IDS = 5


def rows_match_corpus_problem(stored_ids: Sequence[str], corpus_ids: Sequence[str]) -> str | None:
    """What is wrong when the stored ids are not exactly the corpus shard's ids, in order."""
    if list(stored_ids) == list(corpus_ids):
        return None
    if len(stored_ids) != len(corpus_ids):
        return f"{len(stored_ids)} stored rows for {len(corpus_ids)} corpus rows"
    first = next(row for row, (stored, expected) in enumerate(zip(stored_ids, corpus_ids, strict=True))
                 if stored != expected)
    return f"row {first} holds id {stored_ids[first]!r}, the corpus has {corpus_ids[first]!r} there"


def chunk_rows_problem(stored_ids: Sequence[str], chunks: Sequence[int], corpus_ids: Sequence[str]) -> str | None:
    """What is wrong when a chunked version's rows are not each corpus row's chunks 0, 1, ...
    one after another, in corpus order."""
    for row, (id_, chunk) in enumerate(zip(stored_ids, chunks, strict=True)):
        expected = 0 if row == 0 or stored_ids[row - 1] != id_ else chunks[row - 1] + 1
        if chunk != expected:
            return f"row {row} is chunk {chunk} of id {id_!r}; expected chunk {expected}"
    return rows_match_corpus_problem([id_ for id_, chunk in zip(stored_ids, chunks, strict=True) if chunk == 0],
                                     corpus_ids)


def dim_problem(vectors: np.ndarray, recorded_dim: int, precision: str, expected_dim: int) -> str | None:
    """What is wrong when vectors or their catalog row do not have the model's dimension
    (`expected_dim`, after truncate_dim): `expected_dim` floats per row for float32,
    ``ceil(expected_dim / 8)`` bytes for binary precisions."""
    width = vector_width(precision, expected_dim)
    if recorded_dim != expected_dim:
        return f"catalog records dim {recorded_dim}, the model snapshot gives {expected_dim}"
    if vectors.ndim != 2 or vectors.shape[1] != width:
        return (f"vectors have shape {vectors.shape}; dim {expected_dim} at {precision} "
                f"needs {width} values per row")
    return None


def non_finite_problem(vectors: np.ndarray, ids: Sequence[str]) -> str | None:
    """What is wrong when some float vectors hold NaN or infinity."""
    if vectors.dtype.kind != "f":
        return None
    bad_rows = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if not len(bad_rows):
        return None
    return (f"{len(bad_rows)} of {len(vectors)} vectors hold NaN or inf, ids "
            f"{[ids[row] for row in bad_rows[:SHOWN_IDS]]}")


def unit_norm_problem(vectors: np.ndarray, ids: Sequence[str],
                      tolerance: float = UNIT_NORM_TOLERANCE) -> str | None:
    """What is wrong when float vectors are not of unit length (within `tolerance`)."""
    errors = np.abs(np.linalg.norm(vectors.astype(np.float64), axis=1) - 1.0)
    bad_rows = np.flatnonzero(~(errors <= tolerance))
    if not len(bad_rows):
        return None
    worst = int(bad_rows[np.argmax(errors[bad_rows])])
    return (f"{len(bad_rows)} of {len(vectors)} vectors are off unit norm by more than "
            f"{tolerance:g}; worst id {ids[worst]!r} has norm "
            f"{np.linalg.norm(vectors[worst].astype(np.float64)):.6f}")


@dataclass(frozen=True)
class StoredShard:
    """One stored embeddings version read back, and what it must match."""

    version: EmbeddingVersion
    ids: list[str]
    vectors: np.ndarray
    corpus_ids: list[str]
    snapshot: ModelSnapshot
    params: EmbeddingParams
    chunks: list[int] | None = None  # a chunked version's chunk numbers, row by row

    @property
    def expected_dim(self) -> int:
        return self.params.truncate_dim or self.snapshot.dim


@dataclass(frozen=True)
class ShardCheck:
    """A check of one stored shard. `applies` says whether it means anything under the
    encoding parameters; `find_problem` returns None or what is wrong."""

    name: str
    description: str
    find_problem: Callable[[StoredShard], str | None]
    applies: Callable[[EmbeddingParams], bool] = lambda params: True


SHARD_CHECKS: tuple[ShardCheck, ...] = (
    ShardCheck(
        "rows_match_corpus",
        "One stored vector for every row of the corpus shard, ids in corpus order (chunked: "
        "one per chunk, a row's chunks numbered 0, 1, ... one after another).",
        lambda shard: (rows_match_corpus_problem(shard.ids, shard.corpus_ids) if shard.chunks is None
                       else chunk_rows_problem(shard.ids, shard.chunks, shard.corpus_ids)),
    ),
    ShardCheck(
        "dim_matches_model",
        "Vectors have the model snapshot's dimension after truncate_dim (binary precisions: "
        "ceil(dim / 8) bytes), and the catalog records that dimension.",
        lambda shard: dim_problem(shard.vectors, shard.version.dim, shard.params.precision,
                                  shard.expected_dim),
    ),
    ShardCheck(
        "vectors_finite",
        "No stored vector holds NaN or infinity.",
        lambda shard: non_finite_problem(shard.vectors, shard.ids),
    ),
    ShardCheck(
        "unit_norm",
        f"With normalize_embeddings on (float32), every vector has length 1 within "
        f"{UNIT_NORM_TOLERANCE:g}. Not evaluated otherwise (the run shows it skipped).",
        lambda shard: unit_norm_problem(shard.vectors, shard.ids),
        applies=lambda params: params.normalize_embeddings and params.precision == "float32",
    ),
)
