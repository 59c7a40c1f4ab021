"""`serving_version`: the promotion of the configured encoder's version set, gated by the
retrieval evaluation.

A new revision, other parameters, chunking or a lossy backend write a *candidate* version
set beside the serving one (`embeddings`). Once it covers every partition, `vector_index`
builds its index and the blocking check `candidate_retrieval_quality` (on `vector_index`)
runs the same queries against the candidate and the serving version
(`embedding_core.rollout`): when any metric is worse than serving by more than the
tolerance (EMBEDDING_PROMOTION_TOLERANCE), the check fails and Dagster does not run
`serving_version` in that run; its description says by how much. Otherwise
`serving_version` promotes the candidate in one commit (`EmbeddingStore.promote`), its
index already built, so search switches at once.

Materializing `serving_version` alone (without the check in the run) promotes only on the
latest passing evaluation of the same candidate against the same serving version, so the
gate cannot be stepped around; `embedding-store promote KEY --force` is the way to do it by
hand. `promote_candidate` is the job of both (and the CI step after a backfill).
"""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
    asset_check,
    define_asset_job,
)

from embedding_assets.assets.embeddings import EMBEDDINGS_SPEC
from embedding_assets.assets.vector_index import index_recall, vector_index
from embedding_assets.partitions import ASSET_OWNERS, ASSET_TAGS
from embedding_assets.resources import (
    EmbeddingStoreResource,
    EncoderResource,
    PromotionGateResource,
)
from embedding_core.evaluation import METRICS, BeirFormatError
from embedding_core.rollout import (
    Comparison,
    RolloutError,
    compare_with_serving,
    configured_version,
)
from embedding_core.snapshot import SnapshotNotCurrentError
from embedding_core.store import VersionSet

__all__ = ["GATE_CHECK", "GATE_KEY", "PROMOTE_CANDIDATE", "candidate_retrieval_quality", "promote_candidate",
           "serving_version"]

GATE_CHECK = "candidate_retrieval_quality"
PROMOTE_CANDIDATE = "promote_candidate"
GATE_KEY = AssetCheckKey(AssetKey("vector_index"), GATE_CHECK)

METRICS_SCHEMA = TableSchema(columns=[
    TableColumn("query_set", "string"), TableColumn("metric", "string"),
    TableColumn("serving", "float"), TableColumn("candidate", "float"),
    TableColumn("delta", "float", description="candidate - serving"),
    TableColumn("within_tolerance", "bool")])


def coverage(version: VersionSet) -> str:
    return f"{version.partitions_covered} of {version.partitions_total} partitions"


def comparison_metadata(comparison: Comparison) -> dict:
    """The check's metadata: a table of every metric serving vs candidate, the deltas (also
    as numbers, which the UI plots over evaluations), query count and cost."""
    records = [TableRecord({"query_set": c.query_set, "metric": metric,
                            "serving": round(c.serving.metrics[metric], 4),
                            "candidate": round(c.candidate.metrics[metric], 4),
                            "delta": round(c.deltas[metric], 4), "within_tolerance": metric not in c.regressions})
               for c in comparison.query_sets for metric in METRICS]
    known_item = comparison.query_sets[0]
    return {
        "metrics": MetadataValue.table(records, schema=METRICS_SCHEMA),
        "candidate": comparison.candidate_key, "serving": comparison.serving_key,
        "tolerance": comparison.tolerance, "queries": comparison.queries,
        "seconds_per_1000_queries": round(comparison.seconds_per_1000_queries, 2),
        **{f"delta {metric}": round(known_item.deltas[metric], 4) for metric in METRICS},
        "evaluation": MetadataValue.json(comparison.metrics()),
    }


@asset_check(
    asset=vector_index, name=GATE_CHECK, blocking=True,
    description="The gate of a promotion: the configured encoder's version set, once complete, is "
    "evaluated against the serving version on the same queries (known-item queries from the corpus, "
    "and a BEIR set when EMBEDDING_EVALUATION_BEIR_DIR is set): recall@10, MRR@10, nDCG@10. Fails "
    "(blocking serving_version) when any is worse than serving by more than "
    "EMBEDDING_PROMOTION_TOLERANCE; warns, not evaluated, while the candidate is incomplete.",
)
def candidate_retrieval_quality(
    context: AssetCheckExecutionContext, encoder: EncoderResource, embedding_store: EmbeddingStoreResource,
    promotion_gate: PromotionGateResource,
) -> AssetCheckResult:
    store, config = embedding_store.open(), encoder.open()
    try:
        candidate = configured_version(store, config)
    except SnapshotNotCurrentError as error:
        return AssetCheckResult(passed=False, severity=AssetCheckSeverity.WARN, description=str(error))
    if candidate is None:
        return AssetCheckResult(passed=False, severity=AssetCheckSeverity.WARN,
                                description=f"no vectors of the configured encoder ({config.model_name}) yet: "
                                "materialize embeddings")
    if candidate.serving:
        return AssetCheckResult(passed=True, metadata={"candidate": candidate.key, "serving": candidate.key},
                                description=f"version {candidate.key} already serves {candidate.model}: "
                                "nothing to compare")
    if not candidate.complete:
        return AssetCheckResult(
            passed=False, severity=AssetCheckSeverity.WARN,
            metadata={"candidate": candidate.key, "partitions_covered": candidate.partitions_covered,
                      "partitions_total": candidate.partitions_total},
            description=f"candidate {candidate.key} covers {coverage(candidate)}: not evaluated until it "
            "is complete (embed the rest with its configuration)")
    try:
        comparison = compare_with_serving(store, candidate, config, promotion_gate.query_sets(store),
                                          promotion_gate.tolerance)
    except (RolloutError, BeirFormatError) as error:  # a model that is gone, a malformed BEIR line
        return AssetCheckResult(passed=False, severity=AssetCheckSeverity.ERROR, description=str(error),
                                metadata={"candidate": candidate.key})
    context.log.info(f"{comparison.describe()} ({comparison.seconds:.1f} s)")
    return AssetCheckResult(passed=comparison.passed, severity=AssetCheckSeverity.ERROR,
                            metadata=comparison_metadata(comparison), description=comparison.describe())


