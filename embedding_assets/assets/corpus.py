"""`corpus`: one landing file per partition -> a normalized, versioned Parquet shard."""

from collections.abc import Iterator

from dagster import (
    AssetCheckKey,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    MaterializeResult,
)

from embedding_assets.checks import check_output, partition_check_spec, partition_evaluation
from embedding_assets.metadata import corpus_metadata, single_data_version
from embedding_assets.partitions import ASSET_OWNERS, ASSET_TAGS, shard_asset
from embedding_assets.resources import CorpusSourceResource, EmbeddingStoreResource
from embedding_assets.shards import ShardFailures, end_corpus_step, resolve_files

ROWS_VALID_CHECK = "rows_valid"


@shard_asset(
    group_name="ingest",
    kinds={"parquet", "duckdb"},
    owners=ASSET_OWNERS,
    tags=ASSET_TAGS,
    check_specs=[partition_check_spec(
        ROWS_VALID_CHECK, "corpus", "Every source row of the partition's landing file was "
        "usable: no invalid JSON, missing ids, empty or non-text texts (a warning: the usable "
        "rows are stored).")],
)
def corpus(
    context: AssetExecutionContext,
    corpus_source: CorpusSourceResource,
    embedding_store: EmbeddingStoreResource,
) -> Iterator:
    """Normalized corpus shard (`id`, `text`, `text_sha256`) of one landing file.

    Its data version is the content hash of the ids and texts, so an unchanged file does
    not make its embeddings stale. Rejected rows are left out and counted (the `rows_valid`
    check, per partition); a file that cannot be read, or that repeats an id, stores nothing
    for its partition (its current version stays) while the other partitions of the run are
    stored, and the run fails naming every such file (`embedding_assets.shards`).
    """
    store = embedding_store.open()
    landing = corpus_source.open()
    failures = ShardFailures("corpus", context.partition_keys, context.log)
    files = resolve_files(landing, failures)
    shards, versions = {}, {}
    for partition_key, file in files.items():
        with failures.attempt(partition_key, source=file.uri):
            shard = landing.read(file)
            if shard.rejected:
                context.log.warning(f"{len(shard.rejected)} row(s) of {partition_key} left out:\n"
                                    + shard.rejection_report())
            if shard.table.num_rows == 0:
                context.log.warning(f"{partition_key}: {file.uri} has no usable row; an empty "
                                    "corpus version is stored (its embeddings will be empty)")
            version = store.write_corpus(
                partition_key, shard.table, source_uri=file.uri,
                rejected_rows=len(shard.rejected), run_id=context.run.run_id,
            )
            shards[partition_key] = shard
            versions[partition_key] = version.corpus_version
            context.add_asset_metadata(corpus_metadata(version, shard, store),
                                       partition_key=partition_key)
            context.log.info(f"{partition_key}: {version.rows} rows, corpus version "
                             f"{version.corpus_version[:16]} (lake snapshot {version.snapshot_id})")
    end_corpus_step(context, failures)
    yield MaterializeResult(data_version=single_data_version(list(versions.values()))
                            if not failures.errors else None)
    # One rows_valid result per stored partition, each pointing at its materialization.
    yield check_output(context, AssetCheckKey(AssetKey("corpus"), ROWS_VALID_CHECK))
    for partition_key, shard in shards.items():
        yield partition_evaluation(
            context.instance, AssetKey("corpus"), ROWS_VALID_CHECK, partition_key,
            passed=not shard.rejected, severity=AssetCheckSeverity.WARN,
            metadata={"rejected_rows": len(shard.rejected),
                      "rejected_by_reason": shard.rejected_counts()})
