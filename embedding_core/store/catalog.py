"""The lake's catalog: DuckDB connections with the lake attached, its tables, and commits.

The catalog is a DuckDB file (embedded, no server: many processes may read it at once, or
one may write it, so every connection is short; a writer waiting for its turn holds nothing,
so readers never wait on it, and it logs what it waits for every few seconds) or a Postgres
database (``postgres:<libpq string>``, many writers on many machines). DuckDB extensions load from the pip wheels
(``duckdb-extension-*``), never from the network.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import duckdb

import embedding_core.store.views as views
from embedding_core.store.files import DataPath, s3_secret_sql, sql_str

__all__ = ["CATALOG_FILE_NAME", "LAKE", "Catalog", "CommitConflictError", "StoreBusyError"]

CATALOG_FILE_NAME = "catalog.ducklake"
LAKE = "lake"  # the name the lake is attached under in every connection
POSTGRES_PREFIX = "postgres:"
T = TypeVar("T")
logger = logging.getLogger(__name__)
# A join of the current versions with a rows table hands the scan the list of their write
# ids (not just its min and max, DuckDB's default past 50), so DuckLake skips every other
# write's files by their statistics: a damaged file of one write never fails a query that
# does not need its rows (`damage`).
SETTINGS = {"dynamic_or_filter_threshold": 100_000}

# DuckLake has no fixed-size arrays, keys, sequences or indexes: vectors are FLOAT[] (the
# views cast), and every table is append-only. "Current" is the latest committed record
# per key (views.py); `write_id` ties a version record to the rows one writer committed.
_TABLES = {
    "model_snapshots": """model_key VARCHAR, model VARCHAR, revision VARCHAR,
        requested_revision VARCHAR, source VARCHAR, path VARCHAR, dim INTEGER,
        max_seq_length INTEGER, pooling VARCHAR, prompts VARCHAR, default_prompt_name VARCHAR,
        similarity_fn VARCHAR, files_hash VARCHAR, run_id VARCHAR, created_at TIMESTAMPTZ""",
    "corpus_versions": """partition VARCHAR, corpus_version VARCHAR, rows BIGINT,
        rejected_rows BIGINT, bytes BIGINT, source_uri VARCHAR, run_id VARCHAR,
        write_id VARCHAR, created_at TIMESTAMPTZ""",
    "corpus_rows": "write_id VARCHAR, id VARCHAR, text VARCHAR, text_sha256 VARCHAR",
    "embedding_versions": """version_id VARCHAR, partition VARCHAR, model VARCHAR,
        revision VARCHAR, params_hash VARCHAR, params VARCHAR, corpus_version VARCHAR,
        rows BIGINT, reused_rows BIGINT, dim INTEGER, dtype VARCHAR, bytes BIGINT,
        run_id VARCHAR, write_id VARCHAR, created_at TIMESTAMPTZ""",
    # A chunked version's rows: one per chunk, `text_sha256` the chunk's, `chunk` its number
    # and `char_start` / `char_end` its span of the text; NULL for texts embedded whole.
    **{table: f"write_id VARCHAR, id VARCHAR, text_sha256 VARCHAR, embedding {sql_type}, {views.CHUNK_COLUMNS_SQL}"
       for table, sql_type in views.VECTOR_TABLES.values()},
    # One record per landing file ingested, deleted or retired (`ingest`): per-file lineage.
    "landing_files": """partition VARCHAR, relative_path VARCHAR, fingerprint VARCHAR,
        corpus_version VARCHAR, state VARCHAR, detail VARCHAR, run_id VARCHAR,
        created_at TIMESTAMPTZ""",
    # One record per vector index built (`vector_index`): its files and what it covers.
    "vector_indexes": """index_id VARCHAR, model VARCHAR, revision VARCHAR, params_hash VARCHAR,
        dim INTEGER, metric VARCHAR, dtype VARCHAR, lake_snapshot BIGINT, versions VARCHAR,
        rows BIGINT, path VARCHAR, rows_path VARCHAR, bytes BIGINT, mode VARCHAR,
        build_seconds DOUBLE, run_id VARCHAR, created_at TIMESTAMPTZ""",
    # One record per promotion of a version set to serving (`serving`), append-only: the
    # latest of a model names its serving version set. Keys for people, revision and
    # params hash for the views.
    "promotions": """model VARCHAR, from_key VARCHAR, from_revision VARCHAR, from_params_hash VARCHAR,
        to_key VARCHAR, to_revision VARCHAR, to_params_hash VARCHAR, metrics VARCHAR, reason VARCHAR,
        forced BOOLEAN, run_id VARCHAR, created_at TIMESTAMPTZ""",
}
# One record per commit: kept in the catalog database (DuckLake "inlining"), not as one
# tiny Parquet file per commit that every later query would have to open.
_RECORD_TABLES = ("model_snapshots", "corpus_versions", "embedding_versions", "landing_files", "vector_indexes",
                  "promotions")
# Postgres advisory lock held while a brand-new catalog gets DuckLake's metadata and our
# tables: two processes attaching it at once would both try to create them.
_SCHEMA_LOCK_KEY = 0x656D6264_73746F72  # "embdstor"
# While it waits for the catalog file, a connection says so this often (seconds).
BUSY_LOG_INTERVAL_S = 5.0
# Another process holds the catalog file, or another connection of this one does.
_FILE_LOCK_WORDS = ("could not set lock", "unique file handle conflict")


def lock_holder(error: BaseException) -> str:
    """Who holds the catalog file, as DuckDB's lock error names it."""
    found = re.search(r"lock is held in (.+?) \(PID (\d+)\)", str(error))
    if found:
        return f"process {found.group(2)} ({found.group(1)})"
    if "unique file handle conflict" in str(error).lower():
        return "another connection of this process"
    return "another process"


