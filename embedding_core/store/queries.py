"""Reading records and rows back from a lake connection (see `Catalog.connection`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import duckdb
import numpy as np
import pyarrow as pa

from embedding_core.store.files import sql_str
from embedding_core.store.records import (
    CorpusVersion,
    EmbeddingVersion,
    ModelSnapshot,
    vector_width,
)
from embedding_core.store.rows import vectors_to_numpy
from embedding_core.store.views import VECTOR_TABLES

__all__ = ["CHUNK_TEXT_SQL", "CORPUS_COLUMNS", "EMBEDDING_RECORD_COLUMNS", "corpus_rows", "corpus_version", "embedding_versions",
           "corpus_ids_by_write", "model_snapshots", "sample_rows", "split_by_write", "vector_rows_by_write", "stored_embedding_version", "stored_embedding_versions",
           "stored_vectors"]

CORPUS_COLUMNS = ("partition, corpus_version, rows, rejected_rows, bytes, source_uri, run_id, "
                   "write_id, snapshot_id, created_at")
# The columns of an `embedding_versions` record, in table order, before `created_at`.
EMBEDDING_RECORD_COLUMNS = ("version_id", "partition", "model", "revision", "params_hash", "params",
                            "corpus_version", "rows", "reused_rows", "dim", "dtype", "bytes", "run_id",
                            "write_id")
_EMBEDDING_COLUMNS = ", ".join([*EMBEDDING_RECORD_COLUMNS, "snapshot_id", "created_at"])
# The text a vector row embeds: its document's `text`, or the chunk's span of it (DuckDB
# counts characters as Python does: code points, from 1).
CHUNK_TEXT_SQL = ("CASE WHEN {rows}.char_start IS NULL THEN {text} "
                  "ELSE substring({text}, {rows}.char_start + 1, {rows}.char_end - {rows}.char_start) END")
_SNAPSHOT_COLUMNS = ("model_key, model, revision, source, path, dim, max_seq_length, requested_revision, "
                     "pooling, prompts, default_prompt_name, similarity_fn, files_hash")


def corpus_version(con: duckdb.DuckDBPyConnection, partition: str,
                   version: str | None) -> CorpusVersion | None:
    """A stored corpus version of `partition`; the current one when `version` is None."""
    if version is None:
        row = con.execute(f"SELECT {CORPUS_COLUMNS} FROM current_corpus_versions WHERE partition = ?",
                          [partition]).fetchone()
    else:
        row = con.execute(f"SELECT {CORPUS_COLUMNS} FROM stored_corpus_versions "
                          "WHERE partition = ? AND corpus_version = ?", [partition, version]).fetchone()
    return None if row is None else CorpusVersion(*row)


def corpus_rows(con: duckdb.DuckDBPyConnection, write_id: str) -> pa.Table:
    """The `id`, `text`, `text_sha256` rows one write committed, in their order."""
    return corpus_rows_by_write(con, [write_id])[write_id]


def corpus_rows_by_write(con: duckdb.DuckDBPyConnection, write_ids: list[str]) -> dict[str, pa.Table]:
    """write_id -> the `id`, `text`, `text_sha256` rows that write committed, in their order,
    read in one query (literal ids let DuckLake skip every other write's files)."""
    if not write_ids:
        return {}
    table = con.execute(f"SELECT write_id, id, text, text_sha256 FROM corpus_rows WHERE write_id IN "
                        f"({_literals(write_ids)}) ORDER BY rowid").to_arrow_table()
    return split_by_write(table, write_ids)


def corpus_ids_by_write(con: duckdb.DuckDBPyConnection, write_ids: list[str]) -> pa.Table:
    """`write_id`, `id` of the corpus rows of these writes, in row order (ids only)."""
    return con.execute(f"SELECT write_id, id FROM corpus_rows WHERE write_id IN ({_literals(write_ids)}) "
                       "ORDER BY rowid").to_arrow_table()


def vector_rows_by_write(con: duckdb.DuckDBPyConnection, table: str, write_ids: list[str]) -> pa.Table:
    """`write_id`, `id`, `text_sha256`, `embedding`, `chunk`, `char_start`, `char_end` (NULL: the
    text whole) of the rows of these writes in a vector rows table, in row order."""
    return con.execute(f"SELECT write_id, id, text_sha256, embedding, chunk, char_start, char_end FROM {table} "
                       "WHERE write_id IN "
                       f"({_literals(write_ids)}) ORDER BY rowid").to_arrow_table()


def _literals(values: list[str]) -> str:
    """SQL string literals: DuckLake skips the data files of every other write by their
    statistics (a parameter list would not let it)."""
    return ", ".join(sql_str(value) for value in sorted(set(values))) or "NULL"


def split_by_write(table: pa.Table, write_ids: list[str]) -> dict[str, pa.Table]:
    """write_id -> the rows of `table` (which has a `write_id` column) of that write, in
    order, without the `write_id` column; a write with no row gets an empty table."""
    rest = table.drop(["write_id"])
    if not table.num_rows:
        return {write_id: rest for write_id in write_ids}
    encoded = table.column("write_id").combine_chunks().dictionary_encode()
    codes = encoded.indices.to_numpy()
    order = np.argsort(codes, kind="stable")  # rows of one write together, in their order
    bounds = np.searchsorted(codes[order], np.arange(len(encoded.dictionary) + 1))
    found = {write_id: rest.take(pa.array(order[bounds[code]:bounds[code + 1]]))
             for code, write_id in enumerate(encoded.dictionary.to_pylist())}
    return {write_id: found.get(write_id, rest.slice(0, 0)) for write_id in write_ids}


def embedding_versions(con: duckdb.DuckDBPyConnection, source: str, args: list) -> list[EmbeddingVersion]:
    """Versions from `source`: a version view with its WHERE / ORDER BY clauses."""
    rows = con.execute(f"SELECT {_EMBEDDING_COLUMNS} FROM {source}", args).fetchall()
    versions = []
    for row in rows:
        values = dict(zip(_EMBEDDING_COLUMNS.split(", "), row, strict=True))
        values["params"] = json.loads(values["params"])
        versions.append(EmbeddingVersion(**values))
    return versions


def stored_embedding_version(con: duckdb.DuckDBPyConnection, version_id: str) -> EmbeddingVersion | None:
    """A stored version by id: its first record, with the rows of its latest (read from the
    table, cheaper than the view; see `views`)."""
    return stored_embedding_versions(con, [version_id]).get(version_id)


def stored_embedding_versions(con: duckdb.DuckDBPyConnection,
                              version_ids: list[str]) -> dict[str, EmbeddingVersion]:
    """`stored_embedding_version` of many ids in one query: id -> version, for those stored."""
    if not version_ids:
        return {}
    versions = embedding_versions(con, "embedding_versions WHERE list_contains(?, version_id) "
                                  "ORDER BY snapshot_id, rowid", [list(set(version_ids))])
    first: dict[str, EmbeddingVersion] = {}
    latest_write: dict[str, str] = {}
    for version in versions:
        first.setdefault(version.version_id, version)
        latest_write[version.version_id] = version.write_id
    return {vid: replace(version, write_id=latest_write[vid]) for vid, version in first.items()}


def sample_rows(con: duckdb.DuckDBPyConnection, version: EmbeddingVersion,
                rows: list[int]) -> list[tuple[str, str, np.ndarray]]:
    """(id, text, vector) of the given row numbers of a stored version, in row order: the text
    embedded, the document's or (chunked) its chunk's."""
    width = vector_width(version.params.get("precision", "float32"), version.dim)
    picked = con.execute(
        f"""SELECT e.id, {CHUNK_TEXT_SQL.format(rows="e", text="c.text")} AS text, e.embedding FROM
            (SELECT id, text_sha256, embedding, char_start, char_end,
                    row_number() OVER (ORDER BY rowid) - 1 AS row
             FROM {VECTOR_TABLES[version.dtype][0]} WHERE write_id = ?) e
            JOIN (SELECT id, text FROM corpus_rows c
                  JOIN stored_corpus_versions v ON v.write_id = c.write_id
                  WHERE v.partition = ? AND v.corpus_version = ?) c USING (id)
            WHERE list_contains(?, e.row) ORDER BY e.row""",
        [version.write_id, version.partition, version.corpus_version, sorted({int(r) for r in rows})]
    ).to_arrow_table()
    vectors = vectors_to_numpy(picked.column("embedding"), width, version.dtype)
    return list(zip(picked.column("id").to_pylist(), picked.column("text").to_pylist(), vectors, strict=True))


def stored_vectors(con: duckdb.DuckDBPyConnection, model: str, revision: str, params_hash: str,
                   dtype: str, shas: list[str], width: int,
                   exclude: set[str] = frozenset()) -> dict[str, np.ndarray]:
    """Vectors already stored for these text hashes under the same model, revision and
    params (leaving out the writes in `exclude`)."""
    write_ids = [write_id for (write_id,) in con.execute(
        "SELECT DISTINCT write_id FROM embedding_versions WHERE model = ? AND revision = ? AND params_hash = ?",
        [model, revision, params_hash]).fetchall() if write_id not in exclude]
    if not write_ids or not shas:
        return {}
    con.register("wanted_shas", pa.table({"text_sha256": pa.array(shas, pa.string())}))
    # Literal write ids let DuckLake skip the data files of every other version by their statistics.
    source = (f"{VECTOR_TABLES[dtype][0]} r SEMI JOIN wanted_shas w ON w.text_sha256 = r.text_sha256 "
              f"WHERE r.write_id IN ({', '.join(sql_str(w) for w in write_ids)})")
    with _no_join_filter_pushdown(con):
        # The hashes alone first: the join reads every row of those writes, and with the
        # vectors it decodes them all (at the 8th shard of 25,000 new texts, 175,000 stored
        # vectors and a ~260 MB spike of DuckDB memory, to find nothing). Vectors are read
        # only when some match.
        if con.execute(f"SELECT 1 FROM {source} LIMIT 1").fetchone() is None:
            return {}
        found = con.execute(f"SELECT DISTINCT ON (r.text_sha256) r.text_sha256, r.embedding FROM {source}"
                            ).to_arrow_table()
    vectors = vectors_to_numpy(found.column("embedding"), width, dtype)
    return dict(zip(found.column("text_sha256").to_pylist(), vectors, strict=True))


@contextmanager
def _no_join_filter_pushdown(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Run without DuckDB's join filter pushdown. On a semi-join with the shard's hashes it
    pushes them into the DuckLake scan as an IN list of every hash (25,000 of them), and
    the scan then spends 2-4 s on a lookup that reads 0.05 s of data without it."""
    previous = con.execute("SELECT current_setting('disabled_optimizers')").fetchone()[0]
    con.execute("SET disabled_optimizers = " + sql_str(",".join(filter(None, [previous, "join_filter_pushdown"]))))
    try:
        yield
    finally:
        con.execute("SET disabled_optimizers = " + sql_str(previous))


def model_snapshots(con: duckdb.DuckDBPyConnection, clause: str, args: list,
                    source: str = "current_model_snapshots") -> list[ModelSnapshot]:
    """Current model snapshots (every recorded one, with `source` ``model_snapshots``),
    filtered / ordered by `clause`."""
    rows = con.execute(f"SELECT {_SNAPSHOT_COLUMNS} FROM {source} {clause}", args).fetchall()
    snapshots = []
    for (model_key, model, revision, source, path, dim, max_seq_length, requested_revision,
         pooling, prompts, default_prompt_name, similarity_fn, files_hash) in rows:
        snapshots.append(ModelSnapshot(
            model_key=model_key, model=model, revision=revision, source=source, path=path, dim=dim,
            max_seq_length=max_seq_length, requested_revision=requested_revision,
            pooling=tuple(json.loads(pooling)), prompts=json.loads(prompts),
            default_prompt_name=default_prompt_name, similarity_fn=similarity_fn, files_hash=files_hash))
    return snapshots
