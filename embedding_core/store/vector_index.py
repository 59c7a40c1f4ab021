"""Approximate-nearest-neighbour indexes over the current vectors of a model version set.

One index per version set, (model, revision, params_hash), over its current float32 vectors
of every partition: the serving set's, and a candidate's when asked for (built before its
promotion, so search switches to it at once; a set that served before keeps its index for a
rollback). Each is a usearch HNSW graph with float16 vectors (``<name>.usearch``, memory-mapped by
readers) and its rows (``<name>.rows.arrow``: key, version_id, partition, id, the text
embedded, chunk and character span; Arrow IPC, memory-mapped), under ``<root>/indexes/``
(`index_files`). docs/performance.md has the measurements that chose the library and its
settings.

A build writes both files under new names, then records them in the catalog's
`vector_indexes` table in one commit: a reader finds the newest record of its lake snapshot
and never a half-written file. Each record names the lake snapshot it read and the
embedding versions it covers, so a reader knows which current versions it lacks (searched
exactly, `search`) and which it holds that are no longer current (filtered out).

An update starts from the previous index of the same model version: the keys of retired
versions are removed, the rows of new versions added. When more than `REBUILD_SHARE` of
its rows would go, or its files cannot be read, it is built from scratch.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import embedding_core.store.damage as damage
from embedding_core.store.catalog import Catalog
from embedding_core.store.files import sql_str
from embedding_core.store.index_files import INDEX_DIR, IndexFiles
from embedding_core.store.maintenance import KEPT_SETS_SQL
from embedding_core.store.queries import CHUNK_TEXT_SQL
from embedding_core.store.records import IndexBuild, IndexRecord
from embedding_core.store.rows import vectors_to_numpy

__all__ = ["LoadedIndex", "build_index", "current_indexes", "expire_indexes", "index_groups", "load_index",
           "version_rows"]

logger = logging.getLogger(__name__)

# HNSW settings (docs/performance.md): 16 links per node, candidate lists of 128 when
# adding and 128 when searching; float16 vectors halve the file with no measured recall loss.
CONNECTIVITY = 16
EXPANSION_ADD = 128
EXPANSION_SEARCH = 128
VECTOR_DTYPE = "f16"
# An update that would remove more than this share of the previous index's rows rebuilds.
REBUILD_SHARE = 0.3
METRICS = {"cosine": "cos", "dot": "ip"}
INDEX_COLUMNS = ("index_id, model, revision, params_hash, dim, metric, dtype, lake_snapshot, versions, "
                 "rows, path, rows_path, bytes, mode, build_seconds, run_id, created_at")
ROWS_SCHEMA = pa.schema([("key", pa.uint64()), ("version_id", pa.string()), ("partition", pa.string()),
                         ("id", pa.string()), ("text", pa.string()), ("chunk", pa.int32()),
                         ("char_start", pa.int32()), ("char_end", pa.int32())])


@dataclass
class LoadedIndex:
    """An index opened for search: the HNSW graph and its rows, both memory-mapped."""

    record: IndexRecord
    index: object  # usearch.index.Index
    rows: pa.Table

    def positions(self, keys: np.ndarray) -> np.ndarray:
        """Row positions of usearch keys (the rows are sorted by key)."""
        return np.searchsorted(self._keys, keys)

    def __post_init__(self) -> None:
        self._keys = self.rows.column("key").to_numpy()
        self.version_codes = self.rows.column("version_id").combine_chunks().dictionary_encode()


def index_groups(con: duckdb.DuckDBPyConnection, model: str | None = None) -> list[tuple[str, str, str, int]]:
    """(model, revision, params_hash, dim) of the current (serving) float32 versions: one index each."""
    where = "WHERE dtype = 'float32'" + (" AND model = ?" if model else "")
    return con.execute(f"SELECT DISTINCT model, revision, params_hash, dim FROM current_embedding_versions {where} "
                       "ORDER BY ALL", [model] if model else []).fetchall()


def current_indexes(con: duckdb.DuckDBPyConnection, model: str | None = None) -> list[IndexRecord]:
    """The newest index record of each model version (of `model`), newest first."""
    where = "WHERE model = ?" if model else ""
    rows = con.execute(f"""SELECT {INDEX_COLUMNS} FROM vector_indexes {where}
        QUALIFY row_number() OVER (PARTITION BY model, revision, params_hash
                                   ORDER BY snapshot_id DESC, rowid DESC) = 1
        ORDER BY snapshot_id DESC, rowid DESC""", [model] if model else []).fetchall()
    return [_record(row) for row in rows]


def _record(row: tuple) -> IndexRecord:
    values = dict(zip(INDEX_COLUMNS.split(", "), row, strict=True))
    values["versions"] = tuple(json.loads(values["versions"]))
    return IndexRecord(**values)


# (store root, index id) -> the open index: a copied store holds the same index ids.
_loaded: dict[tuple[str, str], LoadedIndex] = {}
_loaded_lock = threading.Lock()


def load_index(files: IndexFiles, record: IndexRecord) -> LoadedIndex:
    """The index of `record`, memory-mapped (kept open per process: files never change).
    Raises `OSError` or `ValueError` when a file is missing or damaged."""
    key = (files.root, record.index_id)
    with _loaded_lock:
        if key in _loaded:
            return _loaded[key]
    loaded = _read_index(record, files.local_path(record.path), files.local_path(record.rows_path))
    group = (files.root, record.model, record.revision, record.params_hash)
    with _loaded_lock:  # an older index of the same model version is not needed any more
        for old in [k for k, o in _loaded.items() if (k[0], o.record.model, o.record.revision,
                                                       o.record.params_hash) == group]:
            del _loaded[old]
        _loaded[key] = loaded
    return loaded


def _read_index(record: IndexRecord, index_path: str, rows_path: str) -> LoadedIndex:
    """Open the index files of `record` at these local paths, checking them against it."""
    from usearch.index import Index

    if os.path.exists(index_path) and os.path.getsize(index_path) != record.bytes:
        raise ValueError(f"index file {record.path} is damaged: {os.path.getsize(index_path)} bytes, the "
                         f"catalog recorded {record.bytes}")
    for path, name in ((index_path, record.path), (rows_path, record.rows_path)):
        if not os.path.exists(path):
            raise ValueError(f"index file {name} is missing")
    try:
        index = Index.restore(index_path, view=True)
    except Exception as error:  # usearch raises RuntimeError for a file it cannot parse
        raise ValueError(f"index file {record.path} cannot be read: {error}") from error
    if index is None or index.ndim != record.dim or len(index) != record.rows:
        raise ValueError(f"index file {record.path} is damaged: it holds "
                         f"{'nothing' if index is None else f'{len(index)} vectors of {index.ndim} dims'}, "
                         f"the catalog recorded {record.rows} of {record.dim}")
    index.expansion_search = EXPANSION_SEARCH
    try:
        rows = pa.ipc.open_file(pa.memory_map(rows_path)).read_all()
    except (pa.ArrowInvalid, OSError) as error:
        raise ValueError(f"index rows file {record.rows_path} cannot be read: {error}") from error
    if rows.schema.names != ROWS_SCHEMA.names:
        raise ValueError(f"index rows file {record.rows_path} has the columns of older code "
                         f"({', '.join(rows.schema.names)}): the next build replaces it")
    if rows.num_rows != record.rows:
        raise ValueError(f"index rows file {record.rows_path} holds {rows.num_rows} rows, the catalog "
                         f"recorded {record.rows}")
    return LoadedIndex(record, index, rows)


def damaged_index_files(con: duckdb.DuckDBPyConnection, files: IndexFiles,
                        read_rows: bool = False) -> list[tuple[str, str]]:
    """(root-relative file, problem) for each damaged file of every version set's newest index: missing,
    of another size than recorded, unreadable, and (with `read_rows`) holding rows or
    vectors other than the stored ones. The next `vector_index` materialization rebuilds it."""
    damaged = []
    for record in current_indexes(con):
        size = files.size(record.path)
        if size is None or files.size(record.rows_path) is None:
            missing = record.path if size is None else record.rows_path
            damaged.append((missing, "missing"))
            continue
        if size != record.bytes:
            damaged.append((record.path, f"size {size} bytes, the catalog recorded {record.bytes}"))
            continue
        with tempfile.TemporaryDirectory(prefix="verify-index-") as scratch:
            try:
                loaded = _read_index(record, files.fresh_copy(record.path, scratch),
                                     files.fresh_copy(record.rows_path, scratch))
                problem = _content_problem(con, loaded) if read_rows else None
            except ValueError as error:
                problem = f"unreadable: {error}"
            if problem is not None:
                damaged.append((record.rows_path if record.rows_path in problem else record.path, problem))
    return damaged


def _content_problem(con: duckdb.DuckDBPyConnection, loaded: LoadedIndex) -> str | None:
    """Whether the index's rows and vectors are those the lake stores for its versions."""
    stored = {v for (v,) in con.execute("SELECT version_id FROM stored_embedding_versions "
                                        "WHERE list_contains(?, version_id)",
                                        [list(loaded.record.versions)]).fetchall()}
    try:
        rows, vectors = version_rows(con, sorted(stored), loaded.record.dim)
    except duckdb.Error as error:  # the lake's own damage, which its check reports
        if damage.is_damage_error(error):
            return None
        raise
    order = [("version_id", "ascending"), ("id", "ascending"), ("chunk", "ascending")]
    held = loaded.rows.filter(pc.is_in(loaded.rows.column("version_id"), pa.array(sorted(stored))))
    held = held.take(pc.sort_indices(held, order))
    expected = pc.sort_indices(rows, order)
    if not held.drop(["key"]).equals(rows.take(expected)):
        return "its rows are not the stored rows of the versions it covers"
    indexed = np.asarray(loaded.index.get(held.column("key").to_numpy()), np.float32).reshape(len(held), -1)
    wanted = vectors[expected.to_numpy()]
    cosine = np.sum(indexed * wanted, axis=1) / np.maximum(
        np.linalg.norm(indexed, axis=1) * np.linalg.norm(wanted, axis=1), 1e-12)
    if len(cosine) and cosine.min() < 0.99:
        return f"{int((cosine < 0.99).sum())} of its vectors are not the stored ones"
    return None


