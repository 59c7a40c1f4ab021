"""`corpus`: one landing file per partition -> a normalized, versioned Parquet shard."""

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    asset,
)

from embedding_assets.metadata import corpus_metadata, single_data_version
from embedding_assets.partitions import backfill_policy, corpus_partitions
from embedding_assets.resources import CorpusSourceResource, EmbeddingStoreResource
from embedding_assets.shards import ShardFailures, end_corpus_step, resolve_files

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
    cannot be read, or that repeats an id, stores nothing for its partition (its current
    version stays) while the other partitions of the run are stored, and the run fails
    naming every such file (`embedding_assets.shards`).
    """
    store = embedding_store.open()
    landing = corpus_source.open()
    failures = ShardFailures("corpus", context.partition_keys, context.log)
    files = resolve_files(landing, failures)
    rejected, versions = {}, []
    for partition_key, file in files.items():
        with failures.attempt(partition_key, source=file.uri):
            shard = landing.read(file)
            if shard.rejected:
                rejected[partition_key] = shard.rejected_counts()
                context.log.warning(f"{len(shard.rejected)} row(s) of {partition_key} left out:\n"
                                    + shard.rejection_report())
            if shard.table.num_rows == 0:
                context.log.warning(f"{partition_key}: {file.uri} has no usable row; an empty "
                                    "corpus version is stored (its embeddings will be empty)")
            version = store.write_corpus(
                partition_key, shard.table, source_uri=file.uri,
                rejected_rows=len(shard.rejected), run_id=context.run.run_id,
            )
            versions.append(version.corpus_version)
            context.add_asset_metadata(corpus_metadata(version, shard), partition_key=partition_key)
            context.log.info(f"{partition_key}: {version.rows} rows, corpus version "
                             f"{version.corpus_version[:16]} (lake snapshot {version.snapshot_id})")
    end_corpus_step(context, failures)
    return MaterializeResult(
        data_version=single_data_version(versions) if not failures.errors else None,
        check_results=[AssetCheckResult(check_name=ROWS_VALID_CHECK, passed=not rejected,
                                        severity=AssetCheckSeverity.WARN,
                                        metadata={"rejected_by_partition": rejected})],
    )
