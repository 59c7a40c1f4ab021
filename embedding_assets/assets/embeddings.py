"""`embeddings`: every corpus shard encoded with the current model snapshot, stored as a new
immutable version and registered in the catalog."""

import numpy as np
import pyarrow as pa
from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    asset,
)

from embedding_assets.assets.corpus import corpus
from embedding_assets.assets.model_snapshot import model_snapshot
from embedding_assets.checks import SHARD_CHECKS, StoredShard, shard_check_results
from embedding_assets.metadata import markdown_table
from embedding_assets.partitions import backfill_policy, corpus_partitions
from embedding_assets.resources import EmbeddingStoreResource, EncoderResource
from embedding_core.store import EmbeddingVersion


@asset(
    partitions_def=corpus_partitions,
    deps=[corpus, model_snapshot],
    backfill_policy=backfill_policy,
    group_name="embeddings",
    kinds={"parquet", "duckdb"},
    code_version="1",
    # Each runs on the files the step just stored, read back (embedding_assets.checks).
    check_specs=[AssetCheckSpec(check.name, asset="embeddings", description=check.description)
                 for check in SHARD_CHECKS],
)
def embeddings(
    context: AssetExecutionContext,
    encoder: EncoderResource,
    embedding_store: EmbeddingStoreResource,
) -> MaterializeResult:
    """Sentence embeddings of one corpus shard, versioned by model revision, encoding
    parameters and corpus version.

    Texts already embedded with the same revision and parameters (in any shard) are reused;
    an unchanged shard is not re-encoded at all.
    """
    store = embedding_store.open()
    snapshot = store.current_model_snapshot(encoder.model_name)
    if snapshot is None:
        raise RuntimeError(f"no model snapshot of {encoder.model_name!r} in {store.catalog_label}; "
                           "materialize model_snapshot first")
    if (snapshot.requested_revision or None) != encoder.revision:
        raise RuntimeError(
            f"the current model_snapshot of {encoder.model_name!r} was resolved from revision "
            f"{snapshot.requested_revision!r}, but {encoder.revision!r} is configured; "
            "materialize model_snapshot first"
        )
    params = encoder.params(snapshot)
    stored_shards: list[StoredShard] = []
    versions: list[EmbeddingVersion] = []
    with encoder.encoder(snapshot, params, log=context.log.info) as encode:
        for partition_key in context.partition_keys:
            corpus_version = store.corpus_version(partition_key)
            if corpus_version is None:
                raise RuntimeError(f"corpus partition {partition_key!r} is not in the store; "
                                   "materialize corpus for it first")
            result = store.write_embeddings(partition_key, corpus_version, snapshot, params,
                                            encode, run_id=context.run.run_id)
            version = result.version
            versions.append(version)
            ids, vectors = store.read_embeddings(version)
            stored_shards.append(StoredShard(
                version=version, ids=ids.column("id").to_pylist(), vectors=vectors,
                corpus_ids=store.read_corpus(corpus_version).column("id").to_pylist(),
                snapshot=snapshot, params=params,
            ))
            rate = result.encoded_rows / result.encode_seconds if result.encode_seconds else None
            context.add_asset_metadata(
                {
                    "rows": version.rows,
                    "encoded_rows": result.encoded_rows,
                    "reused_rows": result.reused_rows,
                    "new_version": result.created,
                    "bytes": version.bytes,
                    "model": version.model,
                    "revision": version.revision,
                    "dim": version.dim,
                    "dtype": version.dtype,
                    "params_hash": version.params_hash,
                    "params": version.params,
                    "corpus_version": version.corpus_version,
                    "version_id": version.version_id,
                    "sentences_per_second": round(rate, 1) if rate else None,
                    "encode_seconds": round(result.encode_seconds, 3),
                    "lake_snapshot": version.snapshot_id,
                    "store": MetadataValue.path(store.root),
                    "catalog": store.catalog_label,
                    "preview": _preview(ids, vectors),
                },
                partition_key=partition_key,
            )
            context.log.info(
                f"{partition_key}: {version.rows} rows ({result.encoded_rows} encoded, "
                f"{result.reused_rows} reused), version {version.version_id} (lake snapshot "
                f"{version.snapshot_id})"
            )
    return MaterializeResult(
        data_version=DataVersion(versions[0].version_id) if len(versions) == 1 else None,
        check_results=shard_check_results(stored_shards),
    )


def _preview(ids: pa.Table, vectors: np.ndarray, rows: int = 5) -> MetadataValue:
    head = [
        (row_id, sha[:12], np.array2string(vector[:4], precision=4, separator=", "),
         round(float(np.linalg.norm(vector.astype(np.float32))), 4))
        for row_id, sha, vector in zip(ids.column("id").to_pylist()[:rows],
                                       ids.column("text_sha256").to_pylist()[:rows],
                                       vectors[:rows], strict=True)
    ]
    return markdown_table(["id", "text_sha256", "embedding[:4]", "norm"], head)