# ----------------------------------------------------------------------------- building

def version_rows(con: duckdb.DuckDBPyConnection, versions: list[str], dim: int) -> tuple[pa.Table, np.ndarray]:
    """version_id, partition, id, text (the chunk's, for chunk rows), chunk, char_start,
    char_end and the float32 vectors of the rows of `versions`."""
    if not versions:
        return ROWS_SCHEMA.remove(0).empty_table(), np.empty((0, dim), np.float32)
    writes = con.execute("SELECT write_id FROM stored_embedding_versions WHERE list_contains(?, version_id)",
                         [versions]).fetchall()
    literals = ", ".join(sql_str(w) for (w,) in writes)
    table = con.execute(f"""
        SELECT v.version_id, v.partition, r.id, {CHUNK_TEXT_SQL.format(rows="r", text="c.text")} AS text,
               coalesce(r.chunk, 0)::INTEGER AS chunk, r.char_start, r.char_end, r.embedding
        FROM embedding_rows r
        JOIN stored_embedding_versions v ON v.write_id = r.write_id AND list_contains(?, v.version_id)
        JOIN stored_corpus_versions cv ON cv.partition = v.partition AND cv.corpus_version = v.corpus_version
        LEFT JOIN corpus_rows c ON c.write_id = cv.write_id AND c.id = r.id
        WHERE r.write_id IN ({literals}) ORDER BY v.version_id, r.rowid""", [versions]).to_arrow_table()
    vectors = vectors_to_numpy(table.column("embedding"), dim, "float32")
    return table.drop(["embedding"]).cast(ROWS_SCHEMA.remove(0)), vectors


