"""Finding damaged data files: a Parquet file of the lake that is missing, of another size
than the catalog recorded, or whose footer (or, when asked, any row) cannot be read.

Every shard's rows are one write (`write_id`) in files of their own, so a damaged file
names the writes, and through their version records the partitions, it takes down. The
store's readers and writers use this to leave a damaged partition out, count it stale and
write it again, instead of failing for every partition.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import duckdb

import embedding_core.store.catalog as catalog
from embedding_core.store.views import VECTOR_TABLES

__all__ = ["DamagedDataError", "DamagedFile", "VerifyReport", "damaged_files", "damaged_write_ids",
           "is_damage_error", "raise_if_damaged", "record_damage", "recorded_damage", "retire_damaged_files", "verify"]

logger = logging.getLogger(__name__)

# Tables whose rows live in Parquet files (the record tables stay inlined in the catalog).
ROW_TABLES = ("corpus_rows", *(table for table, _ in VECTOR_TABLES.values()))
# DuckDB's words for a data file it could not open or decode.
_DAMAGE_WORDS = ("no such file", "cannot open file", "invalid footer", "not a parquet file",
                 "parquet", "could not read", "corrupt", "snappy", "zstd", "thrift", "magic bytes",
                 "outside file", "tprotocolexception")
# What `verify --read-rows` found that the size and the footer do not show: recorded, so the
# writers' cheap checks see it too and the next materialization writes those rows again.
REPORTS_TABLE = "damage_reports"
# The `table` of a damaged vector index file in a `VerifyReport`.
INDEX_TABLE = "vector_indexes"


@dataclass(frozen=True)
class DamagedFile:
    """One data file the lake references that cannot be read as recorded.

    `write_ids` are the writes whose rows it holds; `partitions` the partitions whose
    versions those writes back, and `current` whether one of them is a current version.
    """

    path: str
    table: str
    problem: str
    write_ids: tuple[str, ...]
    partitions: tuple[str, ...] = ()
    current: bool = False


@dataclass(frozen=True)
class VerifyReport:
    """What `EmbeddingStore.verify` found: files checked and the damaged ones.

    `damaged_partitions` are the partitions whose current corpus or embeddings lie in a
    damaged file: write them again (materialize the partition) to repair them;
    `damaged_indexes` the vector index files to build again.
    """

    files_checked: int
    damaged_files: list[DamagedFile] = field(default_factory=list)
    damaged_partitions: list[str] = field(default_factory=list)
    read_rows: bool = False

    @property
    def ok(self) -> bool:
        return not self.damaged_files

    @property
    def damaged_indexes(self) -> list[DamagedFile]:
        """Damaged vector index files: materialize `vector_index` to build them again."""
        return [file for file in self.damaged_files if file.table == INDEX_TABLE]


def is_damage_error(error: BaseException) -> bool:
    """Whether a DuckDB error looks like a data file that is missing or unreadable."""
    # A file cut short can also surface as a plain `duckdb.Error` ("Prefetch registered for
    # bytes outside file"), depending on which columns the query reads.
    if not isinstance(error, (duckdb.IOException, duckdb.InvalidInputException, duckdb.InternalException)) \
            and type(error) is not duckdb.Error:
        return False
    return any(word in str(error).lower() for word in _DAMAGE_WORDS)


@dataclass(frozen=True)
class _LakeFile:
    path: str
    table: str
    size: int
    rows: int
    write_ids: tuple[str, str | None]  # min and max write_id of the file (equal: one write)
    delete_path: str | None
    delete_size: int | None
    file_id: int | None = None
    begin_snapshot: int | None = None


def _lake_files(con: duckdb.DuckDBPyConnection) -> list[_LakeFile]:
    """Every data file of the rows tables in the connection's snapshot."""
    lake = catalog.lake_name(con)
    meta = f'"__ducklake_metadata_{lake}"'
    stats = {(table, name.rsplit("/", 1)[-1]): (size, rows, low, high, file_id, begin)
             for table, name, size, rows, low, high, file_id, begin in con.execute(
        f"""SELECT t.table_name, f.path, f.file_size_bytes, f.record_count, s.min_value, s.max_value,
                   f.data_file_id, f.begin_snapshot
            FROM {meta}.ducklake_data_file f
            JOIN {meta}.ducklake_table t ON t.table_id = f.table_id AND t.end_snapshot IS NULL
            LEFT JOIN {meta}.ducklake_column c ON c.table_id = f.table_id AND c.column_name = 'write_id'
                 AND c.end_snapshot IS NULL
            LEFT JOIN {meta}.ducklake_file_column_stats s
                 ON s.data_file_id = f.data_file_id AND s.column_id = c.column_id
            WHERE f.end_snapshot IS NULL""").fetchall()}
    files = []
    for table in ROW_TABLES:
        listed = con.execute("SELECT data_file, delete_file, delete_file_size_bytes "
                             "FROM ducklake_list_files(?, ?)", [lake, table]).fetchall()
        for path, delete_path, delete_size in listed:
            size, rows, low, high, file_id, begin = stats.get((table, path.rsplit("/", 1)[-1]), (None,) * 6)
            files.append(_LakeFile(path, table, size, rows, (low, high), delete_path, delete_size, file_id, begin))
    return files


