"""Asset checks, one result per partition (a landing bucket).

- `encodes_canary` runs inside the `model_snapshot` step on the model it pins.
- `corpus.rows_valid` runs inside the `landing_buckets` step after `corpus` (only it sees the
  rejected rows).
- The four `SHARD_CHECKS` of `embeddings` run inside the same step after `embeddings`, on the
  one read back of the versions it wrote (`shard_check_evaluations`): a shard's vectors are read back
  once, not once per check step.
- `texts_fit_max_seq_length` runs in the same step too, on every text of each bucket's
  current corpus: a warning, not a failure, when the encoder cut some of them.
- The spot check `embeddings_match_model` re-encodes a few sampled texts of each bucket and
  compares them with their stored vectors, reading only the sampled rows. It runs after
  `embeddings` in the same step, can be launched alone from the UI (the asset's Checks tab)
  without re-materializing, and the weekly `verify_embeddings_sweep` runs it over every
  bucket.
"""

import typing
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    Output,
    PreviewWarning,
)

from embedding_assets.metadata import truncation_metadata
from embedding_assets.partitions import LANDING_BUCKETS, corpus_partitions
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
from embedding_core.landing_sync import bucket_state
from embedding_core.snapshot import SnapshotNotCurrentError, require_current_snapshot
from embedding_core.store import EmbeddingParams
from embedding_core.truncation import TruncationReport

__all__ = [
    "EMBEDDINGS", "ENCODES_CHECK", "SHARD_CHECKS", "MATCH_MODEL_CHECK", "TRUNCATION_CHECK", "ShardCheck",
    "StoredShard", "truncation_evaluation",
    "dim_problem", "embeddings_match_model", "encodes_canary", "shard_check_evaluations",
    "non_finite_problem", "partition_check_spec", "partition_evaluation", "retargeted", "rows_match_corpus_problem",
    "unit_norm_problem", "vector_agreement",
]

EMBEDDINGS = AssetKey("embeddings")
SAMPLE_ROWS_PER_PARTITION = 4
SHOWN_PROBLEMS = 5
MIN_COSINE = 0.9999
MIN_BIT_AGREEMENT = 0.98
ENCODES_CHECK = "encodes_canary"
MATCH_MODEL_CHECK = "embeddings_match_model"
TRUNCATION_CHECK = "texts_fit_max_seq_length"
CANARY_TEXTS = ["A man is eating food.", "The quick brown fox jumps over the lazy dog."]


def partition_check_spec(name: str, asset: str, description: str) -> AssetCheckSpec:
    """A check spec evaluated per corpus partition (Dagster marks partitioned checks as a
    preview; that warning is about Dagster's API, not something a user should act on)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PreviewWarning)
        return AssetCheckSpec(name, asset=asset, description=description,
                              partitions_def=corpus_partitions)


# What an `AssetCheckEvaluation` points at (the materialization it judged). Dagster exports no
# name for it, and a step that checks several partitions must set it itself: taken from the
# public class's own field, so no private module is imported.
TargetMaterialization = next(arg for arg in typing.get_args(
    typing.get_type_hints(AssetCheckEvaluation)["target_materialization_data"]) if arg is not type(None))


def latest_materialization_target(instance: DagsterInstance, asset_key: AssetKey, partition: str
                                  ) -> TargetMaterialization | None:
    """The latest materialization of `partition`, as a check evaluation's target."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]), limit=1).records
    return (TargetMaterialization(
        storage_id=records[0].storage_id, run_id=records[0].run_id, timestamp=records[0].timestamp)
        if records else None)


def partition_evaluation(
    instance: DagsterInstance | None, asset_key: AssetKey, check_name: str, partition: str, passed: bool,
    metadata: dict, severity: AssetCheckSeverity = AssetCheckSeverity.ERROR,
) -> AssetCheckEvaluation:
    """The result of `check_name` for one partition, pointing at that partition's latest
    materialization (so the UI shows whether it judged the current data). Without an
    instance it has no target yet: `retargeted` gives it one once the step's own
    materialization is recorded."""
    return AssetCheckEvaluation(
        asset_key=asset_key, check_name=check_name, passed=passed,
        metadata={key: value for key, value in metadata.items() if value not in (None, {}, [])},
        target_materialization_data=(None if instance is None
                                     else latest_materialization_target(instance, asset_key, partition)),
        severity=severity, partition=partition,
    )


