"""`vector_index`: the approximate-nearest-neighbour index of each model version's current
embeddings (`embedding_core.store.vector_index`), kept current as buckets land, with its
recall@10 against exact search checked on every build."""

import numpy as np
from dagster import (
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    AutomationCondition,
    MaterializeResult,
    MetadataValue,
    asset,
    define_asset_job,
)

from embedding_assets.assets.embeddings import EMBEDDINGS_SPEC
from embedding_assets.partitions import ASSET_OWNERS, ASSET_TAGS
from embedding_assets.resources import EmbeddingStoreResource, EncoderResource
from embedding_core.rollout import configured_version
from embedding_core.snapshot import EncoderConfig, SnapshotNotCurrentError
from embedding_core.store import EmbeddingStore, IndexBuild, version_key

RECALL_TARGET = 0.95
RECALL_QUERIES = 100

# Build when missing, and after any bucket of embeddings was materialized (an update of the
# previous index, not a rebuild); one run at a time. Not `eager()`: buckets that never got a
# landing file stay missing, and eager waits for every dependency partition. An update of the
# embeddings counts until a later request: both are timed, so one that lands while an index
# run is queued or running (after it read the store) still asks for the next run. Dagster's
# `any_deps_updated().since_last_handled()` loses it: its reset has no time, and wins a tick
# on which both happened.
VECTOR_INDEX_AUTOMATION = (
    (AutomationCondition.missing().since_last_handled()
     | AutomationCondition.any_deps_match(AutomationCondition.newly_updated())
     .since(AutomationCondition.newly_requested()))
    & ~AutomationCondition.any_deps_in_progress()
    & ~AutomationCondition.in_progress()
).with_label("missing or embeddings updated")

RECALL_SPEC = AssetCheckSpec(
    "recall_at_10", asset="vector_index",
    description=f"Recall@10 of the index against exact search, with {RECALL_QUERIES} sampled stored "
    f"vectors as queries: at least {RECALL_TARGET} to pass.")


@asset(
    deps=[EMBEDDINGS_SPEC.key], group_name="vectors", kinds={"usearch"}, owners=ASSET_OWNERS, tags=ASSET_TAGS,
    code_version="1", automation_condition=VECTOR_INDEX_AUTOMATION, check_specs=[RECALL_SPEC],
)
def vector_index(context: AssetExecutionContext, embedding_store: EmbeddingStoreResource,
                 encoder: EncoderResource) -> MaterializeResult:
    """An HNSW index (usearch, float16 vectors) of each model's serving version set over the
    current embeddings of every bucket, and of the configured encoder's version set once it is
    a complete candidate (so a promotion switches search to an index at once), under
    `<store>/indexes/`, recorded in the catalog with the lake snapshot it covers. After new
    buckets land it is updated (new versions added, replaced ones removed), rebuilt only
    when more than 30% of it would go or its files cannot be read.
    `EmbeddingStore.search` uses it, and searches rows newer than it exactly."""
    store = embedding_store.open()
    builds = store.build_vector_indexes(run_id=context.run.run_id)
    builds += candidate_index(context, store, encoder.open())
    recalls = {build.record.index_id: index_recall(store, build) for build in builds}
    for build in builds:
        record = build.record
        context.log.info(f"vector index of {record.model}@{record.revision[:12]}: {record.rows} rows, "
                         f"{'unchanged' if build.unchanged else record.mode} (+{build.added_rows} "
                         f"-{build.removed_rows}) in {record.build_seconds:.1f} s, recall@10 "
                         f"{recalls[record.index_id]:.3f}")
    worst = min(recalls.values(), default=1.0)
    return MaterializeResult(
        metadata=index_metadata(store, builds, recalls),
        check_results=[AssetCheckResult(
            check_name=RECALL_SPEC.name, passed=worst >= RECALL_TARGET, severity=AssetCheckSeverity.ERROR,
            description=None if builds else "no vectors to index",
            metadata={"recall_at_10": round(worst, 4), "target": RECALL_TARGET, "queries": RECALL_QUERIES,
                      **{f"recall_at_10 {b.record.model} {version_key(b.record.revision, b.record.params_hash)}":
                         round(recalls[b.record.index_id], 4) for b in builds}})],
    )


