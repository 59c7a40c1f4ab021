"""What the Dagster UI shows for each asset: metadata built from stored records.

Dagster's standard keys come first (`dagster/row_count`, `dagster/column_schema`,
`dagster/uri`), previews are `MetadataValue.table`, sizes are written for people
("48.0 KiB"), and a value that would be empty or misleading is left out rather than shown
as `{}`, null or 0 (no throughput when nothing was encoded). Identifiers that are numbers
(lake snapshot ids, the dimension) are text, so the UI draws no meaningless plot of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from dagster import (
    DataVersion,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
)

from embedding_core.corpus import CorpusShard
from embedding_core.store import CorpusVersion, EmbeddingStore, EmbeddingWriteResult, ModelSnapshot

PREVIEW_ROWS = 5
PREVIEW_CHARS = 80

CORPUS_SCHEMA = TableSchema(columns=[
    TableColumn("id", "string", description="The row's id in its landing file."),
    TableColumn("text", "string", description="The text as read, untouched."),
    TableColumn("text_sha256", "string", description="sha256 of the text: the reuse key."),
])


def embeddings_schema(dim: int, dtype: str) -> TableSchema:
    return TableSchema(columns=[
        TableColumn("id", "string", description="Row id of the corpus shard."),
        TableColumn("text_sha256", "string", description="sha256 of the embedded text."),
        TableColumn("embedding", f"{dtype}[{dim}]", description="The sentence embedding."),
    ])


def human_size(size: int) -> str:
    """Bytes for people: 512 B, 48.0 KiB, 1.5 MiB."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def without_empty(metadata: dict[str, object]) -> dict[str, object]:
    """Leave out None, empty mappings/lists and empty strings."""
    return {key: value for key, value in metadata.items() if value not in (None, {}, [], "")}


def cut(value: object, max_chars: int = PREVIEW_CHARS) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def preview_table(schema: TableSchema, rows: Sequence[dict]) -> MetadataValue:
    """A `MetadataValue.table` of the first rows, long cells cut."""
    return MetadataValue.table(
        records=[TableRecord({key: cut(value) if isinstance(value, str) else value
                              for key, value in row.items()}) for row in rows],
        schema=schema)


def single_data_version(versions: Sequence[str]) -> DataVersion | None:
    """The data version of a one-partition run; a run of several partitions records none."""
    return DataVersion(versions[0]) if len(versions) == 1 else None


def corpus_metadata(version: CorpusVersion, shard: CorpusShard, store: EmbeddingStore) -> dict[str, object]:
    """Rows, rejections, size, version, where it came from and went, and a preview."""
    preview = shard.table.slice(0, PREVIEW_ROWS).select(["id", "text"]).to_pylist()
    return without_empty({
        "dagster/row_count": version.rows,
        "dagster/column_schema": CORPUS_SCHEMA,
        "dagster/uri": MetadataValue.path(store.root),
        "rejected_rows": version.rejected_rows,
        "rejected_by_reason": shard.rejected_counts(),
        "size": human_size(version.bytes),
        "corpus_version": version.corpus_version,
        "lake_snapshot": MetadataValue.text(str(version.snapshot_id)),
        "source": MetadataValue.path(version.source_uri) if version.source_uri else None,
        "preview": preview_table(TableSchema(columns=CORPUS_SCHEMA.columns[:2]), preview)
        if preview else None,
    })


def snapshot_metadata(snapshot: ModelSnapshot) -> dict[str, object]:
    """The pinned revision and what the model is: dimension, length limit, pooling, prompts."""
    return without_empty({
        "dagster/uri": MetadataValue.path(snapshot.path),
        "model": snapshot.model,
        "revision": snapshot.revision,
        "requested_revision": snapshot.requested_revision or "(default)",
        "source": snapshot.source,
        "files_hash": snapshot.files_hash,
        "dim": snapshot.dim,
        "max_seq_length": snapshot.max_seq_length,
        "pooling": ", ".join(snapshot.pooling),
        "prompts": snapshot.prompts,
        "similarity_fn": snapshot.similarity_fn,
    })


def embeddings_metadata(result: EmbeddingWriteResult, ids: pa.Table, vectors: np.ndarray,
                        store: EmbeddingStore) -> dict[str, object]:
    """Rows encoded and reused, throughput (only when something was encoded), the version's
    identity, where it is, a preview."""
    version = result.version
    encoded = result.encoded_rows > 0 and result.encode_seconds > 0
    return without_empty({
        "dagster/row_count": version.rows,
        "dagster/column_schema": embeddings_schema(version.dim, version.dtype),
        "dagster/uri": MetadataValue.path(store.root),
        "encoded_rows": result.encoded_rows,
        "reused_rows": result.reused_rows,
        "new_version": result.created,
        "size": human_size(version.bytes),
        "model": version.model,
        "revision": version.revision,
        "dim": MetadataValue.text(str(version.dim)),
        "dtype": version.dtype,
        "params_hash": version.params_hash,
        "params": version.params,
        "corpus_version": version.corpus_version,
        "version_id": version.version_id,
        "sentences_per_second": round(result.encoded_rows / result.encode_seconds, 1) if encoded else None,
        "encode_seconds": round(result.encode_seconds, 3) if encoded else None,
        "lake_snapshot": MetadataValue.text(str(version.snapshot_id)),
        "catalog": store.catalog_label,
        "preview": vectors_preview(ids, vectors) if len(vectors) else None,
    })


PREVIEW_SCHEMA = TableSchema(columns=[
    TableColumn("id", "string"), TableColumn("text_sha256", "string"),
    TableColumn("embedding[:4]", "string"), TableColumn("norm", "float")])


def vectors_preview(ids: pa.Table, vectors: np.ndarray, rows: int = PREVIEW_ROWS) -> MetadataValue:
    """The first rows' id, text hash, first four values and norm."""
    head = [
        {"id": row_id, "text_sha256": sha[:12],
         "embedding[:4]": np.array2string(vector[:4], precision=4, separator=", "),
         "norm": round(float(np.linalg.norm(vector.astype(np.float32))), 4)}
        for row_id, sha, vector in zip(ids.column("id").to_pylist()[:rows],
                                       ids.column("text_sha256").to_pylist()[:rows],
                                       vectors[:rows], strict=True)
    ]
    return preview_table(PREVIEW_SCHEMA, head)