def retargeted(instance: DagsterInstance, evaluations: Sequence[AssetCheckEvaluation]
               ) -> Iterator[AssetCheckEvaluation]:
    """`evaluations` made in a step before its materializations were recorded, each pointing
    at its partition's latest materialization as of now (one lookup per partition). Iterate
    after the step yielded its `MaterializeResult`, so that is the one they point at."""
    targets: dict[tuple[AssetKey, str], TargetMaterialization | None] = {}
    for evaluation in evaluations:
        key = (evaluation.asset_key, evaluation.partition)
        if key not in targets:
            targets[key] = latest_materialization_target(instance, *key)
        yield AssetCheckEvaluation(
            asset_key=evaluation.asset_key, check_name=evaluation.check_name, passed=evaluation.passed,
            metadata=evaluation.metadata, target_materialization_data=targets[key],
            severity=evaluation.severity, description=evaluation.description,
            blocking=evaluation.blocking, partition=evaluation.partition)


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


def shard_check_evaluations(instance: DagsterInstance | None, bucket: str, shards: Sequence[StoredShard],
                            params: EmbeddingParams) -> list[AssetCheckEvaluation]:
    """The `SHARD_CHECKS` results of one bucket: each check judges every shard (one landing
    file's new version) this run wrote in it; it passes when all of them do. A check that
    does not apply to `params` is not evaluated (the UI shows it skipped, not green)."""
    evaluations = []
    for check in SHARD_CHECKS:
        if not check.applies(params):
            continue
        judged = list(shards)
        problems = {shard.version.partition: problem for shard in judged
                    if (problem := check.find_problem(shard)) is not None}
        evaluations.append(partition_evaluation(instance, EMBEDDINGS, check.name, bucket, not problems, {
            "files_checked": len(judged), "rows": sum(len(shard.ids) for shard in judged),
            "problems": dict(list(problems.items())[:SHOWN_PROBLEMS]),
            "note": None if judged else "no new version in this run; the last result stands"}))
    return evaluations


TRUNCATION_SPEC = partition_check_spec(
    TRUNCATION_CHECK, "embeddings",
    "Every text of the bucket's current corpus fits the model's max_seq_length (in tokens, "
    "counted with the model's tokenizer, special tokens included). With chunking off, a longer "
    "text is cut: only its first max_seq_length tokens are embedded, the rest never reaches the "
    "model. Warns (does not fail) when texts were cut, with truncated_texts, truncated_share and "
    "dropped_token_share. With chunking on (EMBEDDING_CHUNK_TOKENS) long texts are split into "
    "token windows and nothing is cut: it passes, and texts_over_max_seq_length says how many "
    "were split.")


def truncation_evaluation(instance: DagsterInstance | None, bucket: str, report: TruncationReport,
                          params: EmbeddingParams | None = None) -> AssetCheckEvaluation:
    """The `texts_fit_max_seq_length` result of one bucket: passes when the encoder cut none
    of its texts (always, when `params` chunk them); a cut text is a warning (severity WARN),
    not a failure."""
    chunked = params is not None and params.chunked
    extra = ({"texts_over_max_seq_length": report.truncated_texts, "chunk_tokens": params.chunk_tokens,
              "chunk_overlap": params.chunk_overlap} if chunked else {})
    return partition_evaluation(
        instance, EMBEDDINGS, TRUNCATION_CHECK, bucket, chunked or report.truncated_texts == 0,
        {**truncation_metadata(report, chunked), "texts": report.texts, "max_seq_length": report.max_seq_length,
         **extra},
        severity=AssetCheckSeverity.WARN)


MATCH_MODEL_SPEC = partition_check_spec(
    MATCH_MODEL_CHECK, "embeddings",
    f"Spot check: re-encodes {SAMPLE_ROWS_PER_PARTITION} random stored texts of each checked "
    f"bucket with the current model snapshot and compares them with the stored vectors "
    f"(cosine >= {MIN_COSINE} for float32, >= {MIN_BIT_AGREEMENT:.0%} equal bits for "
    "binary): catches a model, revision or parameter mix-up. Runs for the buckets of "
    "each embeddings run; the weekly verify_embeddings_sweep covers all of them.")
# Select it (e.g. `AssetSelection.checks(embeddings_match_model)`) to run it alone.
embeddings_match_model = AssetCheckKey(EMBEDDINGS, MATCH_MODEL_CHECK)


