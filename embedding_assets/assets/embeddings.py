"""`embeddings`: every landing file of a bucket encoded with the current model snapshot,
stored as new immutable versions (one per changed file) in one commit per bucket."""

from collections.abc import Iterator

from dagster import (
    AssetCheckKey,
    AssetExecutionContext,
    AssetSelection,
    AutomationCondition,
    MaterializeResult,
)

from embedding_assets.assets.corpus import corpus
from embedding_assets.assets.model_snapshot import model_snapshot
from embedding_assets.checks import (
    EMBEDDINGS,
    SHARD_CHECKS,
    check_output,
    partition_check_spec,
    retargeted,
    shard_check_evaluations,
)
from embedding_assets.metadata import bucket_embeddings_metadata
from embedding_assets.partitions import ASSET_OWNERS, ASSET_TAGS, LANDING_BUCKETS, shard_asset
from embedding_assets.problems import StoredShard
from embedding_assets.resources import EmbeddingStoreResource, EncoderResource
from embedding_assets.shards import ShardFailures, corpus_failures_in_run, record_stored
from embedding_core.landing_sync import bucket_state
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
    code_version="2",
    automation_condition=EMBEDDINGS_AUTOMATION,
    check_specs=[partition_check_spec(check.name, "embeddings", check.description)
                 for check in SHARD_CHECKS],
)
def embeddings(
    context: AssetExecutionContext,
    encoder: EncoderResource,
    embedding_store: EmbeddingStoreResource,
) -> Iterator:
    """Sentence embeddings of the landing files of each bucket, versioned by model revision,
    encoding parameters and each file's corpus version.

    Texts already embedded with the same revision and parameters (in any file) are reused;
    a file whose version is stored already is not re-encoded at all. Each bucket is one
    encode call and one commit, whose connection reads the versions written back once: what
    the metadata and the four shard checks (one result per bucket) judge. A bucket that fails (or holds a file
    this run could not read) does not stop the others: they are stored and recorded, then
    the step fails naming every failed bucket and file (`embedding_assets.shards`).
    """
    store, config = embedding_store.open(), encoder.open()
    snapshot = require_current_snapshot(store, config.model_name, config.revision)
    params = config.params(snapshot)
    buckets = context.partition_keys
    failures = ShardFailures("embeddings", buckets, context.log)
    files, corpora = bucket_state(store, buckets, LANDING_BUCKETS)
    stored_metadata, evaluations = {}, []
    for check in SHARD_CHECKS:
        if not check.applies(params):
            context.log.info(f"{check.name} does not apply ({params.precision}, normalize_embeddings="
                             f"{params.normalize_embeddings}); not evaluated")
    with config.session(snapshot, params, log=context.log.info) as session:
        for bucket in buckets:
            # The previous bucket's temporaries are freed: give their pages back first, so
            # RSS does not ratchet up bucket after bucket (`embedding_core.memory`).
            release_free_heap()
            with failures.attempt(bucket):
                bucket_corpora = [corpora[key] for key in files[bucket] if key in corpora]
                results = store.write_embeddings_batch(bucket_corpora, snapshot, params, session.encode,
                                                       run_id=context.run.run_id, read_back=True)
                shards = [StoredShard(result.version, result.stored.ids, result.stored.vectors,
                                      result.stored.corpus_ids, snapshot, params)
                          for result in results if result.stored is not None]
                # No target yet: this step's materialization of the bucket is not recorded.
                evaluations += shard_check_evaluations(None, bucket, shards, params)
                stored_metadata[bucket] = bucket_embeddings_metadata(results, store)
                context.add_asset_metadata(stored_metadata[bucket], partition_key=bucket)
                context.log.info(
                    f"{bucket}: {len(results)} file(s), {len(shards)} new version(s), "
                    f"{sum(r.encoded_rows for r in results)} texts encoded, "
                    f"{sum(r.reused_rows for r in results)} rows reused")
                del results, shards  # this bucket's vectors, before the next one
    for bucket, reason in corpus_failures_in_run(context, buckets).items():
        failures.add(bucket, reason, append=True)
    if failures.errors:
        record_stored(context, "embeddings", {bucket: metadata for bucket, metadata in stored_metadata.items()
                                              if bucket not in failures.errors})
        for evaluation in retargeted(context.instance, evaluations):
            context.log_event(evaluation)
        failures.raise_if_any()
    yield MaterializeResult()
    for check in SHARD_CHECKS:
        yield check_output(context, AssetCheckKey(EMBEDDINGS, check.name))
    # Each pointing at the materialization just recorded for its bucket.
    yield from retargeted(context.instance, evaluations)
