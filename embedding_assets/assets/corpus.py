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
    check, per partition); a file that cannot be read, or that repeats an id, fails the step
    before any shard of the run is stored, so the current versions stay as they were.
    """
    store = embedding_store.open()
    landing = corpus_source.open()
    files = landing.files(context.partition_keys)
    shards = {partition_key: landing.read(file) for partition_key, file in files.items()}
    versions = {}
    for partition_key, shard in shards.items():
        if shard.rejected:
            context.log.warning(f"{len(shard.rejected)} row(s) of {partition_key} left out:\n"
                                + shard.rejection_report())
        if shard.table.num_rows == 0:
            context.log.warning(f"{partition_key}: {files[partition_key].uri} has no usable row; "
                                "an empty corpus version is stored (its embeddings will be empty)")
        version = store.write_corpus(
            partition_key, shard.table, source_uri=files[partition_key].uri,
            rejected_rows=len(shard.rejected), run_id=context.run.run_id,
        )
        versions[partition_key] = version.corpus_version
        context.add_asset_metadata(corpus_metadata(version, shard, store), partition_key=partition_key)
        context.log.info(f"{partition_key}: {version.rows} rows, corpus version "
                         f"{version.corpus_version[:16]} (lake snapshot {version.snapshot_id})")
    yield MaterializeResult(data_version=single_data_version(list(versions.values())))
    # One rows_valid result per partition, each pointing at that partition's materialization.
    yield check_output(context, AssetCheckKey(AssetKey("corpus"), ROWS_VALID_CHECK))
    for partition_key, shard in shards.items():
        yield partition_evaluation(
            context.instance, AssetKey("corpus"), ROWS_VALID_CHECK, partition_key,
            passed=not shard.rejected, severity=AssetCheckSeverity.WARN,
            metadata={"rejected_rows": len(shard.rejected),
                      "rejected_by_reason": shard.rejected_counts()})