def _records_table(table: str) -> str:
    return "corpus_versions" if table == "corpus_rows" else "embedding_versions"


def _writes_of(con: duckdb.DuckDBPyConnection, file: _LakeFile) -> tuple[str, ...]:
    """The writes whose rows the file holds: those in its write id range first recorded in
    the commit that added it (a write id is new in the commit that inserts its rows; the
    range alone may span writes of other files)."""
    low, high = file.write_ids
    if low is None:
        return ()
    if file.begin_snapshot is None or high in (None, low):
        return tuple(dict.fromkeys(w for w in (low, high) if w is not None))
    rows = con.execute(f"SELECT write_id FROM {_records_table(file.table)} WHERE write_id BETWEEN ? AND ? "
                       "GROUP BY write_id HAVING min(snapshot_id) = ? ORDER BY write_id",
                       [low, high, file.begin_snapshot]).fetchall()
    return tuple(w for (w,) in rows) or (low, high)


def recorded_damage(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """File name -> what `verify --read-rows` recorded wrong with it (data and index files)."""
    if not con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
                       "AND table_name = ?", [REPORTS_TABLE]).fetchone()[0]:
        return {}
    return dict(con.execute(f"SELECT file_name, any_value(problem) FROM {REPORTS_TABLE} GROUP BY ALL").fetchall())


def _listed(con: duckdb.DuckDBPyConnection, pattern: str) -> dict[str, int]:
    """Sizes of the files matching a glob (`read_blob` lists, it reads no content)."""
    try:
        return dict(con.execute("SELECT filename, size FROM read_blob(?)", [pattern]).fetchall())
    except duckdb.IOException as error:
        if "no files found" in str(error).lower() or "404" in str(error):
            return {}
        raise


def _sizes(con: duckdb.DuckDBPyConnection, paths: list[str]) -> dict[str, int]:
    """The size of each of `paths` that exists: a stat per local file; for object storage
    one listing of their common prefix when there are many (a request per file is slow)."""
    local = [path for path in paths if "://" not in path]
    sizes = {}
    for path in local:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            sizes[path] = os.stat(path).st_size
    remote = [path for path in paths if "://" in path]
    if len(remote) > 8:
        prefix = os.path.commonprefix(remote).rsplit("/", 1)[0]
        listed = _listed(con, prefix + "/**")
        sizes.update({path: listed[path] for path in remote if path in listed})
    else:
        for path in remote:
            sizes.update(_listed(con, path))
    return sizes


def _problem(con: duckdb.DuckDBPyConnection, path: str, size: int | None, rows: int | None,
             actual: int | None, footers: bool, read_rows: bool) -> str | None:
    """What is wrong with one file of `actual` size, or None: existence and size, then
    (with `footers`) the footer, then (with `read_rows`) every row."""
    if actual is None:
        return "missing"
    if size is not None and actual != size:
        return f"size {actual} bytes, the catalog recorded {size}"
    if not footers and not read_rows:
        return None
    try:
        found = con.execute("SELECT num_rows FROM parquet_file_metadata(?)", [path]).fetchone()[0]
        if rows is not None and found != rows:
            return f"footer says {found} rows, the catalog recorded {rows}"
        if read_rows:
            reader = con.execute("SELECT * FROM read_parquet(?)", [path]).to_arrow_reader()
            for _ in reader:
                pass
    except (duckdb.Error, OSError) as error:
        return f"unreadable: {str(error).splitlines()[0]}"
    return None