def index_recall(store: EmbeddingStore, build: IndexBuild, queries: int = RECALL_QUERIES, k: int = 10) -> float:
    """Share of the exact top-`k` the index search returns, for stored vectors of the index
    sampled as queries (a fixed seed: the same index gives the same figure)."""
    record = build.record
    if record.rows == 0:
        return 1.0
    version = version_key(record.revision, record.params_hash)
    fast = store.searcher(record.model, record.metric, version=version)
    if fast.loaded is None or fast.loaded.record.index_id != record.index_id:
        return 0.0  # the index just built cannot be read (or another one is newer)
    keys = fast.loaded.rows.column("key").to_numpy()
    picked = np.random.default_rng(0).choice(keys, size=min(queries, len(keys)), replace=False)
    vectors = np.asarray(fast.loaded.index.get(picked), dtype=np.float32).reshape(len(picked), record.dim)
    exact = store.searcher(record.model, record.metric, exact=True, version=version)
    found, truth = fast.search_batch(vectors, k), exact.search_batch(vectors, k)
    return float(np.mean([len({(h.partition, h.id) for h in f} & {(h.partition, h.id) for h in t}) / max(len(t), 1)
                          for f, t in zip(found, truth, strict=True)]))


def candidate_index(context: AssetExecutionContext, store: EmbeddingStore, config: EncoderConfig) -> list[IndexBuild]:
    """The index of the configured encoder's version set when it is a complete candidate (not
    serving yet): built before the promotion that switches search to it."""
    try:
        candidate = configured_version(store, config)
    except (SnapshotNotCurrentError, ValueError) as error:  # model_snapshot says what to fix
        context.log.info(f"no candidate index: {error}")
        return []
    if candidate is None or candidate.serving or not candidate.complete or candidate.dtype != "float32":
        return []
    context.log.info(f"indexing candidate {candidate.key} of {candidate.model} ({candidate.rows} rows)")
    return store.build_vector_indexes(candidate.model, version=candidate.key, run_id=context.run.run_id)


def index_metadata(store: EmbeddingStore, builds: list[IndexBuild], recalls: dict[str, float]) -> dict:
    rows = sum(b.record.rows for b in builds)
    metadata = {"dagster/row_count": rows, "indexes": len(builds), "catalog": store.catalog_label}
    if len(builds) == 1:
        (build,) = builds
        record = build.record
        metadata.update({
            "model": record.model, "revision": record.revision, "mode": "unchanged" if build.unchanged else record.mode,
            "added_rows": build.added_rows, "removed_rows": build.removed_rows,
            "build_seconds": record.build_seconds, "index_bytes": record.bytes,
            "index_file": MetadataValue.path(store.uri(record.path)), "lake_snapshot": record.lake_snapshot,
            "recall_at_10": round(recalls[record.index_id], 4), "library": "usearch HNSW (float16)"})
    elif builds:
        metadata["by_model"] = MetadataValue.json([
            {"model": b.record.model, "version": version_key(b.record.revision, b.record.params_hash),
             "revision": b.record.revision, "rows": b.record.rows, "mode": b.record.mode,
             "path": store.uri(b.record.path), "recall_at_10": round(recalls[b.record.index_id], 4)} for b in builds])
    return metadata


# Without the promotion's gate (evaluated by promote_candidate, before serving_version).
index_vectors = define_asset_job(
    "index_vectors",
    selection=AssetSelection.assets(vector_index)
    - AssetSelection.checks(AssetCheckKey(AssetKey("vector_index"), "candidate_retrieval_quality")),
    description="Bring the vector index of each model's serving version (and of a complete candidate) "
    "up to the current embeddings.")
