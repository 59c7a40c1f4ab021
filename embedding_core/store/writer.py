"""Writing one shard's embeddings: reuse what is stored, encode the rest with no catalog
connection open, then one short lake transaction for rows, record and commit message."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict

import duckdb
import numpy as np
import pyarrow as pa

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
    StoredRows,
    sha256_json,
    stored_dtype,
    vector_width,
)
from embedding_core.store.rows import (
    CHUNK_COLUMNS,
    Chunker,
    check_encoded,
    chunk_rows,
    new_write_id,
    unique_with_first_index,
    vectors_to_numpy,
)
from embedding_core.store.views import VECTOR_TABLES, ensure_embeddings_view

__all__ = ["corpus_rows", "corpus_rows_of", "version_id", "write_embeddings", "write_embeddings_batch"]

logger = logging.getLogger(__name__)


def version_id(partition: str, snapshot: ModelSnapshot, params: EmbeddingParams, corpus_version: str) -> str:
    """The id of the version these inputs make: the same inputs always make the same id."""
    return sha256_json([partition, snapshot.model, snapshot.revision, params.params_hash, corpus_version])[:24]


def write_embeddings(
    catalog: Catalog, partition: str, corpus: CorpusVersion, snapshot: ModelSnapshot,
    params: EmbeddingParams, encode: Callable[[list[str]], np.ndarray], run_id: str | None,
    chunker: Chunker | None = None,
) -> EmbeddingWriteResult:
    """See `EmbeddingStore.write_embeddings`."""
    if corpus.partition != partition:
        raise ValueError(f"corpus version {corpus.corpus_version[:16]} belongs to partition "
                         f"{corpus.partition!r}, not {partition!r}")
    return write_embeddings_batch(catalog, [corpus], snapshot, params, encode, run_id, chunker=chunker)[0]


def write_embeddings_batch(
    catalog: Catalog, corpora: Sequence[CorpusVersion], snapshot: ModelSnapshot,
    params: EmbeddingParams, encode: Callable[[list[str]], np.ndarray], run_id: str | None,
    read_back: bool = False, chunker: Chunker | None = None,
) -> list[EmbeddingWriteResult]:
    """See `EmbeddingStore.write_embeddings_batch`: one lookup connection (chunked: a second
    one, after `chunker` split the texts, to look up the chunks' hashes), one encode call for
    every text no partition has stored yet, one commit (whose connection reads the written
    versions back, with `read_back`)."""
    partitions = [corpus.partition for corpus in corpora]
    if len(set(partitions)) != len(partitions):
        raise ValueError(f"write_embeddings_batch got partition(s) twice: "
                         f"{sorted({p for p in partitions if partitions.count(p) > 1})}")
    if not corpora:
        return []
    vids = [version_id(c.partition, snapshot, params, c.corpus_version) for c in corpora]
    dtype = stored_dtype(params.precision)
    dim = params.truncate_dim or snapshot.dim
    width = vector_width(params.precision, dim)
    with catalog.connection() as con:
        existing = queries.stored_embedding_versions(con, vids)
        # Rows lost to a damaged data file: write the version again, under a new write_id.
        damaged = damage.damaged_write_ids(con, [v.write_id for v in existing.values()]) if existing else set()
        reuse = {vid: version for vid, version in existing.items() if version.write_id not in damaged}
        # The latest version of each partition in this version set (serving or a candidate).
        current = {v.partition: v.version_id for v in queries.embedding_versions(
            con, "latest_embedding_versions WHERE model = ? AND revision = ? AND params_hash = ? "
            "AND list_contains(?, partition)", [snapshot.model, snapshot.revision, params.params_hash, partitions])}
        to_write = [(corpus, vid) for corpus, vid in zip(corpora, vids, strict=True) if vid not in reuse]
        rows_by_write = corpus_rows_of(con, [corpus for corpus, _ in to_write], " (write the corpus again first)")
        if not params.chunked:
            unique_shas, known = _stored_vectors(con, snapshot, params, dtype, width, rows_by_write, damaged)
    if params.chunked:
        if chunker is None:
            raise ValueError(f"embedding params {params.params_hash} chunk texts "
                             f"(chunk_tokens={params.chunk_tokens}): pass a chunker")
        # Tokenizing: no connection open. The chunks' hashes are what is looked up.
        rows_by_write = chunk_rows(rows_by_write, chunker)
        with catalog.connection() as con:
            unique_shas, known = _stored_vectors(con, snapshot, params, dtype, width, rows_by_write, damaged)

    # Encoding: no connection, no transaction, no lock of any kind is held.
    missing_shas = [sha for sha in unique_shas if sha not in known]
    started = time.perf_counter()
    if missing_shas:
        wanted, texts = set(missing_shas), {}
        for corpus, _ in to_write:
            rows = rows_by_write[corpus.write_id]
            for sha, text in zip(rows.column("text_sha256").to_pylist(), rows.column("text").to_pylist(),
                                 strict=True):
                if sha in wanted and sha not in texts:
                    texts[sha] = text
        encoded = np.asarray(encode([texts[sha] for sha in missing_shas]))
        check_encoded(encoded, len(missing_shas), width, np.dtype(dtype),
                      partitions[0] if len(partitions) == 1 else f"{partitions[0]} (+{len(partitions) - 1})")
        known.update(zip(missing_shas, encoded, strict=True))
    encode_seconds = time.perf_counter() - started

    new_shas = set(missing_shas)
    records, encoded_rows, reused_rows, counted = [], {}, {}, set()
    for corpus, vid in zip(corpora, vids, strict=True):
        if vid in reuse:
            if current.get(corpus.partition) != vid:  # the same inputs again: its set's latest again
                records.append({**asdict(reuse[vid]), "params": json.dumps(reuse[vid].params, sort_keys=True)})
            continue
        rows = rows_by_write[corpus.write_id]
        shas = rows.column("text_sha256").to_pylist()
        vectors = np.stack([known[sha] for sha in shas]) if shas else np.empty((0, width), dtype=dtype)
        write_id = new_write_id()
        vector_rows = pa.table({
            "write_id": pa.array([write_id] * rows.num_rows, pa.string()),
            "id": rows.column("id"), "text_sha256": rows.column("text_sha256"),
            "embedding": pa.FixedSizeListArray.from_arrays(vectors.reshape(-1), width),
            **{name: rows.column(name) if name in rows.column_names else pa.nulls(rows.num_rows, pa.int32())
               for name in CHUNK_COLUMNS},
        })
        # Each text encoded once counts for the first partition that has it.
        mine = (set(shas) & new_shas) - counted
        counted |= mine
        encoded_rows[vid] = len(mine)
        new_rows = sum(sha in new_shas for sha in shas)
        records.append({"version_id": vid, "partition": corpus.partition, "model": snapshot.model,
                        "revision": snapshot.revision, "params_hash": params.params_hash,
                        "params": params.to_json(), "corpus_version": corpus.corpus_version,
                        "rows": rows.num_rows, "reused_rows": rows.num_rows - new_rows, "dim": dim,
                        "dtype": dtype, "bytes": vector_rows.drop(["write_id"]).nbytes, "write_id": write_id,
                        "_rows": vector_rows})
        reused_rows[vid] = rows.num_rows - new_rows
    committed, created, stored_rows = _commit_versions(catalog, records, run_id, damaged,
                                                       read_back_of=corpora if read_back else ())
    if damaged:  # the damaged files' rows may all be written again by now
        damage.retire_damaged_files(catalog, damaged, run_id)
    results = []
    for vid in vids:
        encoded = encoded_rows.get(vid, 0) if vid in created else 0
        version = committed.get(vid) or reuse[vid]
        results.append(EmbeddingWriteResult(
            version, created=vid in created, encoded_rows=encoded,
            reused_rows=reused_rows[vid] if vid in created else version.rows,
            encode_seconds=encode_seconds * encoded / max(1, len(missing_shas)), stored=stored_rows.get(vid)))
    return results


def _stored_vectors(con: duckdb.DuckDBPyConnection, snapshot: ModelSnapshot, params: EmbeddingParams, dtype: str,
                    width: int, rows_by_write: dict[str, pa.Table], damaged: set[str]
                    ) -> tuple[list[str], dict[str, np.ndarray]]:
    """The distinct text hashes of the rows to write, and the vectors stored for them already
    (none from damaged files: those known, `damaged`, and any a read runs into)."""
    all_shas = pa.chunked_array([rows.column("text_sha256") for rows in rows_by_write.values()], type=pa.string())
    unique_shas, _ = unique_with_first_index(all_shas)
    args = (con, snapshot.model, snapshot.revision, params.params_hash, dtype, unique_shas, width)
    try:
        return unique_shas, queries.stored_vectors(*args, exclude=damaged)
    except duckdb.Error as error:  # reuse nothing from damaged files
        if not damage.is_damage_error(error):
            raise
    try:
        return unique_shas, queries.stored_vectors(*args, exclude=damaged | damage.damaged_write_ids(con))
    except duckdb.Error as error:
        # A damaged file's write id range can span healthy writes of other files: the scan
        # cannot skip it by its statistics. Until it is written again, encode instead.
        if not damage.is_damage_error(error):
            raise
        logger.warning("stored vectors lie past a damaged data file; encoding the texts again: %s",
                       str(error).splitlines()[0])
        return unique_shas, {}


def corpus_rows(con: duckdb.DuckDBPyConnection, corpus: CorpusVersion, hint: str = "") -> pa.Table:
    """The stored rows of a corpus version; `DamagedDataError` (`hint` appended to what it
    names) when they lie in a damaged data file."""
    return corpus_rows_of(con, [corpus], hint)[corpus.write_id]


def corpus_rows_of(con: duckdb.DuckDBPyConnection, corpora: Sequence[CorpusVersion],
                   hint: str = "") -> dict[str, pa.Table]:
    """write_id -> stored rows of each corpus version, read in one query; `DamagedDataError`
    naming the first version whose rows lie in a damaged data file."""
    if not corpora:
        return {}
    try:
        return queries.corpus_rows_by_write(con, [corpus.write_id for corpus in corpora])
    except duckdb.Error as error:
        damaged = damage.damaged_write_ids(con, [corpus.write_id for corpus in corpora])
        first = next((c for c in corpora if c.write_id in damaged), corpora[0])
        damage.raise_if_damaged(con, error, f"corpus {first.corpus_version[:16]} of partition "
                                f"{first.partition!r}{hint}", [first.write_id])
        raise


def _commit_versions(catalog: Catalog, records: list[dict], run_id: str | None, damaged: set[str],
                     read_back_of: Sequence[CorpusVersion] = ()
                     ) -> tuple[dict[str, EmbeddingVersion], set[str], dict[str, StoredRows]]:
    """Commit version records in one transaction, with their rows (``_rows``) where given,
    which makes them current; returns the stored versions by id, the ids whose rows this
    call stored, and (for the corpora in `read_back_of`) those rows read back in the same
    connection. Rows of a version that a concurrent writer committed meanwhile are kept
    (not written twice), unless they are among the `damaged` writes."""
    if not records:
        return {}, set(), {}
    vids = [record["version_id"] for record in records]
    partitions = sorted({record["partition"] for record in records})
    base_snapshot: list[int] = []

    def work(con: duckdb.DuckDBPyConnection) -> set[str]:
        base_snapshot[:] = [_current_snapshot(con)]
        with_rows = [record["version_id"] for record in records if "_rows" in record]
        stored = queries.stored_embedding_versions(con, with_rows) if with_rows else {}
        created, inserts, values = set(), {}, []
        for record in records:
            write_id = record["write_id"]
            if "_rows" in record:
                before = stored.get(record["version_id"])
                if before is not None and before.write_id not in damaged:
                    write_id = before.write_id
                else:
                    inserts.setdefault(record["dtype"], []).append(record["_rows"])
                    created.add(record["version_id"])
            values.append([{**record, "run_id": run_id, "write_id": write_id}[column]
                           for column in queries.EMBEDDING_RECORD_COLUMNS])
        for dtype, tables in inserts.items():
            con.register("vector_rows", pa.concat_tables(tables))
            columns = ", ".join(["write_id", "id", "text_sha256", "embedding", *CHUNK_COLUMNS])
            con.execute(f"INSERT INTO {VECTOR_TABLES[dtype][0]} ({columns}) SELECT {columns} FROM vector_rows")
            con.unregister("vector_rows")
        placeholders = ", ".join("?" * len(queries.EMBEDDING_RECORD_COLUMNS))
        con.executemany(f"INSERT INTO embedding_versions VALUES ({placeholders}, current_timestamp)", values)
        if any(record["dtype"] == "float32" for record in records):
            ensure_embeddings_view(con)
        return created

    committed: dict[str, EmbeddingVersion] = {}
    stored_rows: dict[str, StoredRows] = {}

    def after(con: duckdb.DuckDBPyConnection) -> None:
        if _current_snapshot(con) != base_snapshot[0] + 1:  # another commit came between
            repair_embeddings_view(con)
        committed.update(queries.stored_embedding_versions(con, vids))
        if read_back_of:
            written = [committed[vid] for vid in created_ids]
            corpus_of = {corpus.partition: corpus for corpus in read_back_of}
            stored_rows.update(read_back(con, written, [corpus_of[v.partition] for v in written]))

    first = records[0]
    label = repr(partitions[0]) if len(partitions) == 1 else f"{len(partitions)} partitions"
    extra = ({"partition": partitions[0], "version_id": vids[0]} if len(vids) == 1
             else {"partitions": partitions[:50], "partition_count": len(partitions)})
    created_ids: set[str] = set()

    def committed_work(con: duckdb.DuckDBPyConnection) -> set[str]:
        created_ids.clear()
        created_ids.update(work(con))
        return created_ids

    created = catalog.commit(
        committed_work, what=f"embeddings of partition {label}" if len(partitions) == 1 else f"embeddings of {label}",
        message=(f"embeddings {partitions[0] if len(partitions) == 1 else label} "
                 f"{first['model']}@{first['revision'][:12]} {first['params_hash']} (run {run_id})"),
        extra=json.dumps({"run_id": run_id, **extra}), after=after)
    return committed, created, stored_rows


def read_back(con: duckdb.DuckDBPyConnection, versions: Sequence[EmbeddingVersion],
              corpora: Sequence[CorpusVersion]) -> dict[str, StoredRows]:
    """version_id -> the rows of each version as stored, with its corpus version's ids: one
    query per stored dtype and one for the corpus ids."""
    found: dict[str, StoredRows] = {}
    corpus_ids = queries.split_by_write(queries.corpus_ids_by_write(con, [c.write_id for c in corpora]),
                                        [c.write_id for c in corpora])
    for dtype in sorted({version.dtype for version in versions}):
        of_dtype = [(v, c) for v, c in zip(versions, corpora, strict=True) if v.dtype == dtype]
        write_ids = [version.write_id for version, _ in of_dtype]
        try:
            rows = queries.split_by_write(queries.vector_rows_by_write(con, VECTOR_TABLES[dtype][0], write_ids),
                                          write_ids)
        except duckdb.Error as error:
            first = of_dtype[0][0]
            damage.raise_if_damaged(con, error, f"embedding version {first.version_id} of partition "
                                    f"{first.partition!r}", write_ids)
            raise
        for version, corpus in of_dtype:
            part = rows[version.write_id]
            width = vector_width(version.params.get("precision", "float32"), version.dim)
            chunks = part.column("chunk")
            found[version.version_id] = StoredRows(
                part.column("id").to_pylist(), part.column("text_sha256").to_pylist(),
                vectors_to_numpy(part.column("embedding"), width, version.dtype),
                corpus_ids[corpus.write_id].column("id").to_pylist(),
                chunks=None if chunks.null_count == len(chunks) else chunks.to_pylist())
    return found


def _current_snapshot(con: duckdb.DuckDBPyConnection) -> int:
    return con.execute(f"SELECT id FROM {lake_name(con)}.current_snapshot()").fetchone()[0]
