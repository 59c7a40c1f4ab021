"""`embeddings`: every corpus shard encoded with the current model snapshot, stored as a new
immutable version and registered in the catalog."""

from dagster import (
    AssetExecutionContext,
    AssetSelection,
    AutomationCondition,
    MaterializeResult,
)

from embedding_assets.assets.corpus import corpus
from embedding_assets.assets.model_snapshot import model_snapshot
from embedding_assets.metadata import embeddings_metadata, single_data_version
from embedding_assets.partitions import ASSET_OWNERS, ASSET_TAGS, shard_asset
from embedding_assets.resources import EmbeddingStoreResource, EncoderResource
from embedding_assets.shards import ShardFailures, corpus_failures_in_run, record_stored
from embedding_core.memory import release_free_heap
from embedding_core.snapshot import require_current_snapshot

# Re-embed a partition when its embeddings are missing while its corpus exists, when the
# model snapshot got a new data version (a new revision), or when this asset's code_version
# changed. A corpus partition the landing sensor's run already embedded is not re-requested:
# `embed_corpus` materializes both in one run. Decisions show under the asset's Automation tab.
EMBEDDINGS_AUTOMATION = (
    (
        AutomationCondition.missing().newly_true()
        | AutomationCondition.code_version_changed()
        | AutomationCondition.any_deps_match(AutomationCondition.data_version_changed())
        .allow(AssetSelection.assets(model_snapshot))
    ).since_last_handled()
    & ~AutomationCondition.any_deps_missing()
    & ~AutomationCondition.any_deps_in_progress()
    & ~AutomationCondition.in_progress()
).with_label("missing, new model revision or new code_version")


@shard_asset(
    deps=[corpus, model_snapshot],
    group_name="vectors",
    kinds={"parquet", "duckdb"},
    owners=ASSET_OWNERS,
    tags=ASSET_TAGS,
    code_version="1",
    automation_condition=EMBEDDINGS_AUTOMATION,
)
def embeddings(
    context: AssetExecutionContext,
    encoder: EncoderResource,
    embedding_store: EmbeddingStoreResource,
) -> MaterializeResult:
    """Sentence embeddings of one corpus shard, versioned by model revision, encoding
    parameters and corpus version.

    Texts already embedded with the same revision and parameters (in any shard) are reused;
    an unchanged shard is not re-encoded at all. A partition that fails (or whose corpus
    file this run could not store) does not stop the others: they are stored and recorded,
    then the step fails naming every failed partition (`embedding_assets.shards`). The checks
    of the stored vectors (`embedding_assets.checks`) run after this step, one result per
    partition.
    """
    store, config = embedding_store.open(), encoder.open()
    snapshot = require_current_snapshot(store, config.model_name, config.revision)
    params = config.params(snapshot)
    version_ids = []
    failures = ShardFailures("embeddings", context.partition_keys, context.log)
    for partition_key, reason in corpus_failures_in_run(context, context.partition_keys).items():
        failures.add(partition_key, reason)
    stored_metadata = {}
    with config.session(snapshot, params, log=context.log.info) as session:
        for partition_key in context.partition_keys:
            if partition_key in failures.errors:
                continue
            # The previous shard's temporaries are freed: give their pages back first, so
            # RSS does not ratchet up shard after shard (`embedding_core.memory`).
            release_free_heap()
            with failures.attempt(partition_key):
                corpus_version = store.corpus_version(partition_key)
                if corpus_version is None:
                    raise RuntimeError(f"corpus partition {partition_key!r} is not in the store; "
                                       "materialize corpus for it first")
                result = store.write_embeddings(partition_key, corpus_version, snapshot, params,
                                                session.encode, run_id=context.run.run_id)
                ids, vectors = store.read_embeddings(result.version)
                if result.version.rows == 0:
                    context.log.warning(f"{partition_key}: the corpus shard has no rows; an empty "
                                        "embeddings version is stored")
                version_ids.append(result.version.version_id)
                stored_metadata[partition_key] = embeddings_metadata(result, ids, vectors, store)
                context.add_asset_metadata(stored_metadata[partition_key], partition_key=partition_key)
                context.log.info(f"{partition_key}: {result.version.rows} rows ({result.encoded_rows} encoded, "
                                 f"{result.reused_rows} reused), version {result.version.version_id} "
                                 f"(lake snapshot {result.version.snapshot_id})")
                del result, ids, vectors  # this shard's vectors, before the next one
    if failures.errors:
        record_stored(context, "embeddings", stored_metadata)
        failures.raise_if_any()
    return MaterializeResult(data_version=single_data_version(version_ids))
