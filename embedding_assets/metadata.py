"""What the Dagster UI shows for each asset: metadata built from stored records."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from dagster import DataVersion, MetadataValue

from embedding_core.corpus import CorpusShard
from embedding_core.store import CorpusVersion, EmbeddingStore, EmbeddingWriteResult, ModelSnapshot

PREVIEW_ROWS = 5


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]], max_chars: int = 80) -> MetadataValue:
    """A markdown table for a preview; long cells are cut to `max_chars`."""

    def cell(value: object) -> str:
        text = str(value).replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= max_chars else text[: max_chars - 1] + "…"

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return MetadataValue.md("\n".join(lines))


def single_data_version(versions: Sequence[str]) -> DataVersion | None:
    """The data version of a one-partition run; a run of several partitions records none."""
    return DataVersion(versions[0]) if len(versions) == 1 else None


def corpus_metadata(version: CorpusVersion, shard: CorpusShard) -> dict[str, object]:
    """Rows, rejections, size, version, where it came from and went, and a preview."""
    preview = shard.table.slice(0, PREVIEW_ROWS).select(["id", "text"]).to_pylist()
    return {
        "rows": version.rows,
        "rejected_rows": version.rejected_rows,
        "rejected_by_reason": shard.rejected_counts(),
        "bytes": version.bytes,
        "corpus_version": version.corpus_version,
        "lake_snapshot": version.snapshot_id,
        "source": MetadataValue.path(version.source_uri),
        "preview": markdown_table(["id", "text"], [(row["id"], row["text"]) for row in preview]),
    }


def snapshot_metadata(snapshot: ModelSnapshot) -> dict[str, object]:
    """The pinned revision and what the model is: dimension, length limit, pooling, prompts."""
    return {
        "model": snapshot.model,
        "revision": snapshot.revision,
        "requested_revision": snapshot.requested_revision or "(default)",
        "source": snapshot.source,
        "path": MetadataValue.path(snapshot.path),
        "files_hash": snapshot.files_hash,
        "dim": snapshot.dim,
        "max_seq_length": snapshot.max_seq_length,
        "pooling": ", ".join(snapshot.pooling),
        "prompts": snapshot.prompts,
        "similarity_fn": snapshot.similarity_fn,
    }


def embeddings_metadata(result: EmbeddingWriteResult, ids: pa.Table, vectors: np.ndarray,
                        store: EmbeddingStore) -> dict[str, object]:
    """Rows encoded and reused, throughput, the version's identity, where it is, a preview."""
    version = result.version
    rate = result.encoded_rows / result.encode_seconds if result.encode_seconds else None
    return {
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
        "preview": vectors_preview(ids, vectors),
    }


def vectors_preview(ids: pa.Table, vectors: np.ndarray, rows: int = PREVIEW_ROWS) -> MetadataValue:
    """The first rows' id, text hash, first four values and norm."""
    head = [
        (row_id, sha[:12], np.array2string(vector[:4], precision=4, separator=", "),
         round(float(np.linalg.norm(vector.astype(np.float32))), 4))
        for row_id, sha, vector in zip(ids.column("id").to_pylist()[:rows],
                                       ids.column("text_sha256").to_pylist()[:rows],
                                       vectors[:rows], strict=True)
    ]
    return markdown_table(["id", "text_sha256", "embedding[:4]", "norm"], head)
