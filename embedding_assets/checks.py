"""Asset checks, one result per partition.

- `encodes_canary` runs inside the `model_snapshot` step on the model it pins.
- `corpus.rows_valid` runs inside the `corpus` step (only it sees the rejected rows).
- The stored-data checks of `embeddings` read the current stored version of each partition
  back and judge it: the four `SHARD_CHECKS` (one step, `embeddings_shard_checks`) and the
  spot check `embeddings_match_model`, which re-encodes a few sampled texts. They run after
  `embeddings` in the same run, for that run's partitions, and can be launched alone from the
  UI (the asset's Checks tab) without re-materializing; the weekly `verify_embeddings_sweep`
  schedule runs the spot check over every partition.

Every check result names its partition, so a run of several partitions reports each of them,
and a partition deleted from `corpus_shards` no longer counts in the asset's check status.
"""

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    Output,
    PreviewWarning,
    multi_asset_check,
)
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from embedding_assets.partitions import corpus_partitions
from embedding_assets.problems import (
    SHARD_CHECKS,
    ShardCheck,
    StoredShard,
    dim_problem,
    non_finite_problem,
    rows_match_corpus_problem,
    unit_norm_problem,
)
from embedding_assets.resources import EmbeddingStoreResource, EncoderResource
from embedding_core.memory import release_free_heap
from embedding_core.snapshot import SnapshotNotCurrentError, require_current_snapshot
from embedding_core.store import EmbeddingStore

__all__ = [
    "EMBEDDINGS", "ENCODES_CHECK", "SHARD_CHECKS", "MATCH_MODEL_CHECK", "ShardCheck", "StoredShard",
    "dim_problem", "embeddings_match_model", "embeddings_shard_checks", "encodes_canary",
    "non_finite_problem", "partition_check_spec", "partition_evaluation", "rows_match_corpus_problem",
    "unit_norm_problem", "vector_agreement",
]

EMBEDDINGS = AssetKey("embeddings")
SAMPLE_ROWS_PER_PARTITION = 4
MIN_COSINE = 0.9999
MIN_BIT_AGREEMENT = 0.98
ENCODES_CHECK = "encodes_canary"
MATCH_MODEL_CHECK = "embeddings_match_model"
CANARY_TEXTS = ["A man is eating food.", "The quick brown fox jumps over the lazy dog."]


def partition_check_spec(name: str, asset: str, description: str) -> AssetCheckSpec:
    """A check spec evaluated per corpus partition (Dagster marks partitioned checks as a
    preview; that warning is about Dagster's API, not something a user should act on)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PreviewWarning)
        return AssetCheckSpec(name, asset=asset, description=description,
                              partitions_def=corpus_partitions)


def partition_evaluation(
    instance: DagsterInstance, asset_key: AssetKey, check_name: str, partition: str, passed: bool,
    metadata: dict, severity: AssetCheckSeverity = AssetCheckSeverity.ERROR,
) -> AssetCheckEvaluation:
    """The result of `check_name` for one partition, pointing at that partition's latest
    materialization (so the UI shows whether it judged the current data)."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]), limit=1).records
    target = (AssetCheckEvaluationTargetMaterializationData(
        storage_id=records[0].storage_id, run_id=records[0].run_id, timestamp=records[0].timestamp)
        if records else None)
    return AssetCheckEvaluation(
        asset_key=asset_key, check_name=check_name, passed=passed,
        metadata={key: value for key, value in metadata.items() if value not in (None, {}, [])},
        target_materialization_data=target, severity=severity, partition=partition,
    )


def check_output(context, check_key: AssetCheckKey) -> Output:
    """The (empty) output of a check the step evaluates itself, one partition at a time."""
    return Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(check_key))


