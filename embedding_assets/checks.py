"""Asset checks of `embeddings`: what a stored version must satisfy, each a named check.

`encodes_canary` is the check `model_snapshot` runs on the model it pins. Of the
embeddings checks, the first four read back the file a materialization just stored and run in the same
step (`SHARD_CHECKS`, declared as the asset's check specs); the fifth,
`embeddings_match_model`, re-encodes a few random stored texts with the model and runs
as its own check. Each shard check is a plain function of the stored data, so it can be
called on any vectors, e.g.::

    ids, vectors = store.read_embeddings(version)
    unit_norm_problem(vectors, ids.column("id").to_pylist())   # None, or what is wrong
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetKey, asset_check

from embedding_assets.resources import EmbeddingStoreResource, EncoderResource
from embedding_core.snapshot import SnapshotNotCurrentError, require_current_snapshot
from embedding_core.store import EmbeddingParams, EmbeddingVersion, ModelSnapshot, vector_width

SAMPLE_ROWS_PER_PARTITION = 4
MIN_COSINE = 0.9999
MIN_BIT_AGREEMENT = 0.98
UNIT_NORM_TOLERANCE = 1e-4
SHOWN_IDS = 5
ENCODES_CHECK = "encodes_canary"
CANARY_TEXTS = ["A man is eating food.", "The quick brown fox jumps over the lazy dog."]


def encodes_canary(model, dim: int) -> AssetCheckResult:
    """Whether ``model`` encodes the canary sentences to finite vectors of dimension ``dim``."""
    canary = np.asarray(model.encode(CANARY_TEXTS, show_progress_bar=False))
    encodes = canary.shape == (len(CANARY_TEXTS), dim) and bool(np.isfinite(canary).all())
    return AssetCheckResult(
        check_name=ENCODES_CHECK, passed=encodes,
        metadata={"shape": str(canary.shape),
                  "norms": [round(float(n), 4) for n in np.linalg.norm(canary, axis=1)]},
    )


def rows_match_corpus_problem(stored_ids: Sequence[str], corpus_ids: Sequence[str]) -> str | None:
    """What is wrong when the stored ids are not exactly the corpus shard's ids, in order."""
    if list(stored_ids) == list(corpus_ids):
        return None
    if len(stored_ids) != len(corpus_ids):
        return f"{len(stored_ids)} stored rows for {len(corpus_ids)} corpus rows"
    first = next(row for row, (stored, expected) in enumerate(zip(stored_ids, corpus_ids, strict=True))
                 if stored != expected)
    return f"row {first} holds id {stored_ids[first]!r}, the corpus has {corpus_ids[first]!r} there"


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

    @property
    def expected_dim(self) -> int:
        return self.params.truncate_dim or self.snapshot.dim


@dataclass(frozen=True)
class ShardCheck:
    """A check run on every partition a materialization stores. `applies` says whether
    it means anything under the shard's parameters; `find_problem` returns None or what
    is wrong."""

    name: str
    description: str
    find_problem: Callable[[StoredShard], str | None]
    applies: Callable[[StoredShard], bool] = lambda shard: True


SHARD_CHECKS: tuple[ShardCheck, ...] = (
    ShardCheck(
        "rows_match_corpus",
        "One stored vector for every row of the corpus shard, ids in corpus order.",
        lambda shard: rows_match_corpus_problem(shard.ids, shard.corpus_ids),
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
        f"{UNIT_NORM_TOLERANCE:g}. Passes as not applicable otherwise.",
        lambda shard: unit_norm_problem(shard.vectors, shard.ids),
        applies=lambda shard: shard.params.normalize_embeddings and shard.params.precision == "float32",
    ),
)


def shard_check_results(shards: Sequence[StoredShard]) -> list[AssetCheckResult]:
    """One result per shard check over the partitions of a run: failed when any partition
    fails, with the problem of each failing partition."""
    results = []
    for check in SHARD_CHECKS:
        checked = [shard for shard in shards if check.applies(shard)]
        failures = {shard.version.partition: problem for shard in checked
                    if (problem := check.find_problem(shard)) is not None}
        results.append(AssetCheckResult(
            check_name=check.name, passed=not failures,
            metadata={"failures": failures, "partitions_checked": len(checked),
                      "not_applicable": len(shards) - len(checked)},
        ))
    return results


@asset_check(asset=AssetKey("embeddings"), description=(
    "Spot check: re-encodes a few random stored texts of every current partition with the "
    f"current model snapshot and compares them with the stored vectors (cosine >= {MIN_COSINE} "
    f"for float32, >= {MIN_BIT_AGREEMENT:.0%} equal bits for binary): catches a model, "
    "revision or parameter mix-up."
))
def embeddings_match_model(
    context: AssetCheckExecutionContext,
    encoder: EncoderResource,
    embedding_store: EmbeddingStoreResource,
) -> AssetCheckResult:
    store, config = embedding_store.open(), encoder.open()
    try:
        snapshot = require_current_snapshot(store, config.model_name, match_revision=False)
    except SnapshotNotCurrentError as error:
        return AssetCheckResult(passed=False, metadata={"reason": str(error)})
    params = config.params(snapshot)
    rng = np.random.default_rng()
    texts: list[str] = []
    compared_ids: list[str] = []
    stored: list[np.ndarray] = []
    checked_partitions = []
    for partition in store.corpus_partitions():
        version = store.embedding_version(partition, snapshot, params,
                                          store.corpus_version(partition).corpus_version)
        if version is None:
            continue
        ids, vectors = store.read_embeddings(version)
        corpus = store.read_corpus(store.corpus_version(partition, version.corpus_version))
        rows = rng.choice(len(vectors), size=min(SAMPLE_ROWS_PER_PARTITION, len(vectors)),
                          replace=False)
        texts += corpus.column("text").take(rows).to_pylist()
        compared_ids += [f"{partition}:{row_id}" for row_id in ids.column("id").take(rows).to_pylist()]
        stored += list(vectors[rows])
        checked_partitions.append(partition)
    if not texts:
        return AssetCheckResult(passed=False, metadata={"reason": "no current embeddings stored"})
    with config.session(snapshot, params) as session:
        fresh = session.encode(texts)
    agreement = vector_agreement(fresh, np.stack(stored), params.precision)
    threshold = MIN_COSINE if params.precision == "float32" else MIN_BIT_AGREEMENT
    worst = int(np.argmin(agreement))
    context.log.info(f"compared {len(texts)} texts of {len(checked_partitions)} partition(s)")
    return AssetCheckResult(
        passed=bool(agreement.min() >= threshold),
        metadata={
            "texts_compared": len(texts),
            "partitions": checked_partitions,
            "compared_ids": compared_ids,
            "min_agreement": round(float(agreement.min()), 6),
            "threshold": threshold,
            "worst_id": compared_ids[worst],
            "worst_text": texts[worst][:200],
        },
    )


def vector_agreement(fresh: np.ndarray, stored: np.ndarray, precision: str) -> np.ndarray:
    """Per row: the cosine similarity of float32 vectors, or the share of equal bits of
    packed binary ones."""
    if precision == "float32":
        fresh, stored = fresh.astype(np.float64), stored.astype(np.float64)
        return np.sum(fresh * stored, axis=1) / (
            np.linalg.norm(fresh, axis=1) * np.linalg.norm(stored, axis=1))
    return (np.unpackbits(fresh.view(np.uint8), axis=1)
            == np.unpackbits(stored.view(np.uint8), axis=1)).mean(axis=1)