def match_model_evaluations(context, encoder: EncoderResource, embedding_store: EmbeddingStoreResource,
                            buckets: Sequence[str]) -> Iterator[AssetCheckEvaluation]:
    """The spot check of `buckets`, one evaluation each (run by `landing_buckets`, after its
    materializations are recorded, or alone when only this check is selected)."""
    config, store = encoder.open(), embedding_store.open()
    try:
        snapshot = require_current_snapshot(store, config.model_name, match_revision=False)
    except SnapshotNotCurrentError as error:
        for bucket in buckets:
            yield partition_evaluation(context.instance, EMBEDDINGS, MATCH_MODEL_CHECK, bucket, False,
                                       {"reason": str(error)})
        return
    params = config.params(snapshot)
    files, corpora = bucket_state(store, buckets, LANDING_BUCKETS)
    versions = store.embedding_versions_of(list(corpora.values()), snapshot, params)
    rng = np.random.default_rng()
    picks: dict[str, list[tuple]] = {}  # bucket -> (version, rows) to read
    for bucket in buckets:
        unembedded = [key for key in files[bucket] if key in corpora and key not in versions]
        if unembedded:
            yield partition_evaluation(context.instance, EMBEDDINGS, MATCH_MODEL_CHECK, bucket, False, {
                "reason": f"no embeddings of the current corpus version of {unembedded[:5]} with "
                          f"{snapshot.model}@{snapshot.revision[:16]} and the configured parameters; "
                          "materialize embeddings for the bucket"})
            continue
        bucket_versions = [versions[key] for key in files[bucket] if key in versions and versions[key].rows]
        positions = _sample_positions(rng, [version.rows for version in bucket_versions], SAMPLE_ROWS_PER_PARTITION)
        picks[bucket] = [(bucket_versions[index], rows) for index, rows in positions.items()]
    read = iter(store.sample_rows([pick for bucket_picks in picks.values() for pick in bucket_picks]))
    # bucket -> (id, text, stored vector) of its sampled rows
    samples = {bucket: [row for _ in bucket_picks for row in next(read)] for bucket, bucket_picks in picks.items()}
    texts = [text for rows in samples.values() for _, text, _ in rows]
    if texts:
        with config.session(snapshot, params) as session:
            fresh = session.encode(texts)
    threshold = MIN_COSINE if config.precision == "float32" else MIN_BIT_AGREEMENT
    start = 0
    for bucket, rows in samples.items():
        if not rows:
            yield partition_evaluation(context.instance, EMBEDDINGS, MATCH_MODEL_CHECK, bucket,
                                       True, {"texts_compared": 0, "reason": "no stored rows"})
            continue
        agreement = vector_agreement(fresh[start:start + len(rows)], np.stack([v for _, _, v in rows]),
                                     params.precision)
        start += len(rows)
        worst = int(np.argmin(agreement))
        yield partition_evaluation(
            context.instance, EMBEDDINGS, MATCH_MODEL_CHECK, bucket,
            bool(agreement.min() >= threshold), {
                "texts_compared": len(rows), "min_agreement": round(float(agreement.min()), 6),
                "threshold": threshold, "worst_id": rows[worst][0], "worst_text": rows[worst][1][:200]})
    context.log.info(f"compared {len(texts)} texts of {sum(1 for rows in samples.values() if rows)} bucket(s)")


def _sample_positions(rng: np.random.Generator, sizes: Sequence[int], count: int) -> dict[int, list[int]]:
    """Up to `count` distinct rows drawn uniformly from shards of `sizes`: shard -> rows."""
    total = sum(sizes)
    picks: dict[int, list[int]] = {}
    if not total:
        return picks
    offsets = np.cumsum([0, *sizes])
    for flat in rng.choice(total, size=min(count, total), replace=False):
        shard = int(np.searchsorted(offsets, flat, side="right") - 1)
        picks.setdefault(shard, []).append(int(flat - offsets[shard]))
    return picks


def vector_agreement(fresh: np.ndarray, stored: np.ndarray, precision: str) -> np.ndarray:
    """Per row: the cosine similarity of float32 vectors, or the share of equal bits of
    packed binary ones."""
    if precision == "float32":
        fresh, stored = fresh.astype(np.float64), stored.astype(np.float64)
        return np.sum(fresh * stored, axis=1) / (
            np.linalg.norm(fresh, axis=1) * np.linalg.norm(stored, axis=1))
    return (np.unpackbits(fresh.view(np.uint8), axis=1)
            == np.unpackbits(stored.view(np.uint8), axis=1)).mean(axis=1)