def encodes_canary(model, dim: int) -> AssetCheckResult:
    """Whether ``model`` encodes the canary sentences to finite vectors of dimension ``dim``."""
    canary = np.asarray(model.encode(CANARY_TEXTS, show_progress_bar=False))
    encodes = canary.shape == (len(CANARY_TEXTS), dim) and bool(np.isfinite(canary).all())
    return AssetCheckResult(
        check_name=ENCODES_CHECK, passed=encodes,
        metadata={"shape": str(canary.shape),
                  "norms": [round(float(n), 4) for n in np.linalg.norm(canary, axis=1)]},
    )


def stored_shards(store: EmbeddingStore, config, partitions: Sequence[str]
                  ) -> Iterator[tuple[str, StoredShard | None, str | None]]:
    """``(partition, shard, None)`` for each partition's current embeddings read back under
    the configured model and parameters, or ``(partition, None, why)`` for one that has none.

    One partition at a time, read when the caller asks for it: a check that judges each shard
    before taking the next holds one shard's vectors, ids and corpus ids, not the whole run's
    (a run of 8 shards of 25,000 texts held ~300 MB of float32 per check step, the peak of a
    200k-text backfill; docs/performance.md, Memory).
    """
    try:
        snapshot = require_current_snapshot(store, config.model_name, match_revision=False)
    except SnapshotNotCurrentError as error:
        for partition in partitions:
            yield partition, None, str(error)
        return
    params = config.params(snapshot)
    for partition in partitions:
        corpus_version = store.corpus_version(partition)
        version = corpus_version and store.embedding_version(partition, snapshot, params,
                                                             corpus_version.corpus_version)
        if version is None:
            yield partition, None, (f"no embeddings of {partition}'s current corpus version with "
                                    f"{snapshot.model}@{snapshot.revision[:16]} and the configured "
                                    "parameters; materialize embeddings for it")
            continue
        release_free_heap()  # the previous shard's pages, before this one is read
        # No local of this generator keeps the shard once the caller has moved on.
        yield partition, _stored_shard(store, version, corpus_version, snapshot, params), None


def _stored_shard(store: EmbeddingStore, version, corpus_version, snapshot, params) -> StoredShard:
    ids, vectors = store.read_embeddings(version)
    return StoredShard(version=version, ids=ids.column("id").to_pylist(), vectors=vectors,
                       corpus_ids=store.read_corpus(corpus_version).column("id").to_pylist(),
                       snapshot=snapshot, params=params)


@multi_asset_check(
    specs=[partition_check_spec(check.name, "embeddings", check.description) for check in SHARD_CHECKS],
    can_subset=True,
    name="embeddings_shard_checks",
    description="The stored vectors of each partition read back and checked.",
)
def embeddings_shard_checks(
    context: AssetCheckExecutionContext, encoder: EncoderResource,
    embedding_store: EmbeddingStoreResource,
) -> Iterator:
    selected = [check for check in SHARD_CHECKS
                if AssetCheckKey(EMBEDDINGS, check.name) in context.selected_asset_check_keys]
    instance = context.instance
    for check in selected:
        yield check_output(context.op_execution_context, AssetCheckKey(EMBEDDINGS, check.name))
    # Every selected check judges a partition before the next is read (`stored_shards`).
    for partition, shard, missing in stored_shards(embedding_store.open(), encoder.open(),
                                                   context.partition_keys):
        for check in selected:
            if shard is None:
                yield partition_evaluation(instance, EMBEDDINGS, check.name, partition, False,
                                           {"reason": missing})
                continue
            if not check.applies(shard):
                # Not evaluated: the UI shows the check skipped for this run, not green.
                context.log.info(f"{check.name} does not apply to {partition} "
                                 f"({shard.params.precision}, normalize_embeddings="
                                 f"{shard.params.normalize_embeddings}); not evaluated")
                continue
            problem = check.find_problem(shard)
            yield partition_evaluation(instance, EMBEDDINGS, check.name, partition, problem is None, {
                "problem": problem, "rows": len(shard.ids),
                "version_id": shard.version.version_id})
        del shard  # before the next one is read


@dataclass(frozen=True)
class _Sample:
    """The rows of one partition that the spot check re-encodes: what it keeps of the shard."""

    rows: np.ndarray
    ids: list[str]
    texts: list[str]
    stored: np.ndarray
    precision: str


