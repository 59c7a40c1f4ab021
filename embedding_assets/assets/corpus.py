"""`corpus`: the landing files of a bucket -> their normalized, versioned corpus shards.

The asset is one of the two specs of `landing_buckets` (`embedding_assets.assets.buckets`);
`ingest` is its half of that step.
"""

from dagster import AssetCheckSeverity, AssetKey, AssetSpec

from embedding_assets.checks import partition_check_spec, partition_evaluation
from embedding_assets.metadata import bucket_corpus_metadata
from embedding_assets.partitions import ASSET_OWNERS, ASSET_TAGS, LANDING_BUCKETS
from embedding_assets.shards import BucketResult, ShardFailures, bucket_data_version
from embedding_core.landing_sync import sync_buckets

CORPUS = AssetKey("corpus")
ROWS_VALID_CHECK = "rows_valid"

CORPUS_SPEC = AssetSpec(
    CORPUS, group_name="ingest", kinds={"parquet", "duckdb"}, owners=ASSET_OWNERS, tags=ASSET_TAGS,
    skippable=True,  # each bucket is recorded on its own (`landing_buckets`)
    description="""Normalized corpus shards (`id`, `text`, `text_sha256`) of the landing files of
    each bucket: one store partition, with its own versions, per landing file.

    Only new and changed files are read (a file whose size and modification time match its
    `landing_files` record is not); every change of the run commits at once. A file that
    left the folder keeps its rows unless its content is still there under another name
    or `on_delete` is 'retire' (`embedding_core.landing_sync`). A file that cannot be read,
    or that repeats an id, stores nothing (its current version stays); its bucket fails, the
    other buckets are stored and recorded.""",
)

ROWS_VALID_SPEC = partition_check_spec(
    ROWS_VALID_CHECK, "corpus", "Every source row of the landing files read in this bucket "
    "was usable: no invalid JSON, missing ids, empty or non-text texts (a warning: the usable "
    "rows are stored).")


def ingest(context, corpus_source, store, failures: ShardFailures) -> dict[str, BucketResult]:
    """Sync the step's buckets from the landing folder (one commit); bucket -> its result for
    each bucket that did not fail (a failed one is in `failures`, naming the file)."""
    buckets = failures.partition_keys
    report = sync_buckets(corpus_source.open(), store, buckets, LANDING_BUCKETS,
                          on_delete=corpus_source.on_delete, run_id=context.run.run_id)
    for key, reason in report.failed.items():
        failures.add(report.bucket_of[key], f"{key}: {reason}", append=True)
    for key, shard in report.shards.items():
        if shard.rejected:
            context.log.warning(f"{len(shard.rejected)} row(s) of {key} left out:\n" + shard.rejection_report())
    for key, why in report.retired.items():
        context.log.info(f"{key}: retired ({why})")
    if report.deleted:
        context.log.info(f"{len(report.deleted)} file(s) gone from the landing folder, rows kept: "
                         f"{', '.join(report.deleted[:10])}{' ...' if len(report.deleted) > 10 else ''}")
    context.log.info(f"{len(report.stored)} file(s) read and stored, {len(report.unchanged)} unchanged, "
                     f"{len(report.deleted)} deleted (kept), {len(report.retired)} retired, "
                     f"{len(report.failed)} failed, in {len(buckets)} bucket(s)")
    results = {}
    for bucket in buckets:
        keys = report.in_bucket(bucket)
        read = {key: report.shards[key] for key in keys if key in report.shards}
        rejected = {key: len(shard.rejected) for key, shard in read.items() if shard.rejected}
        counts: dict[str, int] = {}
        for key in rejected:
            for reason, count in read[key].rejected_counts().items():
                counts[reason] = counts.get(reason, 0) + count
        evaluation = partition_evaluation(
            None, CORPUS, ROWS_VALID_CHECK, bucket, passed=not rejected, severity=AssetCheckSeverity.WARN,
            metadata={"files_read": len(read), "rejected_rows": sum(rejected.values()),
                      "rejected_by_reason": counts, "files_with_rejected_rows": sorted(rejected)[:20]})
        if bucket not in failures.errors:
            versions = {key: report.current[key].corpus_version for key in keys if key in report.current}
            results[bucket] = BucketResult(bucket_corpus_metadata(bucket, report, report.current, store),
                                           bucket_data_version(versions), [evaluation])
    return results
