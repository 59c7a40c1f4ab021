"""`corpus`: one landing file per partition -> a normalized, versioned Parquet shard."""

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    asset,
)

from embedding_assets.metadata import markdown_table
from embedding_assets.partitions import backfill_policy, corpus_partitions
from embedding_assets.resources import CorpusSourceResource, EmbeddingStoreResource

ROWS_VALID_CHECK = "rows_valid"


@asset(
    partitions_def=corpus_partitions,
    backfill_policy=backfill_policy,
    group_name="embeddings",
    kinds={"parquet", "duckdb"},
    check_specs=[
        AssetCheckSpec(
            ROWS_VALID_CHECK, asset="corpus",
            description="Every source row was usable: no invalid JSON, missing ids, empty "
            "or non-text texts.",
        )
    ],
)
def corpus(
    context: AssetExecutionContext,
    corpus_source: CorpusSourceResource,
    embedding_store: EmbeddingStoreResource,
) -> MaterializeResult:
    """Normalized corpus shard (`id`, `text`, `text_sha256`) of one landing file.

    Its data version is the content hash of the ids and texts, so an unchanged file does
    not make its embeddings stale. Rejected rows are left out and counted; a file that
    cannot be read, or that repeats an id, fails the step before any shard of the run is
    stored, so the current versions stay as they were.
    """
    store = embedding_store.open()
    shards = {partition_key: corpus_source.read(partition_key)
              for partition_key in context.partition_keys}
    rejected: dict[str, dict[str, int]] = {}
    versions = []
    for partition_key, shard in shards.items():
        if shard.rejected:
            rejected[partition_key] = shard.rejected_counts()
            context.log.warning(
                f"{len(shard.rejected)} row(s) of {partition_key} left out:\n"
                + shard.rejection_report()
            )
        version = store.write_corpus(
            partition_key, shard.table, source_uri=corpus_source.uri(partition_key),
            rejected_rows=len(shard.rejected), run_id=context.run.run_id,
        )
        versions.append(version)
        preview = shard.table.slice(0, 5).select(["id", "text"]).to_pylist()
        context.add_asset_metadata(
            {
                "rows": version.rows,
                "rejected_rows": version.rejected_rows,
                "rejected_by_reason": shard.rejected_counts(),
                "bytes": version.bytes,
                "corpus_version": version.corpus_version,
                "lake_snapshot": version.snapshot_id,
                "source": MetadataValue.path(version.source_uri),
                "preview": markdown_table(["id", "text"], [(r["id"], r["text"]) for r in preview]),
            },
            partition_key=partition_key,
        )
        context.log.info(f"{partition_key}: {version.rows} rows, corpus version "
                         f"{version.corpus_version[:16]} (lake snapshot {version.snapshot_id})")
    return MaterializeResult(
        data_version=DataVersion(versions[0].corpus_version) if len(versions) == 1 else None,
        check_results=[
            AssetCheckResult(
                check_name=ROWS_VALID_CHECK, passed=not rejected,
                severity=AssetCheckSeverity.WARN,
                metadata={"rejected_by_partition": rejected},
            )
        ],
    )
