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
from dagster import (
    DataVersion,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
)

from embedding_core.landing_sync import SyncReport
from embedding_core.store import (
    CorpusVersion,
    EmbeddingStore,
    EmbeddingWriteResult,
    ModelSnapshot,
    StoredRows,
)
from embedding_core.truncation import TruncationReport

PREVIEW_ROWS = 5
PREVIEW_CHARS = 80

CORPUS_SCHEMA = TableSchema(columns=[
    TableColumn("id", "string", description="The row's id in its landing file."),
    TableColumn("text", "string", description="The text as read, untouched."),
    TableColumn("text_sha256", "string", description="sha256 of the text: the reuse key."),
])


def embeddings_schema(dim: int, dtype: str, chunked: bool = False) -> TableSchema:
    """The columns of an embeddings version's rows; chunked, a row per chunk, with its span."""
    chunk_columns = [
        TableColumn("chunk", "int32", description="Chunk number within the document, from 0."),
        TableColumn("char_start", "int32", description="Where the chunk starts in the document's text."),
        TableColumn("char_end", "int32", description="Where it ends: text[char_start:char_end]."),
    ] if chunked else []
    return TableSchema(columns=[
        TableColumn("id", "string", description="Row id of the corpus shard."),
        TableColumn("text_sha256", "string", description="sha256 of the embedded text."),
        *chunk_columns,
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


def bucket_corpus_metadata(bucket: str, report: SyncReport, current: dict[str, CorpusVersion],
                           store: EmbeddingStore) -> dict[str, object]:
    """A bucket after a sync: its files and rows, what this run read, kept or retired, and a
    preview of the first file it read."""
    keys = report.in_bucket(bucket)
    read = [key for key in keys if key in report.shards]
    versions = [current[key] for key in keys if key in current]
    first = report.shards[read[0]] if read else None
    preview = first.table.slice(0, PREVIEW_ROWS).select(["id", "text"]).to_pylist() if first else []
    return without_empty({
        "dagster/row_count": sum(version.rows for version in versions),
        "dagster/column_schema": CORPUS_SCHEMA,
        "dagster/uri": MetadataValue.path(store.root),
        "files": len(versions),
        "files_read": len(read),
        "files_unchanged": sum(key in report.unchanged for key in keys),
        "files_deleted_rows_kept": [key for key in keys if key in report.deleted][:20],
        "files_retired": {key: report.retired[key] for key in keys if key in report.retired},
        "files_failed": {key: report.failed[key] for key in keys if key in report.failed},
        "rows_read": sum(report.shards[key].table.num_rows for key in read),
        "rejected_rows": sum(len(report.shards[key].rejected) for key in read),
        "size": human_size(sum(version.bytes for version in versions)),
        "lake_snapshot": MetadataValue.text(str(max(v.snapshot_id for v in versions))) if versions else None,
        "preview": preview_table(TableSchema(columns=CORPUS_SCHEMA.columns[:2]), preview) if preview else None,
        "preview_source": read[0] if read else None,
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


def truncation_metadata(report: TruncationReport, chunked: bool = False) -> dict[str, object]:
    """What the encoder cut of a bucket's texts: how many were longer than max_seq_length
    tokens, their share of the texts, and the share of all tokens that never reach the model;
    nothing when they are `chunked` (split into windows that fit)."""
    if chunked:
        return {"truncated_texts": 0, "truncated_share": 0.0, "dropped_token_share": 0.0}
    return {"truncated_texts": report.truncated_texts,
            "truncated_share": round(report.truncated_share, 4),
            "dropped_token_share": round(report.dropped_token_share, 4)}


def bucket_embeddings_metadata(results: Sequence[EmbeddingWriteResult], store: EmbeddingStore,
                               truncation: TruncationReport | None = None,
                               chunked_documents: int | None = None) -> dict[str, object]:
    """A bucket's files after an embeddings run: rows, new versions, texts encoded and reused,
    what the encoder cut of the bucket's texts (`truncation`, every text of its current
    corpus), throughput (only when something was encoded), the model version, a preview of
    the first new version. Chunked, each row is a chunk: `chunked_documents` is how many
    documents they come from."""
    versions = [result.version for result in results]
    encoded = sum(result.encoded_rows for result in results)
    seconds = sum(result.encode_seconds for result in results)
    written = [result for result in results if result.stored is not None]
    first = written[0].stored if written else None
    head = versions[0] if versions else None
    return without_empty({
        "dagster/row_count": sum(version.rows for version in versions),
        "dagster/column_schema": embeddings_schema(head.dim, head.dtype, head.chunked) if head else None,
        "dagster/uri": MetadataValue.path(store.root),
        "files": len(versions),
        "new_versions": sum(result.created for result in results),
        "encoded_rows": encoded,
        "reused_rows": sum(result.reused_rows for result in results),
        **(truncation_metadata(truncation, chunked_documents is not None) if truncation is not None else {}),
        "documents": chunked_documents,
        "chunks": sum(version.rows for version in versions) if chunked_documents is not None else None,
        "size": human_size(sum(version.bytes for version in versions)),
        "model": head.model if head else None,
        "revision": head.revision if head else None,
        "dim": MetadataValue.text(str(head.dim)) if head else None,
        "dtype": head.dtype if head else None,
        "params_hash": head.params_hash if head else None,
        "params": head.params if head else None,
        "sentences_per_second": round(encoded / seconds, 1) if encoded and seconds > 0 else None,
        "encode_seconds": round(seconds, 3) if encoded and seconds > 0 else None,
        "lake_snapshot": MetadataValue.text(str(max(v.snapshot_id for v in versions))) if versions else None,
        "catalog": store.catalog_label,
        "preview": vectors_preview(first) if first is not None and len(first.vectors) else None,
        "preview_source": written[0].version.partition if written else None,
    })


PREVIEW_SCHEMA = TableSchema(columns=[
    TableColumn("id", "string"), TableColumn("text_sha256", "string"),
    TableColumn("embedding[:4]", "string"), TableColumn("norm", "float")])


def vectors_preview(rows: StoredRows, count: int = PREVIEW_ROWS) -> MetadataValue:
    """The first rows' id, text hash, first four values and norm."""
    head = [
        {"id": row_id, "text_sha256": sha[:12],
         "embedding[:4]": np.array2string(vector[:4], precision=4, separator=", "),
         "norm": round(float(np.linalg.norm(vector.astype(np.float32))), 4)}
        for row_id, sha, vector in zip(rows.ids[:count], rows.text_sha256[:count], rows.vectors[:count],
                                       strict=True)
    ]
    return preview_table(PREVIEW_SCHEMA, head)
