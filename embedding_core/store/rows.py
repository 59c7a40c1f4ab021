"""A shard's rows in memory: checking a corpus table and an encoder's output, finding each
distinct text once, splitting texts into chunk rows, and turning stored vector lists into
2-D arrays."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedding_core.store.records import CORPUS_SCHEMA, text_sha256

__all__ = ["CHUNK_COLUMNS", "Chunker", "check_encoded", "chunk_rows", "new_write_id", "unique_with_first_index",
           "validated_corpus", "vectors_to_numpy"]


def new_write_id() -> str:
    """The id of one write's rows: 32 hex digits, the time first, so a later write sorts
    after every earlier one. DuckLake skips a data file by the min and max write id it holds:
    with ids in time order, a file's range does not span the writes of later commits, and a
    damaged file stays out of their reads (`damage`)."""
    return f"{time.time_ns():016x}{secrets.token_hex(8)}"


# The columns a chunked version's rows add (`views.CHUNK_COLUMNS_SQL`).
CHUNK_COLUMNS = ("chunk", "char_start", "char_end")


class ChunkSpan(Protocol):
    """Chunk `chunk` of text number `document`: ``text[char_start:char_end]``
    (`embedding_core.chunking.Chunk`)."""

    document: int
    chunk: int
    char_start: int
    char_end: int


# texts -> their chunks, in text order then chunk order (`EncodingSession.chunk`).
Chunker = Callable[[list[str]], Sequence[ChunkSpan]]


def chunk_rows(tables: dict[str, pa.Table], chunker: Chunker) -> dict[str, pa.Table]:
    """Each corpus table (`id`, `text`, `text_sha256`) as a row per chunk of its texts:
    `id`, the chunk's `text` and `text_sha256`, `chunk`, `char_start`, `char_end`. Each
    distinct text is chunked once, whichever tables hold it."""
    texts: dict[str, str] = {}
    for table in tables.values():
        for sha, text in zip(table.column("text_sha256").to_pylist(), table.column("text").to_pylist(), strict=True):
            texts.setdefault(sha, text)
    order = list(texts)
    spans: dict[str, list[tuple[int, int, int, str, str]]] = {sha: [] for sha in order}
    for span in chunker([texts[sha] for sha in order]):
        sha = order[span.document]
        piece = texts[sha][span.char_start:span.char_end]
        spans[sha].append((span.chunk, span.char_start, span.char_end, piece, text_sha256(piece)))
    chunked = {}
    for write_id, table in tables.items():
        columns: dict[str, list] = {name: [] for name in ("id", "text", "text_sha256", *CHUNK_COLUMNS)}
        for id_, sha in zip(table.column("id").to_pylist(), table.column("text_sha256").to_pylist(), strict=True):
            if not spans[sha]:
                raise ValueError(f"the chunker returned no chunk for text {id_!r}")
            for chunk, start, end, piece, piece_sha in spans[sha]:
                for name, value in zip(columns, (id_, piece, piece_sha, chunk, start, end), strict=True):
                    columns[name].append(value)
        chunked[write_id] = pa.table({
            **{name: pa.array(columns[name], pa.string()) for name in ("id", "text", "text_sha256")},
            **{name: pa.array(columns[name], pa.int32()) for name in CHUNK_COLUMNS}})
    return chunked


def validated_corpus(partition: str, table: pa.Table) -> pa.Table:
    """`table` as the corpus schema; raises naming the partition, the column and the row."""
    missing = [name for name in CORPUS_SCHEMA.names if name not in table.column_names]
    if missing:
        raise ValueError(f"corpus shard {partition!r} lacks column(s) {missing}")
    table = table.select(CORPUS_SCHEMA.names).cast(CORPUS_SCHEMA)
    for name in CORPUS_SCHEMA.names:
        nulls = table.column(name).null_count
        if nulls:
            first = pc.index(pc.is_null(table.column(name)), True).as_py()
            raise ValueError(f"corpus shard {partition!r} has {nulls} null {name!r} value(s), "
                             f"first at row {first}")
    if pc.count_distinct(table.column("id")).as_py() != table.num_rows:
        _, first_rows = unique_with_first_index(table.column("id"))
        duplicate_row = sorted(set(range(table.num_rows)) - set(first_rows.tolist()))[0]
        raise ValueError(f"corpus shard {partition!r} repeats id "
                         f"{table.column('id')[duplicate_row].as_py()!r} at row {duplicate_row}")
    return table


def unique_with_first_index(column: pa.ChunkedArray) -> tuple[list[str], np.ndarray]:
    """Distinct values in order of first appearance, and the row of each first appearance."""
    first: dict[str, int] = {}
    for row, value in enumerate(column.to_pylist()):
        first.setdefault(value, row)
    return list(first), np.fromiter(first.values(), dtype=np.int64, count=len(first))


def vectors_to_numpy(column: pa.ChunkedArray | pa.Array, width: int, dtype: str) -> np.ndarray:
    """A (rows, width) array from a column of equal-length vector lists."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(array) == 0:
        return np.empty((0, width), dtype=dtype)
    return array.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(-1, width)


def check_encoded(encoded: np.ndarray, count: int, width: int, dtype: np.dtype, partition: str) -> None:
    """Raise, naming the partition (and the text), unless the encoder returned `count`
    finite vectors of `width` values of `dtype`."""
    if encoded.shape != (count, width):
        raise ValueError(f"encoder returned shape {encoded.shape} for {count} texts of partition "
                         f"{partition!r}; expected ({count}, {width})")
    if encoded.dtype != dtype:
        raise ValueError(f"encoder returned {encoded.dtype} vectors for partition {partition!r}; "
                         f"expected {dtype}")
    if encoded.dtype.kind == "f" and not np.isfinite(encoded).all():
        bad_row = int(np.flatnonzero(~np.isfinite(encoded).all(axis=1))[0])
        raise ValueError(f"encoder returned a non-finite vector for partition {partition!r} "
                         f"(text {bad_row} of this batch)")