class StoreBusyError(RuntimeError):
    """The DuckDB catalog file stayed held by another process for the whole wait."""


class CommitConflictError(RuntimeError):
    """A commit kept conflicting with concurrent writers; retrying the step will succeed."""


# One DuckDB instance per process loads the extensions once: loading one verifies its
# signature over the whole file, about 0.3 s each, too slow to pay per connection.
_engine_lock = threading.Lock()
_engine: dict[str, object] = {}


def _engine_cursor(extensions: list[str]) -> duckdb.DuckDBPyConnection:
    """A new connection to this process's DuckDB instance, with `extensions` loaded from
    their pip wheels (no download, nothing installed)."""
    with _engine_lock:
        if _engine.get("pid") != os.getpid():  # a forked child must not share its parent's
            _engine.update(pid=os.getpid(), loaded=set(), con=duckdb.connect(
                config={"autoinstall_known_extensions": False, "autoload_known_extensions": False,
                        **SETTINGS}))
        con, loaded = _engine["con"], _engine["loaded"]
        version = con.execute("PRAGMA version").fetchone()[0]
        for name in extensions:
            if name not in loaded:
                module = importlib.import_module(f"duckdb_extension_{name}")
                path = Path(module.__file__).parent / "extensions" / version / f"{name}.duckdb_extension"
                con.execute(f"LOAD {sql_str(str(path))}")
                loaded.add(name)
        return con.cursor()