def _damaged_lake_files(con: duckdb.DuckDBPyConnection, write_ids: Iterable[str] | None, read_rows: bool,
                        footers: bool) -> tuple[int, list[tuple[_LakeFile, DamagedFile]]]:
    wanted = None if write_ids is None else set(write_ids)
    files = []
    for file in _lake_files(con):
        low, high = file.write_ids
        if wanted is not None and low is not None and not (
                low in wanted if high in (None, low) else any(low <= w <= high for w in wanted)):
            continue
        files.append(file)
    sizes = _sizes(con, [f.path for f in files] + [f.delete_path for f in files if f.delete_path])
    recorded = recorded_damage(con)
    damaged = []
    for file in files:
        problem = _problem(con, file.path, file.size, file.rows, sizes.get(file.path), footers, read_rows)
        target = file.path
        if problem is None and file.delete_path is not None:
            problem = _problem(con, file.delete_path, file.delete_size, None, sizes.get(file.delete_path),
                               footers, read_rows)
            target = file.delete_path
        if problem is None:
            problem = recorded.get(os.path.basename(file.path))
        if problem is not None:
            writes = _writes_of(con, file)
            if wanted is None or not writes or wanted & set(writes):
                damaged.append((file, DamagedFile(target, file.table, problem, writes)))
    return len(files), damaged


def damaged_files(con: duckdb.DuckDBPyConnection, write_ids: Iterable[str] | None = None,
                  read_rows: bool = False, footers: bool = True) -> tuple[int, list[DamagedFile]]:
    """Check the rows tables' files (only those holding `write_ids`, when given): that
    each exists with its recorded size, then (`footers`) its Parquet footer, then
    (`read_rows`) its rows; a file `verify --read-rows` recorded stays damaged. Returns how
    many files were checked and the damaged ones (partitions not yet filled in)."""
    checked, damaged = _damaged_lake_files(con, write_ids, read_rows, footers)
    return checked, [found for _, found in damaged]


def _owners(con: duckdb.DuckDBPyConnection, file: DamagedFile) -> tuple[list[str], bool]:
    """The partitions whose versions the file's writes back, and whether one is current."""
    if not file.write_ids:
        return [], False
    records = _records_table(file.table)
    current = "current_corpus_versions" if file.table == "corpus_rows" else "current_embedding_versions"
    writes = list(file.write_ids)
    partitions = [p for (p,) in con.execute(
        f"SELECT DISTINCT partition FROM {records} WHERE list_contains(?, write_id) ORDER BY partition",
        [writes]).fetchall()]
    is_current = con.execute(f"SELECT count(*) FROM {current} WHERE list_contains(?, write_id)",
                             [writes]).fetchone()[0] > 0
    return partitions, is_current


def verify(con: duckdb.DuckDBPyConnection, write_ids: Iterable[str] | None = None,
           read_rows: bool = False) -> VerifyReport:
    """Check the lake's data files and name the partitions damage takes down."""
    checked, files = damaged_files(con, write_ids, read_rows)
    named = []
    for file in files:
        partitions, current = _owners(con, file)
        named.append(DamagedFile(file.path, file.table, file.problem, file.write_ids, tuple(partitions), current))
    damaged = sorted({p for f in named if f.current for p in f.partitions})
    for file in named:
        logger.warning("Damaged data file %s (%s, partitions %s%s): %s", file.path, file.table,
                       list(file.partitions), ", current" if file.current else "", file.problem)
    return VerifyReport(checked, named, damaged, read_rows)