@multi_asset_check(
    specs=[partition_check_spec(
        MATCH_MODEL_CHECK, "embeddings",
        f"Spot check: re-encodes {SAMPLE_ROWS_PER_PARTITION} random stored texts of each checked "
        f"partition with the current model snapshot and compares them with the stored vectors "
        f"(cosine >= {MIN_COSINE} for float32, >= {MIN_BIT_AGREEMENT:.0%} equal bits for "
        "binary): catches a model, revision or parameter mix-up. Runs for the partitions of "
        "each embeddings run; the weekly verify_embeddings_sweep covers all of them.")],
    name=MATCH_MODEL_CHECK,
)
def embeddings_match_model(
    context: AssetCheckExecutionContext, encoder: EncoderResource,
    embedding_store: EmbeddingStoreResource,
) -> Iterator:
    yield check_output(context.op_execution_context, AssetCheckKey(EMBEDDINGS, MATCH_MODEL_CHECK))
    config, store = encoder.open(), embedding_store.open()
    rng = np.random.default_rng()
    # Only the sampled rows of each shard are kept (the sweep reads every partition).
    samples: dict[str, _Sample] = {}
    encoding = None  # (snapshot, params) of the shards, the same for all of them
    for partition, shard, reason in stored_shards(store, config, context.partition_keys):
        if shard is None:
            yield partition_evaluation(context.instance, EMBEDDINGS, MATCH_MODEL_CHECK, partition,
                                       False, {"reason": reason})
            continue
        encoding = encoding or (shard.snapshot, shard.params)
        rows = rng.choice(len(shard.ids), size=min(SAMPLE_ROWS_PER_PARTITION, len(shard.ids)),
                          replace=False)
        texts = []
        if len(rows):
            corpus = store.read_corpus(store.corpus_version(partition, shard.version.corpus_version))
            texts = corpus.column("text").take(rows).to_pylist()
        samples[partition] = _Sample(rows, [shard.ids[int(row)] for row in rows], texts,
                                     shard.vectors[rows], shard.params.precision)
        del shard  # before the next one is read
    texts = [text for sample in samples.values() for text in sample.texts]
    if texts:
        with config.session(*encoding) as session:
            fresh = session.encode(texts)
    threshold = MIN_COSINE if config.precision == "float32" else MIN_BIT_AGREEMENT
    start = 0
    for partition, sample in samples.items():
        if not len(sample.rows):
            yield partition_evaluation(context.instance, EMBEDDINGS, MATCH_MODEL_CHECK, partition,
                                       True, {"texts_compared": 0, "reason": "empty shard"})
            continue
        agreement = vector_agreement(fresh[start:start + len(sample.rows)], sample.stored,
                                     sample.precision)
        start += len(sample.rows)
        worst = int(np.argmin(agreement))
        yield partition_evaluation(
            context.instance, EMBEDDINGS, MATCH_MODEL_CHECK, partition,
            bool(agreement.min() >= threshold), {
                "texts_compared": len(sample.rows), "min_agreement": round(float(agreement.min()), 6),
                "threshold": threshold, "worst_id": sample.ids[worst],
                "worst_text": sample.texts[worst][:200]})
    compared = sum(1 for sample in samples.values() if len(sample.rows))
    context.log.info(f"compared {len(texts)} texts of {compared} partition(s)")


def vector_agreement(fresh: np.ndarray, stored: np.ndarray, precision: str) -> np.ndarray:
    """Per row: the cosine similarity of float32 vectors, or the share of equal bits of
    packed binary ones."""
    if precision == "float32":
        fresh, stored = fresh.astype(np.float64), stored.astype(np.float64)
        return np.sum(fresh * stored, axis=1) / (
            np.linalg.norm(fresh, axis=1) * np.linalg.norm(stored, axis=1))
    return (np.unpackbits(fresh.view(np.uint8), axis=1)
            == np.unpackbits(stored.view(np.uint8), axis=1)).mean(axis=1)