def build_index(catalog: Catalog, files: IndexFiles, group: tuple[str, str, str, int], metric: str = "cosine",
                run_id: str | None = None, rebuild: bool = False) -> IndexBuild:
    """Make the index of one version set cover its current versions (the latest of each
    partition): an update of the previous one when that is cheaper, a full build otherwise
    (or with `rebuild`)."""
    from usearch.index import Index

    model, revision, params_hash, dim = group
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, not {metric!r}")
    started = time.perf_counter()
    with catalog.connection() as con:
        lake_snapshot = con.execute("SELECT max(snapshot_id) FROM ducklake_snapshots(current_database())").fetchone()[0]
    with catalog.connection(snapshot=lake_snapshot) as con:
        current = [v for (v,) in con.execute(
            "SELECT version_id FROM latest_embedding_versions WHERE dtype = 'float32' AND model = ? AND "
            "revision = ? AND params_hash = ? ORDER BY version_id", [model, revision, params_hash]).fetchall()]
        previous = next((r for r in current_indexes(con, model)
                         if (r.revision, r.params_hash) == (revision, params_hash)), None)
        base = (_usable_previous(files, previous, dim, metric, damage.recorded_damage(con))
                if previous and not rebuild else None)
        if base is not None and set(base.record.versions) == set(current):
            return IndexBuild(base.record, 0, 0, unchanged=True)
        retired = set(base.record.versions) - set(current) if base else set()
        if base is not None and retired:
            gone = np.isin(base.rows.column("version_id").to_numpy(zero_copy_only=False), list(retired))
            if gone.mean() > REBUILD_SHARE:
                base = None
        added = sorted(set(current) - set(base.record.versions)) if base else current
        new_rows, vectors = version_rows(con, added, dim)
    if base is not None:
        index = Index.restore(files.local_path(base.record.path))  # a copy in memory, not a view
        index.expansion_add = EXPANSION_ADD
        old_rows = base.rows.filter(pa.array(~gone)) if retired else base.rows
        removed = base.rows.num_rows - old_rows.num_rows
        if removed:
            index.remove(base.rows.column("key").to_numpy()[gone])
        # Keys are never reused (usearch keeps removed ones as tombstones): the rows file
        # records the next free one.
        next_key = int((base.rows.schema.metadata or {}).get(b"next_key", base.rows.num_rows))
    else:
        index = Index(ndim=dim, metric=METRICS[metric], dtype=VECTOR_DTYPE, connectivity=CONNECTIVITY,
                      expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH)
        old_rows, removed, next_key = ROWS_SCHEMA.empty_table(), 0, 0
    keys = np.arange(next_key, next_key + len(vectors), dtype=np.uint64)
    if len(vectors):
        index.add(keys, vectors, threads=os.cpu_count() or 1)
    rows = pa.concat_tables([old_rows, new_rows.add_column(0, "key", pa.array(keys)).cast(ROWS_SCHEMA)])
    index_id = uuid.uuid4().hex
    stem = f"{INDEX_DIR}/{_slug(model)}/{lake_snapshot:010d}-{index_id[:16]}"
    with tempfile.TemporaryDirectory(prefix="vector-index-") as scratch:
        index.save(os.path.join(scratch, "index.usearch"))
        schema = ROWS_SCHEMA.with_metadata({"next_key": str(next_key + len(vectors))})
        with pa.ipc.new_file(os.path.join(scratch, "rows.arrow"), schema) as writer:
            writer.write_table(rows.replace_schema_metadata(schema.metadata), max_chunksize=1 << 16)
        size = files.put(os.path.join(scratch, "index.usearch"), f"{stem}.usearch")
        files.put(os.path.join(scratch, "rows.arrow"), f"{stem}.rows.arrow")
    record = IndexRecord(
        index_id=index_id, model=model, revision=revision, params_hash=params_hash, dim=dim, metric=metric,
        dtype=VECTOR_DTYPE, lake_snapshot=lake_snapshot, versions=tuple(current), rows=rows.num_rows,
        path=f"{stem}.usearch", rows_path=f"{stem}.rows.arrow", bytes=size,
        mode="update" if base is not None else "full", build_seconds=round(time.perf_counter() - started, 3),
        run_id=run_id, created_at=datetime.now(timezone.utc))

    def insert(con: duckdb.DuckDBPyConnection) -> None:
        values = [getattr(record, name) for name in INDEX_COLUMNS.split(", ")]
        values[INDEX_COLUMNS.split(", ").index("versions")] = json.dumps(list(record.versions))
        con.execute(f"INSERT INTO vector_indexes ({INDEX_COLUMNS}) VALUES ({', '.join('?' * len(values))})", values)

    catalog.commit(insert, what=f"vector index of {model}",
                   message=f"vector index of {model}@{revision[:12]}: {record.rows} rows ({record.mode})",
                   extra=run_id)
    return IndexBuild(record, len(vectors), removed, unchanged=False)


