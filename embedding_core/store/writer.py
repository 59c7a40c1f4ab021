"""Writing one shard's embeddings: reuse what is stored, encode the rest with no catalog
connection open, then one short lake transaction for rows, record and commit message."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import embedding_core.store.damage as damage
import embedding_core.store.queries as queries
from embedding_core.store.catalog import Catalog, lake_name
from embedding_core.store.maintenance import repair_embeddings_view
from embedding_core.store.records import (
    CorpusVersion,
    EmbeddingParams,
    EmbeddingVersion,
    EmbeddingWriteResult,
    ModelSnapshot,
    sha256_json,
    stored_dtype,
    vector_width,
)
from embedding_core.store.rows import check_encoded, unique_with_first_index
from embedding_core.store.views import VECTOR_TABLES, ensure_embeddings_view

__all__ = ["version_id", "write_embeddings"]


def version_id(partition: str, snapshot: ModelSnapshot, params: EmbeddingParams, corpus_version: str) -> str:
    """The id of the version these inputs make: the same inputs always make the same id."""
    return sha256_json([partition, snapshot.model, snapshot.revision, params.params_hash, corpus_version])[:24]


def write_embeddings(
    catalog: Catalog, partition: str, corpus: CorpusVersion, snapshot: ModelSnapshot,
    params: EmbeddingParams, encode: Callable[[list[str]], np.ndarray], run_id: str | None,
) -> EmbeddingWriteResult:
    """See `EmbeddingStore.write_embeddings`."""
    if corpus.partition != partition:
        raise ValueError(f"corpus version {corpus.corpus_version[:16]} belongs to partition "
                         f"{corpus.partition!r}, not {partition!r}")
    vid = version_id(partition, snapshot, params, corpus.corpus_version)
    dtype = stored_dtype(params.precision)
    dim = params.truncate_dim or snapshot.dim
    width = vector_width(params.precision, dim)
    with catalog.connection() as con:
        existing = queries.stored_embedding_version(con, vid)
        # Rows lost to a damaged data file: write the version again, under a new write_id.
        damaged = existing.write_id if existing and damage.damaged_write_ids(con, [existing.write_id]) else None
        if existing is not None and damaged is None:
            current = queries.embedding_versions(
                con, "current_embedding_versions WHERE partition = ? AND model = ? AND dtype = ?",
                [partition, snapshot.model, dtype])
        else:
            rows = corpus_rows(con, corpus, " (write the corpus again first)")
            unique_shas, first_rows = unique_with_first_index(rows.column("text_sha256"))
            args = (con, snapshot.model, snapshot.revision, params.params_hash, dtype, unique_shas, width)
            try:
                known = queries.stored_vectors(*args)
            except duckdb.Error as error:  # reuse nothing from damaged files
                if not damage.is_damage_error(error):
                    raise
                known = queries.stored_vectors(*args, exclude=damage.damaged_write_ids(con))
    if existing is not None and damaged is None:
        if current != [existing]:  # the same inputs again: make the stored version current
            record = {**asdict(existing), "params": json.dumps(existing.params, sort_keys=True)}
            _commit_version(catalog, record, run_id, rows=None)
        return EmbeddingWriteResult(existing, created=False, encoded_rows=0,
                                    reused_rows=existing.rows, encode_seconds=0.0)

    # Encoding: no connection, no transaction, no lock of any kind is held.
    missing = [i for i, sha in enumerate(unique_shas) if sha not in known]
    vectors = np.empty((len(unique_shas), width), dtype=dtype)
    for i, sha in enumerate(unique_shas):
        if sha in known:
            vectors[i] = known[sha]
    started = time.perf_counter()
    if missing:
        texts = rows.column("text").take(pa.array(first_rows[missing])).to_pylist()
        encoded = np.asarray(encode(texts))
        check_encoded(encoded, len(texts), width, vectors.dtype, partition)
        vectors[missing] = encoded
    encode_seconds = time.perf_counter() - started

    row_index = pc.index_in(rows.column("text_sha256"), value_set=pa.array(unique_shas, pa.string())).to_numpy()
    vector_rows = pa.table({
        "id": rows.column("id"), "text_sha256": rows.column("text_sha256"),
        "embedding": pa.FixedSizeListArray.from_arrays(vectors[row_index].reshape(-1), width),
    })
    reused_rows = int(rows.num_rows - np.isin(row_index, missing).sum())
    record = {"version_id": vid, "partition": partition, "model": snapshot.model,
              "revision": snapshot.revision, "params_hash": params.params_hash, "params": params.to_json(),
              "corpus_version": corpus.corpus_version, "rows": rows.num_rows, "reused_rows": reused_rows,
              "dim": dim, "dtype": dtype, "bytes": vector_rows.nbytes, "write_id": uuid.uuid4().hex}
    version, created = _commit_version(catalog, record, run_id, rows=vector_rows, damaged_write_id=damaged)
    return EmbeddingWriteResult(version, created=created, encoded_rows=len(missing),
                                reused_rows=reused_rows, encode_seconds=encode_seconds)


def corpus_rows(con: duckdb.DuckDBPyConnection, corpus: CorpusVersion, hint: str = "") -> pa.Table:
    """The stored rows of a corpus version; `DamagedDataError` (`hint` appended to what it
    names) when they lie in a damaged data file."""
    try:
        return queries.corpus_rows(con, corpus.write_id)
    except duckdb.Error as error:
        damage.raise_if_damaged(con, error, f"corpus {corpus.corpus_version[:16]} of partition "
                                f"{corpus.partition!r}{hint}", [corpus.write_id])
        raise


def _commit_version(catalog: Catalog, record: dict, run_id: str | None, rows: pa.Table | None,
                    damaged_write_id: str | None = None) -> tuple[EmbeddingVersion, bool]:
    """Commit a version record (with its rows when given), which makes it current; returns
    the stored version and whether this call stored its rows. Rows stored under
    `damaged_write_id` count as not stored."""
    vid, partition = record["version_id"], record["partition"]
    base_snapshot: list[int] = []

    def work(con: duckdb.DuckDBPyConnection) -> bool:
        base_snapshot[:] = [_current_snapshot(con)]
        # A concurrent writer may have committed the same inputs since we looked: keep its rows.
        stored = queries.stored_embedding_version(con, vid)
        if stored is not None and stored.write_id == damaged_write_id:
            stored = None
        write_id = stored.write_id if stored else record["write_id"]
        if rows is not None and not stored:
            con.register("vector_rows", rows)
            con.execute(f"INSERT INTO {VECTOR_TABLES[record['dtype']][0]} "
                        "SELECT ?, id, text_sha256, embedding FROM vector_rows", [write_id])
        values = {**record, "run_id": run_id, "write_id": write_id}
        con.execute(f"INSERT INTO embedding_versions VALUES ({', '.join('?' * len(queries.EMBEDDING_RECORD_COLUMNS))}, "
                    "current_timestamp)",
                    [values[column] for column in queries.EMBEDDING_RECORD_COLUMNS])
        if record["dtype"] == "float32":
            ensure_embeddings_view(con)
        return rows is not None and not stored

    committed: list[EmbeddingVersion] = []

    def after(con: duckdb.DuckDBPyConnection) -> None:
        if _current_snapshot(con) != base_snapshot[0] + 1:  # another commit came between
            repair_embeddings_view(con)
        committed.append(queries.stored_embedding_version(con, vid))

    created = catalog.commit(
        work, what=f"embeddings of partition {partition!r}",
        message=(f"embeddings {partition} {record['model']}@{record['revision'][:12]} "
                 f"{record['params_hash']} (run {run_id})"),
        extra=json.dumps({"run_id": run_id, "partition": partition, "version_id": vid}), after=after)
    return committed[0], created


def _current_snapshot(con: duckdb.DuckDBPyConnection) -> int:
    return con.execute(f"SELECT id FROM {lake_name(con)}.current_snapshot()").fetchone()[0]