def passing_evaluation(context: AssetExecutionContext, candidate: VersionSet, serving: VersionSet) -> dict:
    """The metrics of the latest evaluation of the gate, when it passed for exactly this
    candidate against exactly this serving version; `Failure` saying why not otherwise."""
    record = context.instance.get_latest_asset_check_evaluation_record(GATE_KEY)
    evaluation = record.event.asset_check_evaluation if record is not None and record.event else None
    judged = {key: value.value for key, value in evaluation.metadata.items()} if evaluation else {}
    if evaluation is None or (judged.get("candidate"), judged.get("serving")) != (candidate.key, serving.key):
        raise Failure(
            description=f"candidate {candidate.key} was not evaluated against serving {serving.key}: materialize "
            f"vector_index with its {GATE_CHECK} check (the promote_candidate job), then serving_version")
    if not evaluation.passed:
        raise Failure(description=f"the gate failed for candidate {candidate.key}: {evaluation.description}")
    return judged["evaluation"]


@asset(
    deps=[EMBEDDINGS_SPEC.key, AssetKey("model_snapshot"), vector_index], group_name="vectors",
    kinds={"duckdb"}, owners=ASSET_OWNERS, tags=ASSET_TAGS, code_version="1",
)
def serving_version(
    context: AssetExecutionContext, encoder: EncoderResource, embedding_store: EmbeddingStoreResource,
) -> MaterializeResult:
    """The version set the configured model serves (views, search, vector index, embedding-search).
    Materializing it promotes the configured encoder's version set when it is a complete
    candidate that passed `candidate_retrieval_quality`: its index is brought up to date first,
    then one commit switches every reader. Already serving: recorded, nothing done.
    Incomplete: its coverage recorded, nothing promoted."""
    store, config = embedding_store.open(), encoder.open()
    candidate = configured_version(store, config)
    if candidate is None:
        raise Failure(description=f"no vectors of the configured encoder ({config.model_name}): materialize "
                      "embeddings first")
    serving = store.serving_version(candidate.model)
    base = {"model": candidate.model, "candidate": candidate.key,
            "partitions_covered": candidate.partitions_covered, "partitions_total": candidate.partitions_total}
    if candidate.serving:
        context.log.info(f"{candidate.key} already serves {candidate.model}")
        return MaterializeResult(metadata={**base, "serving": candidate.key, "action": "already serving"},
                                 data_version=DataVersion(candidate.key))
    if not candidate.complete:
        context.log.info(f"candidate {candidate.key} covers {coverage(candidate)}: {serving.key} keeps serving")
        return MaterializeResult(
            metadata={**base, "serving": serving.key,
                      "action": f"not promoted: candidate covers {coverage(candidate)}"},
            data_version=DataVersion(serving.key))
    metrics = passing_evaluation(context, candidate, serving)
    builds = store.build_vector_indexes(candidate.model, version=candidate.key, run_id=context.run.run_id)
    # vector_index measured the index it built; one built here (no vector_index before) is measured now.
    recalls = {build.record.index_id: index_recall(store, build) for build in builds if not build.unchanged}
    promotion = store.promote(candidate.model, candidate.key, run_id=context.run.run_id, metrics=metrics,
                              reason=f"{GATE_CHECK} passed (tolerance {metrics['tolerance']})")
    context.log.info(f"{candidate.model}: {promotion.from_key} -> {promotion.to_key}")
    return MaterializeResult(
        metadata={**base, "serving": promotion.to_key, "previous": promotion.from_key,
                  "action": f"promoted {promotion.to_key} over {promotion.from_key}",
                  "lake_snapshot": MetadataValue.text(str(promotion.snapshot_id)),
                  "index_rows": sum(build.record.rows for build in builds),
                  **({"index_recall_at_10": round(min(recalls.values()), 4)} if recalls else {}),
                  "evaluation": MetadataValue.json(metrics)},
        data_version=DataVersion(promotion.to_key))


promote_candidate = define_asset_job(
    PROMOTE_CANDIDATE, selection=AssetSelection.assets(vector_index, serving_version),
    description="Bring the vector indexes up to date (the candidate's too), evaluate the candidate "
    "against the serving version (blocking check), and promote it when it passes.")
