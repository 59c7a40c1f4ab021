"""`landing_buckets`: the one step that materializes `corpus` and `embeddings` of a range of
landing buckets, either or both (it can be subset).

Each bucket is recorded on its own (`embedding_assets.shards`): in a run of four buckets
with one bad file, three buckets of both assets are materialized and the fourth is failed, and
each materialization carries its bucket's data version, so staleness is right per bucket.
"""

from collections.abc import Iterator

from dagster import AssetCheckKey, AssetExecutionContext, AssetKey, AssetRecordsFilter, multi_asset

from embedding_assets.assets.corpus import CORPUS, CORPUS_SPEC, ROWS_VALID_SPEC, ingest
from embedding_assets.assets.embeddings import EMBEDDINGS_SPEC, SHARD_CHECK_SPECS, embed
from embedding_assets.checks import (
    EMBEDDINGS,
    MATCH_MODEL_SPEC,
    TRUNCATION_SPEC,
    check_output,
    embeddings_match_model,
    match_model_evaluations,
    retargeted,
)
from embedding_assets.partitions import backfill_policy, corpus_partitions, quiet_beta
from embedding_assets.resources import CorpusSourceResource, EmbeddingStoreResource, EncoderResource
from embedding_assets.shards import DATA_VERSION_TAG, ShardFailures, record

with quiet_beta():
    @multi_asset(
        name="landing_buckets",
        specs=[CORPUS_SPEC, EMBEDDINGS_SPEC],
        check_specs=[ROWS_VALID_SPEC, *SHARD_CHECK_SPECS, TRUNCATION_SPEC, MATCH_MODEL_SPEC],
        partitions_def=corpus_partitions,
        backfill_policy=backfill_policy,
        can_subset=True,
    )
    def landing_buckets(
        context: AssetExecutionContext,
        corpus_source: CorpusSourceResource,
        encoder: EncoderResource,
        embedding_store: EmbeddingStoreResource,
    ) -> Iterator:
        """Sync the landing files of each bucket into the store (`corpus`), then encode them
        (`embeddings`); each bucket recorded on its own, the bad ones named at the end."""
        store = embedding_store.open()
        buckets = context.partition_keys
        selected = context.selected_asset_keys
        failures = ShardFailures(" + ".join(key.to_user_string() for key in sorted(selected)), buckets,
                                 context.log)
        checks = context.selected_asset_check_keys
        yielded = set()

        def flush(evaluations):
            """Yield the check outputs of `evaluations` and them, pointing at this step's
            materializations: the first yield writes every event logged before it."""
            for key in sorted({AssetCheckKey(e.asset_key, e.check_name) for e in evaluations} - yielded,
                              key=str):
                yielded.add(key)
                yield check_output(context, key)
            yield from retargeted(context.instance, evaluations)

        # Every bucket, a bucket whose corpus failed included: its good files are stored all the
        # same; it is not recorded, as what it holds is not its landing files.
        if CORPUS in selected:
            todo = ShardFailures(failures.asset, buckets, context.log)
            done = ingest(context, corpus_source, store, todo)
            for bucket, result in done.items():
                record(context, CORPUS, bucket, result, CORPUS_SPEC.code_version)
            failures.errors.update(todo.errors)
            yield from flush([e for result in done.values() for e in result.evaluations
                              if AssetCheckKey(e.asset_key, e.check_name) in checks])
        if EMBEDDINGS in selected:
            todo = ShardFailures(failures.asset, buckets, context.log)
            done = embed(context, encoder, store, buckets, todo)
            model = latest_pointer(context, AssetKey("model_snapshot"))
            code_version = context.assets_def.specs_by_key[EMBEDDINGS].code_version
            for bucket, result in done.items():
                if bucket not in failures.errors:
                    result.inputs = {"model_snapshot": model, "corpus": latest_pointer(context, CORPUS, bucket)}
                    record(context, EMBEDDINGS, bucket, result, code_version)
            for bucket, reason in todo.errors.items():
                failures.add(bucket, reason, append=True, log=False)
            yield from flush([e for bucket, result in done.items() if bucket not in failures.errors
                              for e in result.evaluations if AssetCheckKey(e.asset_key, e.check_name) in checks])
        for key in sorted(checks - yielded, key=str):  # the ones with no evaluation in this run
            yield check_output(context, key)
        if embeddings_match_model in checks:  # after the writes, on them
            yield from match_model_evaluations(context, encoder, embedding_store,
                                               [b for b in buckets if b not in failures.errors])
        failures.raise_if_any()


def latest_pointer(context, asset: AssetKey, partition: str | None = None) -> tuple[str, int | None]:
    """(data version, storage id) of the latest materialization of `asset` (of `partition`):
    what an `embeddings` materialization records it was made from."""
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset, asset_partitions=[partition] if partition else None), limit=1).records
    if not records:
        return "", None
    return records[0].asset_materialization.tags.get(DATA_VERSION_TAG, ""), records[0].storage_id