class Catalog:
    """Opens DuckDB connections with the lake attached as `lake` and made the default.

    Args:
        spec: a DuckDB file path, or ``postgres:<libpq key=value string>``.
        data: where the Parquet files live.
        busy_timeout_s: how long to wait for another process holding a DuckDB catalog file.
        commit_attempts: tries of one commit that conflicts with concurrent writers.
    """

    def __init__(self, spec: str, data: DataPath, busy_timeout_s: float = 600.0,
                 commit_attempts: int = 6) -> None:
        self.is_postgres = spec.startswith(POSTGRES_PREFIX)
        self.spec = spec
        self.data = data
        self.busy_timeout_s = busy_timeout_s
        self.commit_attempts = commit_attempts

    @property
    def label(self) -> str:
        """The catalog with any password masked: safe for logs and metadata."""
        return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", self.spec)

    def attach_sql(self, read_only: bool = False, snapshot: int | None = None, name: str = LAKE) -> str:
        # The root given is authoritative: a store folder that moved keeps working.
        # DuckLake would keep inserts of up to 10 rows in the catalog itself, where FLOAT
        # values lose their last bit (DuckDB 1.5.5): rows go to Parquet; only the record
        # tables, which hold no floats, opt back in (_RECORD_TABLES).
        options = [f"DATA_PATH {sql_str(self.data.data_path)}", "OVERRIDE_DATA_PATH true",
                   "DATA_INLINING_ROW_LIMIT 0"]
        if read_only:
            options.append("READ_ONLY")
        if snapshot is not None:
            options.append(f"SNAPSHOT_VERSION {int(snapshot)}")
        return f"ATTACH {sql_str('ducklake:' + self.spec)} AS {name} ({', '.join(options)})"

    def shell_sql(self) -> str:
        """What opens this lake in a plain ``duckdb`` shell, views included."""
        statements = [s3_secret_sql()] if self.data.is_s3 else []
        settings = [f"SET {name} = {value}" for name, value in SETTINGS.items()]
        return "; ".join([*statements, self.attach_sql(), *settings, f"USE {LAKE};"])

    @contextmanager
    def connection(self, read_only: bool = True,
                   snapshot: int | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection with the lake attached and in use (under a name of its own, see
        `lake_name`), detached on exit. Keep it short: a DuckDB catalog file admits one
        writing process at a time."""
        con = _engine_cursor(["ducklake"] + (["postgres_scanner"] if self.is_postgres else [])
                             + (["httpfs"] if self.data.is_s3 else []))
        name = f"{LAKE}_{uuid.uuid4().hex[:12]}"
        try:
            if self.data.is_s3:
                con.execute(s3_secret_sql())
            self._attach(con, self.attach_sql(read_only, snapshot, name))
            try:
                con.execute(f"USE {name}")
                yield con
            finally:
                with contextlib.suppress(duckdb.Error):  # a transaction left open by an error
                    con.execute("ROLLBACK")
                con.execute("USE memory")
                con.execute(f"DETACH {name}")
        finally:
            con.close()

    def _attach(self, con: duckdb.DuckDBPyConnection, statement: str) -> None:
        """Attach, waiting while another process holds the DuckDB catalog file: nothing is
        held meanwhile, and every `BUSY_LOG_INTERVAL_S` a line says what it waits for."""
        started = time.monotonic()
        next_log = started + BUSY_LOG_INTERVAL_S
        purpose = "read" if "READ_ONLY" in statement else "write"
        while True:
            try:
                con.execute(statement)
                return
            except (duckdb.IOException, duckdb.BinderException) as error:
                if not any(word in str(error).lower() for word in _FILE_LOCK_WORDS):
                    raise
                waited = time.monotonic() - started
                if waited > self.busy_timeout_s:
                    raise StoreBusyError(
                        f"could not {purpose} the catalog {self.label}: it stayed held by "
                        f"{lock_holder(error)} for {self.busy_timeout_s:.0f} s ({error})") from error
                if time.monotonic() >= next_log:
                    logger.warning("Waiting %.0f s (of %.0f s) to %s the catalog %s, held by %s.",
                                   waited, self.busy_timeout_s, purpose, self.label, lock_holder(error))
                    next_log += BUSY_LOG_INTERVAL_S
                time.sleep(0.05 + random.random() * 0.1)

    def ensure_schema(self) -> None:
        """Create DuckLake's metadata, our tables and views once; later calls only look."""
        if not self.is_postgres:
            if Path(self.spec).exists() and self._has_schema():
                return
            Path(self.spec).parent.mkdir(parents=True, exist_ok=True)
            self._create_schema()
            return
        import psycopg2

        lock = psycopg2.connect(self.spec[len(POSTGRES_PREFIX):])
        try:
            with lock.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK_KEY,))
            self._create_schema()
        finally:
            lock.close()  # ends the session, which releases the advisory lock

    def _has_schema(self) -> bool:
        with self.connection(read_only=True) as con:
            return _missing_tables(con) == [] and not _views_outdated(con)

    def _create_schema(self) -> None:
        with self.connection(read_only=False) as con:
            missing = _missing_tables(con)
            fresh = len(missing) == len(_TABLES)
            if not fresh and (missing or _views_outdated(con)):  # a store made by older code
                con.execute("BEGIN TRANSACTION")
                for table in missing:  # tables added since
                    con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({_TABLES[table]})")
                for table, _ in views.VECTOR_TABLES.values():  # columns added since (NULL in old rows)
                    for column in views.CHUNK_COLUMNS_SQL.split(", "):
                        con.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column}")
                for statement in views.schema_views():
                    con.execute(statement)
                # Older code served the latest version of each partition: each model now
                # serves one version set, the one it served (`views.PIN_SERVING_SQL`).
                con.execute(views.PIN_SERVING_SQL, [f"store schema version {views.SCHEMA_VERSION}: the version "
                                                    "set older code served"])
                views.ensure_embeddings_view(con)
                set_commit_message(con, f"store views version {views.SCHEMA_VERSION}")
                con.execute("COMMIT")
            elif fresh:
                con.execute("BEGIN TRANSACTION")
                for table in missing:
                    con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({_TABLES[table]})")
                for statement in views.schema_views():
                    con.execute(statement)
                set_commit_message(con, "create the store")
                con.execute("COMMIT")
            records = [table for table in _RECORD_TABLES if table in missing]
            if records:
                # Tables cannot take options in the transaction that creates them.
                con.execute("BEGIN TRANSACTION")
                for table in records:
                    con.execute(f"CALL {lake_name(con)}.set_option('data_inlining_row_limit', 1000, "
                                "table_name => ?)", [table])
                set_commit_message(con, "keep version records in the catalog")
                con.execute("COMMIT")

    def commit(
        self, work: Callable[[duckdb.DuckDBPyConnection], T], *, what: str, message: str,
        extra: str | None = None, after: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
    ) -> T:
        """Run `work` in one lake transaction with a commit message, and commit it.

        A conflict with a concurrent writer reruns the whole transaction (bounded, with
        backoff) on a fresh snapshot; `after` then runs on the same connection, outside
        the transaction. Raises `CommitConflictError` naming `what` when every try conflicted.
        """
        for attempt in range(1, self.commit_attempts + 1):
            with self.connection(read_only=False) as con:
                con.execute("BEGIN TRANSACTION")
                try:
                    result = work(con)
                    set_commit_message(con, message, extra)
                    con.execute("COMMIT")
                except duckdb.TransactionException as error:
                    if "conflict" not in str(error).lower():
                        raise
                    if attempt == self.commit_attempts:
                        raise CommitConflictError(
                            f"{what}: the commit conflicted with concurrent writers "
                            f"{attempt} times; nothing was stored, retry the step ({error})"
                        ) from error
                    logger.info("%s: the commit conflicted with a concurrent writer (try %d of %d); "
                                "retrying on a fresh snapshot.", what, attempt, self.commit_attempts)
                    time.sleep(0.1 * 2 ** attempt * (0.5 + random.random()))
                    continue
                if after is not None:
                    after(con)
                return result
        raise AssertionError("unreachable")


def lake_name(con: duckdb.DuckDBPyConnection) -> str:
    """The name the lake is attached under in a `Catalog.connection`."""
    return con.execute("SELECT current_database()").fetchone()[0]


def set_commit_message(con: duckdb.DuckDBPyConnection, message: str, extra: str | None = None) -> None:
    """Name the open transaction's commit in the lake's snapshot list."""
    con.execute(f"CALL {lake_name(con)}.set_commit_message('embedding_core', ?, extra_info => ?)",
                [message, extra])


def _missing_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    present = {name for (name,) in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()").fetchall()}
    return [table for table in _TABLES if table not in present]


def _views_outdated(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the store's views are older than this code's (`views.SCHEMA_VERSION`)."""
    if con.execute("SELECT count(*) FROM duckdb_views() WHERE database_name = current_database() "
                   "AND view_name = 'store_schema'").fetchone()[0] == 0:
        return True
    return con.execute("SELECT max(version) FROM store_schema").fetchone()[0] < views.SCHEMA_VERSION