def _usable_previous(files: IndexFiles, record: IndexRecord, dim: int, metric: str,
                     recorded: dict[str, str]) -> LoadedIndex | None:
    """The previous index, if it can be updated: same shape, its stored files of the recorded
    size (not only a cached copy), not found damaged by `verify --read-rows`, and read."""
    if record.dim != dim or record.metric != metric:
        return None
    problem = recorded.get(os.path.basename(record.path))
    if problem is None and (files.size(record.path) != record.bytes or files.size(record.rows_path) is None):
        problem = "missing or of another size than recorded"
    if problem is not None:
        logger.warning("vector index %s is not updated but built again: %s", record.path, problem)
        return None
    try:
        return load_index(files, record)
    except (OSError, ValueError) as error:
        logger.warning("vector index %s is not updated but built again: %s", record.path, error)
        return None


def _slug(model: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in model)[-80:] or "model"


# ----------------------------------------------------------------------------- maintenance

def expire_indexes(catalog: Catalog, files: IndexFiles, older_than: timedelta) -> int:
    """Delete the files of index records made before now - `older_than` that are not the
    newest of a version set maintenance keeps (the serving one, the one before it, candidates:
    `maintenance.KEPT_SETS_SQL`), and those records, and files under ``indexes/`` no record
    names that are that old (a build that died before its commit). Returns how many files
    were deleted."""
    cutoff = datetime.now(timezone.utc) - older_than
    with catalog.connection() as con:
        # The newest index of each version set that maintenance keeps.
        live = set(con.execute(KEPT_SETS_SQL, [cutoff]).fetchall())
        keep = {r.index_id for r in current_indexes(con) if (r.model, r.revision, r.params_hash) in live}
        records = [(index_id, path, rows_path, created) for index_id, path, rows_path, created in con.execute(
            "SELECT index_id, path, rows_path, created_at FROM vector_indexes").fetchall()]
    expired = [r for r in records if r[0] not in keep and r[3] < cutoff]
    if expired:
        catalog.commit(lambda con: con.execute("DELETE FROM vector_indexes WHERE list_contains(?, index_id)",
                                               [[r[0] for r in expired]]),
                       what="index maintenance", message=f"maintenance: drop {len(expired)} old vector index(es)")
    named = {p for r in records if r not in expired for p in r[1:3]}
    deleted = 0
    for path, mtime in files.listing():
        if mtime is not None and mtime.tzinfo is None:
            mtime = mtime.replace(tzinfo=timezone.utc)
        if path not in named and (mtime is None or mtime < cutoff):
            files.delete(path)
            deleted += 1
    return deleted
