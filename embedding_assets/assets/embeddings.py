"""`embeddings`: every landing file of a bucket encoded with the current model snapshot,
stored as new immutable versions (one per changed file) in one commit per bucket.

The asset is one of the two specs of `landing_buckets` (`embedding_assets.assets.buckets`);
`embed` is its half of that step."""

from dagster import AssetKey, AssetSelection, AssetSpec, AutomationCondition

from embedding_assets.assets.corpus import CORPUS
from embedding_assets.checks import (
    EMBEDDINGS,
    SHARD_CHECKS,
    partition_check_spec,
    shard_check_evaluations,
    truncation_evaluation,
)
from embedding_assets.metadata import bucket_embeddings_metadata
from embedding_assets.partitions import ASSET_OWNERS, ASSET_TAGS, LANDING_BUCKETS
from embedding_assets.problems import StoredShard
from embedding_assets.shards import BucketResult, ShardFailures, bucket_data_version
from embedding_core.landing_sync import bucket_state, bucket_texts
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
        .allow(AssetSelection.assets("model_snapshot"))
    ).since_last_handled()
    & ~AutomationCondition.any_deps_missing()
    & ~AutomationCondition.any_deps_in_progress()
    & ~AutomationCondition.in_progress()
).with_label("missing, new model revision or new code_version")


EMBEDDINGS_SPEC = AssetSpec(
    EMBEDDINGS, deps=[CORPUS, AssetKey("model_snapshot")], group_name="vectors",
    kinds={"parquet", "duckdb"}, owners=ASSET_OWNERS, tags=ASSET_TAGS, code_version="2",
    automation_condition=EMBEDDINGS_AUTOMATION,
    skippable=True,  # each bucket is recorded on its own (`landing_buckets`)
    description="""Sentence embeddings of the landing files of each bucket, versioned by model
    revision, encoding parameters and each file's corpus version.

    Texts already embedded with the same revision and parameters (in any file) are reused;
    a file whose version is stored already is not re-encoded at all. Each bucket is one
    encode call and one commit, whose connection reads the versions written back once: what
    the metadata and the four shard checks (one result per bucket) judge. Texts longer than
    the model's max_seq_length are cut by the encoder: the metadata counts them over every
    text of the bucket (truncated_texts, truncated_share, dropped_token_share) and the
    texts_fit_max_seq_length check warns when there are any. With chunking on
    (EMBEDDING_CHUNK_TOKENS, EMBEDDING_CHUNK_OVERLAP) each text is split into token windows
    instead, a row per chunk (documents, chunks), and nothing is cut. A bucket that fails
    (or whose corpus failed in this run) does not stop the others: they are stored and
    recorded, then the step fails naming every failed bucket and file.""",
)

SHARD_CHECK_SPECS = [partition_check_spec(check.name, "embeddings", check.description) for check in SHARD_CHECKS]


def embed(context, encoder, store, buckets, failures: ShardFailures) -> dict[str, BucketResult]:
    """Encode and store the landing files of `buckets` with the current model snapshot;
    bucket -> its result for each bucket that did not fail (a failed one is in `failures`)."""
    config = encoder.open()
    snapshot = require_current_snapshot(store, config.model_name, config.revision)
    params = config.params(snapshot)
    files, corpora = bucket_state(store, buckets, LANDING_BUCKETS)
    for check in SHARD_CHECKS:
        if not check.applies(params):
            context.log.info(f"{check.name} does not apply ({params.precision}, normalize_embeddings="
                             f"{params.normalize_embeddings}); not evaluated")
    done = {}
    with config.session(snapshot, params, log=context.log.info) as session:
        for bucket in buckets:
            # The previous bucket's temporaries are freed: give their pages back first, so
            # RSS does not ratchet up bucket after bucket (`embedding_core.memory`).
            release_free_heap()
            with failures.attempt(bucket):
                bucket_corpora = [corpora[key] for key in files[bucket] if key in corpora]
                results = store.write_embeddings_batch(
                    bucket_corpora, snapshot, params, session.encode, run_id=context.run.run_id, read_back=True,
                    chunker=session.chunk if params.chunked else None)
                shards = [StoredShard(result.version, result.stored.ids, result.stored.vectors,
                                      result.stored.corpus_ids, snapshot, params, result.stored.chunks)
                          for result in results if result.stored is not None]
                # Every text of the bucket, reused ones too: what is cut is a property of the texts.
                truncation = session.truncation(bucket_texts(store, bucket_corpora))
                # No target yet: this step's materialization of the bucket is not recorded.
                evaluations = [*shard_check_evaluations(None, bucket, shards, params),
                               truncation_evaluation(None, bucket, truncation, params)]
                versions = {result.version.partition: result.version.version_id for result in results}
                documents = sum(corpus.rows for corpus in bucket_corpora) if params.chunked else None
                done[bucket] = BucketResult(bucket_embeddings_metadata(results, store, truncation, documents),
                                            bucket_data_version(versions), evaluations)
                cut = (f", {truncation.truncated_texts} of {truncation.texts} texts "
                       f"{'split into chunks' if params.chunked else 'cut'} at {truncation.max_seq_length} tokens"
                       if truncation.truncated_texts else "")
                context.log.info(
                    f"{bucket}: {len(results)} file(s), {len(shards)} new version(s), "
                    f"{sum(r.encoded_rows for r in results)} {'chunks' if params.chunked else 'texts'} encoded, "
                    f"{sum(r.reused_rows for r in results)} rows reused{cut}")
                del results, shards  # this bucket's vectors, before the next one
    return done