def record_damage(catalog_: catalog.Catalog, files: Iterable[DamagedFile]) -> None:
    """Record the damage a file's size does not show (found reading its footer or rows), so
    that the writers' cheap checks see it: the next materialization writes those rows again
    (or rebuilds that index)."""
    deep = [f for f in files if not f.problem.startswith(("missing", "size"))]
    if not deep:
        return
    with catalog_.connection() as con:
        known = recorded_damage(con)
    rows = [[os.path.basename(f.path), f.path, f.problem] for f in deep if os.path.basename(f.path) not in known]
    if not rows:
        return

    def work(con: duckdb.DuckDBPyConnection) -> None:
        con.execute(f"CREATE TABLE IF NOT EXISTS {REPORTS_TABLE} "
                    "(file_name VARCHAR, path VARCHAR, problem VARCHAR, created_at TIMESTAMPTZ)")
        con.executemany(f"INSERT INTO {REPORTS_TABLE} VALUES (?, ?, ?, current_timestamp)", rows)

    catalog_.commit(work, what="damage report", message=f"verify: {len(rows)} damaged data file(s) found "
                    "reading their rows")


def retire_damaged_files(catalog_: catalog.Catalog, write_ids: Iterable[str], run_id: str | None = None
                         ) -> list[str]:
    """Take out of the lake each damaged data file holding `write_ids` none of whose writes
    backs the latest version of a partition any more (all were written again): the records
    of its writes go in one commit, and the file leaves the catalog at that commit, so
    `verify` is clean. DuckLake cannot delete rows it cannot read, nor drop a file: the
    file's catalog entry gets the commit as its end. Returns the files retired."""
    with catalog_.connection() as con:
        live = {w for (w,) in con.execute("SELECT write_id FROM current_corpus_versions UNION "
                                          "SELECT write_id FROM latest_embedding_versions").fetchall()}
        retiring = [(file, found) for file, found in _damaged_lake_files(con, write_ids, False, True)[1]
                    if found.write_ids and not live & set(found.write_ids) and file.file_id is not None]
    if not retiring:
        return []

    def work(con: duckdb.DuckDBPyConnection) -> None:
        for file, found in retiring:
            con.execute(f"DELETE FROM {_records_table(file.table)} WHERE list_contains(?, write_id)",
                        [list(found.write_ids)])

    catalog_.commit(work, what="retiring damaged data files",
                    message=f"retire {len(retiring)} damaged data file(s) written again (run {run_id})")
    with catalog_.connection(read_only=False) as con:
        lake = catalog.lake_name(con)
        meta = f'"__ducklake_metadata_{lake}"'
        snapshot = con.execute(f"SELECT id FROM {lake}.current_snapshot()").fetchone()[0]
        ids = [file.file_id for file, _ in retiring]
        con.execute("BEGIN TRANSACTION")
        for table in ("ducklake_data_file", "ducklake_delete_file"):
            con.execute(f"UPDATE {meta}.{table} SET end_snapshot = ? WHERE list_contains(?, data_file_id) "
                        "AND end_snapshot IS NULL", [snapshot, ids])
        con.execute("COMMIT")
    for _, found in retiring:
        logger.warning("Retired damaged data file %s (%s): its rows were written again", found.path, found.table)
    return [found.path for _, found in retiring]


class DamagedDataError(RuntimeError):
    """Rows a call needs lie in a damaged data file; `verify` names them, and writing the
    partition again repairs it."""


def damaged_write_ids(con: duckdb.DuckDBPyConnection, write_ids: Iterable[str] | None = None,
                      footers: bool = True) -> set[str]:
    """The writes (of `write_ids`, or all) whose rows lie in a damaged file."""
    return {w for file in damaged_files(con, write_ids, footers=footers)[1] for w in file.write_ids}


def raise_if_damaged(con: duckdb.DuckDBPyConnection, error: BaseException, what: str,
                     write_ids: Iterable[str]) -> None:
    """Raise `DamagedDataError` naming `what` and the files, when `error` came from damaged
    files holding `write_ids`; otherwise return (the caller raises `error` again)."""
    if not is_damage_error(error):
        return
    _, files = damaged_files(con, write_ids)
    if files:
        listed = "; ".join(f"{f.path}: {f.problem}" for f in files)
        raise DamagedDataError(f"{what} lies in damaged data files ({listed}); write it again "
                               "(materialize the partition) to repair it") from error
