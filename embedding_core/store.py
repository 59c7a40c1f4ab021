"""Versioned embedding store: Parquet files for the vectors, a DuckDB file for the catalog.

Layout under the store root (a local folder or any pyarrow filesystem URI)::

    <root>/corpus/<partition>/<corpus-version>.parquet
    <root>/embeddings/<model>/<revision>/<params-hash>/<partition>/<corpus-version>.parquet
    <root>/catalog.duckdb          (local roots; remote roots name a local catalog file)

Every file is written under a temporary name, flushed to disk and renamed, so a file
under its final name is always complete. A catalog row is inserted only after its
file exists, inside a short transaction under a file lock, and no catalog connection
is held while texts are encoded. A changed corpus, model revision or encoding parameter
gets a new file beside the old one; nothing is ever overwritten.

Example::

    store = EmbeddingStore("store")
    corpus = store.write_corpus("docs", table)            # id, text, text_sha256
    store.record_model_snapshot(snapshot)
    result = store.write_embeddings("docs", corpus, snapshot, EmbeddingParams(), model.encode)
    with store.connect() as con:
        con.sql("SELECT id, embedding FROM embeddings").fetchall()
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from filelock import FileLock

__all__ = [
    "CATALOG_FILE_NAME",
    "CorpusVersion",
    "EmbeddingParams",
    "EmbeddingStore",
    "EmbeddingVersion",
    "EmbeddingWriteResult",
    "ModelSnapshot",
    "SearchHit",
    "corpus_table",
    "text_sha256",
    "vector_width",
]

CATALOG_FILE_NAME = "catalog.duckdb"
CORPUS_SCHEMA = pa.schema(
    [("id", pa.string()), ("text", pa.string()), ("text_sha256", pa.string())]
)
# precision -> (Arrow value type, values per vector given the embedding dimension)
_PRECISIONS: dict[str, tuple[pa.DataType, Callable[[int], int]]] = {
    "float32": (pa.float32(), lambda dim: dim),
    # Packed sign bits, the last byte zero-padded when dim is not a multiple of 8.
    "binary": (pa.int8(), lambda dim: math.ceil(dim / 8)),
    "ubinary": (pa.uint8(), lambda dim: math.ceil(dim / 8)),
}
_FILE_METADATA_KEY = b"embedding_store"
_TEMP_SUFFIX = ".tmp"
# Temp file names carry host and pid, so a later writer can tell a dead writer's leftovers.
_HOSTNAME = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())

_SCHEMA_VERSION = "1"
_SCHEMA_SQL = """
CREATE SEQUENCE IF NOT EXISTS activation_seq;
CREATE TABLE IF NOT EXISTS store_info (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS model_snapshots (
    model_key VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    revision VARCHAR NOT NULL,
    requested_revision VARCHAR,
    source VARCHAR NOT NULL,
    path VARCHAR NOT NULL,
    dim INTEGER NOT NULL,
    max_seq_length INTEGER,
    pooling JSON,
    prompts JSON,
    default_prompt_name VARCHAR,
    similarity_fn VARCHAR,
    files_hash VARCHAR,
    run_id VARCHAR,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    activation BIGINT NOT NULL,
    PRIMARY KEY (model_key, revision, requested_revision)
);
CREATE TABLE IF NOT EXISTS corpus_versions (
    partition VARCHAR NOT NULL,
    corpus_version VARCHAR NOT NULL,
    rows BIGINT NOT NULL,
    rejected_rows BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    path VARCHAR NOT NULL,
    source_uri VARCHAR,
    run_id VARCHAR,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    activation BIGINT NOT NULL,
    PRIMARY KEY (partition, corpus_version)
);
CREATE TABLE IF NOT EXISTS embedding_versions (
    version_id VARCHAR PRIMARY KEY,
    partition VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    revision VARCHAR NOT NULL,
    params_hash VARCHAR NOT NULL,
    params JSON NOT NULL,
    corpus_version VARCHAR NOT NULL,
    rows BIGINT NOT NULL,
    reused_rows BIGINT NOT NULL,
    dim INTEGER NOT NULL,
    dtype VARCHAR NOT NULL,
    bytes BIGINT NOT NULL,
    path VARCHAR NOT NULL,
    run_id VARCHAR,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    activation BIGINT NOT NULL
);
CREATE OR REPLACE VIEW current_model_snapshots AS
    SELECT * FROM model_snapshots
    QUALIFY row_number() OVER (PARTITION BY model_key ORDER BY activation DESC) = 1;
CREATE OR REPLACE VIEW current_corpus_versions AS
    SELECT * FROM corpus_versions
    QUALIFY row_number() OVER (PARTITION BY partition ORDER BY activation DESC) = 1;
CREATE OR REPLACE VIEW current_embedding_versions AS
    SELECT * FROM embedding_versions
    QUALIFY row_number() OVER (PARTITION BY partition, model, dtype ORDER BY activation DESC) = 1;
"""


def text_sha256(text: str) -> str:
    """Hex SHA-256 of a text's UTF-8 bytes: the key under which its vector is reused."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def corpus_table(ids: Sequence[str], texts: Sequence[str]) -> pa.Table:
    """A normalized corpus table (`id`, `text`, `text_sha256`) from parallel id and text lists."""
    if len(ids) != len(texts):
        raise ValueError(f"corpus_table got {len(ids)} ids but {len(texts)} texts")
    return pa.table(
        [pa.array(ids, pa.string()), pa.array(texts, pa.string()),
         pa.array([text_sha256(t) for t in texts], pa.string())],
        schema=CORPUS_SCHEMA,
    )


def vector_width(precision: str, dim: int) -> int:
    """Values per stored vector: `dim` floats for float32, ``ceil(dim / 8)`` bytes of packed
    bits for binary and ubinary."""
    if precision not in _PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {sorted(_PRECISIONS)}")
    return _PRECISIONS[precision][1](dim)


def _sha256_json(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()


def _path_segment(name: str) -> str:
    """A file-system-safe path segment for a model name, revision or partition key.

    Hub names map like the Hugging Face cache (``org/name`` -> ``org--name``) and content
    revisions ``sha256:<hex>`` -> ``sha256-<hex>``; any other name that had to change
    gets a short hash suffix, so two different names never share a folder.
    """
    if re.fullmatch(r"sha256:[0-9a-f]+", name):
        return name.replace(":", "-")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "--", name.strip("/")).strip(".") or "_"
    lossless = re.fullmatch(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)?", name) and "--" not in name
    if not lossless or len(safe) > 96:
        safe = f"{safe[:80]}-{hashlib.sha256(name.encode('utf-8')).hexdigest()[:8]}"
    return safe


@dataclass(frozen=True)
class EmbeddingParams:
    """Everything besides the model revision that changes the vectors written for a text.

    `prompt` is the prompt text itself (resolved from `prompt_name`), so a changed prompt
    makes a new version even under the same name.
    """

    precision: str = "float32"
    normalize_embeddings: bool = False
    prompt_name: str | None = None
    prompt: str | None = None
    truncate_dim: int | None = None
    max_seq_length: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in _PRECISIONS:
            raise ValueError(
                f"precision {self.precision!r} is not storable; choose one of "
                f"{sorted(_PRECISIONS)} (int8/uint8 calibrate per call, so vectors from "
                "different shards would not be comparable)"
            )

    @property
    def params_hash(self) -> str:
        return _sha256_json(asdict(self))[:16]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class ModelSnapshot:
    """An immutable, pinned model: what `model_snapshot` records and `embeddings` loads.

    `model_key` is the model name as configured (what a pipeline looks its snapshot up
    by); `model` is the canonical name and `revision` the immutable revision.
    """

    model_key: str
    model: str
    revision: str
    source: str
    path: str
    dim: int
    max_seq_length: int | None = None
    requested_revision: str | None = None
    pooling: tuple[str, ...] = ()
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    similarity_fn: str = "cosine"
    files_hash: str | None = None

    def load(self, device: str | None = None, cache_folder: str | None = None,
             local_files_only: bool = False):
        """The `SentenceTransformer` of this snapshot: from its folder when this machine has
        it, else re-resolved at the same pinned revision (raises if that gives another)."""
        from embedding_core.hub import resolve_model
        from embedding_core.model import SentenceTransformer

        path = self.path
        if not os.path.isdir(path):
            resolved = resolve_model(self.model, revision=self.revision if self.source == "hub" else None,
                                     cache_folder=cache_folder, local_files_only=local_files_only)
            if resolved.revision != self.revision:
                raise RuntimeError(f"model snapshot {self.model}@{self.revision} is not available "
                                   f"here (found {resolved.revision}); re-materialize model_snapshot")
            path = resolved.path
        return SentenceTransformer(path, device=device)


@dataclass(frozen=True)
class CorpusVersion:
    """One stored, normalized corpus shard."""

    partition: str
    corpus_version: str
    rows: int
    rejected_rows: int
    bytes: int
    path: str
    source_uri: str | None
    uri: str


@dataclass(frozen=True)
class EmbeddingVersion:
    """One stored embeddings file and its catalog row."""

    version_id: str
    partition: str
    model: str
    revision: str
    params_hash: str
    params: dict
    corpus_version: str
    rows: int
    reused_rows: int
    dim: int
    dtype: str
    bytes: int
    path: str
    uri: str
    run_id: str | None
    created_at: datetime


@dataclass(frozen=True)
class EmbeddingWriteResult:
    """What `write_embeddings` did: the version, and whether it was new or already stored."""

    version: EmbeddingVersion
    created: bool
    encoded_rows: int
    reused_rows: int
    encode_seconds: float


@dataclass(frozen=True)
class SearchHit:
    score: float
    id: str
    partition: str
    text: str | None


class EmbeddingStore:
    """Versioned Parquet + DuckDB embedding store.

    Args:
        root: a local folder, or a pyarrow filesystem URI (``s3://bucket/prefix``,
            ``gs://...``, ``file:///abs/path``).
        catalog_path: the local DuckDB catalog file. Defaults to ``<root>/catalog.duckdb``
            for local roots; required for remote roots (DuckDB needs a local file).
        lock_timeout_s: how long a catalog operation waits for other writers.
    """

    def __init__(
        self, root: str | os.PathLike, catalog_path: str | os.PathLike | None = None,
        lock_timeout_s: float = 600.0,
    ) -> None:
        root = os.fspath(root)
        if "://" in root:
            self.filesystem, root_path = pafs.FileSystem.from_uri(root)
        else:
            self.filesystem, root_path = pafs.LocalFileSystem(), os.path.abspath(root)
        self.is_local = isinstance(self.filesystem, pafs.LocalFileSystem)
        self.root = root_path.rstrip("/") or "/"
        self._uri_scheme = None if self.is_local else root.split("://", 1)[0]
        if catalog_path is None:
            if not self.is_local:
                raise ValueError(
                    f"store root {root!r} is remote: pass catalog_path, a local file for the "
                    "DuckDB catalog"
                )
            catalog_path = os.path.join(self.root, CATALOG_FILE_NAME)
        self.catalog_path = os.path.abspath(os.fspath(catalog_path))
        self._lock_timeout_s = lock_timeout_s
        os.makedirs(os.path.dirname(self.catalog_path), exist_ok=True)
        self.filesystem.create_dir(self.root, recursive=True)
        self._initialize_catalog()

    def __repr__(self) -> str:
        return f"EmbeddingStore(root={self.uri('')!r}, catalog_path={self.catalog_path!r})"

    # ----------------------------------------------------------------- catalog access

    @contextmanager
    def _catalog(self, write: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived catalog connection; writes run in one transaction under the lock.

        All access goes through one file lock, so processes of this store never meet
        DuckDB's own single-writer lock; a foreign holder (an interactive DuckDB shell)
        is waited for up to the lock timeout.
        """
        with FileLock(self.catalog_path + ".lock", timeout=self._lock_timeout_s):
            con = self._open_catalog(read_only=not write)
            try:
                if write:
                    con.execute("BEGIN TRANSACTION")
                    try:
                        yield con
                    except BaseException:
                        con.execute("ROLLBACK")
                        raise
                    con.execute("COMMIT")
                else:
                    yield con
            finally:
                con.close()

    def _open_catalog(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self._lock_timeout_s
        while True:
            try:
                return duckdb.connect(self.catalog_path, read_only=read_only)
            except duckdb.IOException as error:
                if "lock" not in str(error).lower() or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"cannot open the embedding catalog {self.catalog_path}: {error}"
                    ) from error
                time.sleep(0.1)

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only DuckDB connection to the catalog, for ad-hoc SQL.

        The views `embeddings` (current float32 vectors of every partition and model,
        `embedding` typed `FLOAT[dim]`), `documents` (current corpus texts) and the
        tables `model_snapshots`, `corpus_versions`, `embedding_versions` are there.
        Keep it short: writers wait while it is open.
        """
        with self._catalog() as con:
            if not self.is_local:
                self._register_remote_views(con)
            yield con

    def _initialize_catalog(self) -> None:
        """Create the catalog, or re-point its views when the store moved; an up-to-date
        catalog is only read, so readers never take a write transaction."""
        if os.path.exists(self.catalog_path):
            with self._catalog() as con:
                if self._recorded_info(con) == self._expected_info():
                    return
        with self._catalog(write=True) as con:
            con.execute(_SCHEMA_SQL)
            if self._recorded_info(con) != self._expected_info():
                # A new or moved store: the file views hold absolute locations.
                con.executemany("INSERT OR REPLACE INTO store_info VALUES (?, ?)",
                                list(self._expected_info().items()))
                self._rebuild_file_views(con)

    def _expected_info(self) -> dict[str, str]:
        return {"root": self.uri(""), "schema_version": _SCHEMA_VERSION}

    @staticmethod
    def _recorded_info(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
        try:
            return dict(con.execute("SELECT key, value FROM store_info").fetchall())
        except duckdb.CatalogException:
            return {}

    # ------------------------------------------------------------------ file helpers

    def uri(self, relative_path: str) -> str:
        """Where a store-relative path lives: an absolute local path or a URI."""
        full = f"{self.root}/{relative_path}" if relative_path else self.root
        return full if self.is_local else f"{self._uri_scheme}://{full}"

    def _full_path(self, relative_path: str) -> str:
        return f"{self.root}/{relative_path}"

    def _exists(self, relative_path: str) -> bool:
        info = self.filesystem.get_file_info(self._full_path(relative_path))
        return info.type == pafs.FileType.File

    def _write_parquet_atomically(self, table: pa.Table, relative_path: str) -> int:
        """Write `table` so that it appears under `relative_path` only when complete.

        Returns the file size. If the final file already exists (an identical request
        finished first) it is kept and the new copy discarded: nothing is overwritten.
        """
        final = self._full_path(relative_path)
        directory, name = final.rsplit("/", 1)
        self.filesystem.create_dir(directory, recursive=True)
        if self.is_local:
            _remove_orphaned_temp_files(directory)
        temp = f"{directory}/.{name}.{_HOSTNAME}.{os.getpid()}.{uuid.uuid4().hex[:8]}{_TEMP_SUFFIX}"
        try:
            if self.is_local:
                with open(temp, "wb") as sink:
                    pq.write_table(table, sink, compression="zstd", row_group_size=65536)
                    sink.flush()
                    os.fsync(sink.fileno())
            else:
                with self.filesystem.open_output_stream(temp) as sink:
                    pq.write_table(table, sink, compression="zstd", row_group_size=65536)
            with FileLock(self.catalog_path + ".lock", timeout=self._lock_timeout_s):
                if self._exists(relative_path):
                    self.filesystem.delete_file(temp)
                elif self.is_local:
                    os.replace(temp, final)
                    _fsync_directory(directory)
                else:
                    self.filesystem.move(temp, final)
        except BaseException:
            if self.filesystem.get_file_info(temp).type == pafs.FileType.File:
                self.filesystem.delete_file(temp)
            raise
        return self.filesystem.get_file_info(final).size

    def _read_parquet(self, relative_path: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self._full_path(relative_path), columns=columns,
                             filesystem=self.filesystem)

    # --------------------------------------------------------------------- corpus

    def write_corpus(
        self, partition: str, table: pa.Table, source_uri: str | None = None,
        rejected_rows: int = 0, run_id: str | None = None,
    ) -> CorpusVersion:
        """Store a normalized corpus shard (`id`, `text`, `text_sha256`) as a new version.

        The version is the SHA-256 of the ids and texts, so storing the same shard twice
        is a no-op that makes that version current again.
        """
        table = _validated_corpus(partition, table)
        corpus_version = _sha256_json(
            [table.column("id").to_pylist(), table.column("text_sha256").to_pylist()]
        )
        relative_path = f"corpus/{_path_segment(partition)}/{corpus_version[:16]}.parquet"
        existing = self.corpus_version(partition, corpus_version)
        if existing is None or not self._exists(existing.path):
            size = self._write_parquet_atomically(table, relative_path)
        else:
            size = existing.bytes
        with self._catalog(write=True) as con:
            row = [partition, corpus_version, table.num_rows, rejected_rows, size, relative_path,
                   source_uri, run_id]
            con.execute(
                """INSERT INTO corpus_versions
                   (partition, corpus_version, rows, rejected_rows, bytes, path, source_uri,
                    run_id, activation)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, nextval('activation_seq'))
                   ON CONFLICT (partition, corpus_version)
                   DO UPDATE SET activation = excluded.activation""",
                row,
            )
            self._rebuild_file_views(con)
        return self.corpus_version(partition, corpus_version)

    def corpus_version(self, partition: str, corpus_version: str | None = None) -> CorpusVersion | None:
        """A stored corpus version of `partition`; the current one when no version is given."""
        with self._catalog() as con:
            if corpus_version is None:
                row = con.execute(
                    f"SELECT {_CORPUS_COLUMNS} FROM current_corpus_versions WHERE partition = ?",
                    [partition],
                ).fetchone()
            else:
                row = con.execute(
                    f"SELECT {_CORPUS_COLUMNS} FROM corpus_versions "
                    "WHERE partition = ? AND corpus_version = ?",
                    [partition, corpus_version],
                ).fetchone()
        return None if row is None else CorpusVersion(*row, uri=self.uri(row[5]))

    def read_corpus(self, corpus: CorpusVersion) -> pa.Table:
        """The stored rows of a corpus version."""
        return self._read_parquet(corpus.path)

    def corpus_partitions(self) -> list[str]:
        """Partitions that have a stored corpus version, sorted."""
        with self._catalog() as con:
            rows = con.execute(
                "SELECT partition FROM current_corpus_versions ORDER BY partition"
            ).fetchall()
        return [partition for (partition,) in rows]

    # --------------------------------------------------------------------- models

    def record_model_snapshot(self, snapshot: ModelSnapshot, run_id: str | None = None) -> ModelSnapshot:
        """Record a pinned model and make it the current snapshot for its `model_key`."""
        with self._catalog(write=True) as con:
            con.execute(
                """INSERT INTO model_snapshots
                   (model_key, model, revision, requested_revision, source, path, dim,
                    max_seq_length, pooling, prompts, default_prompt_name, similarity_fn,
                    files_hash, run_id, activation)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, nextval('activation_seq'))
                   ON CONFLICT (model_key, revision, requested_revision)
                   DO UPDATE SET activation = excluded.activation, path = excluded.path,
                                 source = excluded.source""",
                [snapshot.model_key, snapshot.model, snapshot.revision,
                 snapshot.requested_revision or "", snapshot.source, snapshot.path, snapshot.dim,
                 snapshot.max_seq_length, json.dumps(list(snapshot.pooling)),
                 json.dumps(snapshot.prompts, sort_keys=True), snapshot.default_prompt_name,
                 snapshot.similarity_fn, snapshot.files_hash, run_id],
            )
        return snapshot

    def current_model_snapshot(self, model_key: str) -> ModelSnapshot | None:
        """The most recently recorded snapshot for a configured model name, if any."""
        snapshots = self._current_model_snapshots("WHERE model_key = ?", [model_key])
        return snapshots[0] if snapshots else None

    def current_model_snapshots(self) -> list[ModelSnapshot]:
        """The current snapshot of every configured model name, by name."""
        return self._current_model_snapshots("ORDER BY model_key", [])

    def _current_model_snapshots(self, clause: str, args: list) -> list[ModelSnapshot]:
        with self._catalog() as con:
            rows = con.execute(
                f"""SELECT model_key, model, revision, source, path, dim, max_seq_length,
                          requested_revision, pooling, prompts, default_prompt_name,
                          similarity_fn, files_hash
                   FROM current_model_snapshots {clause}""",
                args,
            ).fetchall()
        return [self._snapshot_from_row(row) for row in rows]

    @staticmethod
    def _snapshot_from_row(row: tuple) -> ModelSnapshot:
        (model_key, model, revision, source, path, dim, max_seq_length, requested_revision,
         pooling, prompts, default_prompt_name, similarity_fn, files_hash) = row
        return ModelSnapshot(
            model_key=model_key, model=model, revision=revision, source=source, path=path,
            dim=dim, max_seq_length=max_seq_length, requested_revision=requested_revision or None,
            pooling=tuple(json.loads(pooling)), prompts=json.loads(prompts),
            default_prompt_name=default_prompt_name, similarity_fn=similarity_fn,
            files_hash=files_hash,
        )

    # ----------------------------------------------------------------- embeddings

    def embedding_version(
        self, partition: str, snapshot: ModelSnapshot, params: EmbeddingParams,
        corpus_version: str,
    ) -> EmbeddingVersion | None:
        """The stored version for exactly these inputs, if there is one."""
        return self._find_embedding_version(
            "partition = ? AND model = ? AND revision = ? AND params_hash = ? "
            "AND corpus_version = ?",
            [partition, snapshot.model, snapshot.revision, params.params_hash, corpus_version],
        )

    def current_embedding_version(
        self, partition: str, model: str, dtype: str = "float32"
    ) -> EmbeddingVersion | None:
        """The version the `embeddings` view shows for a partition and model."""
        return self._find_embedding_version(
            "version_id = (SELECT version_id FROM current_embedding_versions "
            "WHERE partition = ? AND model = ? AND dtype = ?)",
            [partition, model, dtype],
        )

    def embedding_versions(self, partition: str | None = None) -> list[EmbeddingVersion]:
        """All stored versions (of one partition, or all), oldest first."""
        where, args = ("partition = ?", [partition]) if partition is not None else ("true", [])
        with self._catalog() as con:
            rows = con.execute(
                f"SELECT {_EMBEDDING_COLUMNS} FROM embedding_versions WHERE {where} "
                "ORDER BY created_at, activation",
                args,
            ).fetchall()
        return [self._embedding_version_from_row(row) for row in rows]

    def _find_embedding_version(self, where: str, args: list) -> EmbeddingVersion | None:
        with self._catalog() as con:
            row = con.execute(
                f"SELECT {_EMBEDDING_COLUMNS} FROM embedding_versions WHERE {where}", args
            ).fetchone()
        return None if row is None else self._embedding_version_from_row(row)

    def _embedding_version_from_row(self, row: tuple) -> EmbeddingVersion:
        values = dict(zip(_EMBEDDING_COLUMNS.split(", "), row, strict=True))
        values["params"] = json.loads(values["params"])
        return EmbeddingVersion(**values, uri=self.uri(values["path"]))

    def read_embeddings(self, version: EmbeddingVersion) -> tuple[pa.Table, np.ndarray]:
        """The `id`/`text_sha256` columns of a version and its vectors as a 2-D array."""
        table = self._read_parquet(version.path)
        return table.select(["id", "text_sha256"]), _vectors_to_numpy(table.column("embedding"))

    def stale_partitions(self, snapshot: ModelSnapshot, params: EmbeddingParams) -> list[str]:
        """Partitions whose current embeddings are missing or not from these inputs.

        Compares, for every current corpus version, the version the `embeddings` view
        shows with the one `snapshot` and `params` would produce.
        """
        dtype = _dtype_name(params.precision)
        with self._catalog() as con:
            rows = con.execute(
                """SELECT c.partition FROM current_corpus_versions c
                   LEFT JOIN current_embedding_versions e
                     ON e.partition = c.partition AND e.model = ? AND e.dtype = ?
                   WHERE e.version_id IS NULL OR e.revision <> ? OR e.params_hash <> ?
                      OR e.corpus_version <> c.corpus_version
                   ORDER BY c.partition""",
                [snapshot.model, dtype, snapshot.revision, params.params_hash],
            ).fetchall()
        return [partition for (partition,) in rows]

    def write_embeddings(
        self, partition: str, corpus: CorpusVersion, snapshot: ModelSnapshot,
        params: EmbeddingParams, encode: Callable[[list[str]], np.ndarray],
        run_id: str | None = None,
    ) -> EmbeddingWriteResult:
        """Embed a stored corpus version and store the vectors as a new immutable version.

        `encode` maps a list of texts to a 2-D array (already in `params.precision`), e.g.
        ``functools.partial(model.encode, normalize_embeddings=True)``. Texts whose SHA-256
        already has a vector for the same model revision and parameters (in any
        partition) are reused; only the rest are encoded, each distinct text once.
        Storing the same inputs twice encodes nothing and makes that version current.
        """
        if corpus.partition != partition:
            raise ValueError(
                f"corpus version {corpus.corpus_version[:16]} belongs to partition "
                f"{corpus.partition!r}, not {partition!r}"
            )
        existing = self.embedding_version(partition, snapshot, params, corpus.corpus_version)
        if existing is not None and self._exists(existing.path):
            self._activate_embedding_version(existing.version_id)
            return EmbeddingWriteResult(existing, created=False, encoded_rows=0,
                                        reused_rows=existing.rows, encode_seconds=0.0)

        value_type = _PRECISIONS[params.precision][0]
        dim = params.truncate_dim or snapshot.dim
        width = vector_width(params.precision, dim)
        rows = self.read_corpus(corpus)
        row_shas = rows.column("text_sha256")
        unique_shas, first_rows = _unique_with_first_index(row_shas)
        known = self._stored_vectors(snapshot, params, unique_shas)
        missing = [i for i, sha in enumerate(unique_shas) if sha not in known]

        vectors = np.empty((len(unique_shas), width), dtype=value_type.to_pandas_dtype())
        for i, sha in enumerate(unique_shas):
            if sha in known:
                vectors[i] = known[sha]
        started = time.perf_counter()
        if missing:
            texts = rows.column("text").take(pa.array(first_rows[missing])).to_pylist()
            encoded = np.asarray(encode(texts))
            _check_encoded(encoded, len(texts), width, vectors.dtype, partition)
            vectors[missing] = encoded
        encode_seconds = time.perf_counter() - started

        row_index = pc.index_in(row_shas, value_set=pa.array(unique_shas)).to_numpy()
        values = pa.array(vectors[row_index].reshape(-1), type=value_type)
        table = pa.table(
            {"id": rows.column("id"), "text_sha256": row_shas,
             "embedding": pa.FixedSizeListArray.from_arrays(values, width)}
        )
        version_id = _sha256_json(
            [partition, snapshot.model, snapshot.revision, params.params_hash,
             corpus.corpus_version]
        )[:24]
        file_metadata = {
            "partition": partition, "model": snapshot.model, "revision": snapshot.revision,
            "params": asdict(params), "corpus_version": corpus.corpus_version, "dim": dim,
            "version_id": version_id,
        }
        table = table.replace_schema_metadata({_FILE_METADATA_KEY: json.dumps(file_metadata)})
        relative_path = "/".join(
            ["embeddings", _path_segment(snapshot.model), _path_segment(snapshot.revision),
             params.params_hash, _path_segment(partition), f"{corpus.corpus_version[:16]}.parquet"]
        )
        size = self._write_parquet_atomically(table, relative_path)
        reused_rows = int(rows.num_rows - np.isin(row_index, missing).sum())
        with self._catalog(write=True) as con:
            con.execute(
                """INSERT INTO embedding_versions
                   (version_id, partition, model, revision, params_hash, params, corpus_version,
                    rows, reused_rows, dim, dtype, bytes, path, run_id, activation)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, nextval('activation_seq'))
                   ON CONFLICT (version_id) DO UPDATE SET activation = excluded.activation""",
                [version_id, partition, snapshot.model, snapshot.revision, params.params_hash,
                 params.to_json(), corpus.corpus_version, table.num_rows, reused_rows, dim,
                 _dtype_name(params.precision), size, relative_path, run_id],
            )
            self._rebuild_file_views(con)
        version = self._find_embedding_version("version_id = ?", [version_id])
        return EmbeddingWriteResult(version, created=True, encoded_rows=len(missing),
                                    reused_rows=reused_rows, encode_seconds=encode_seconds)

    def _activate_embedding_version(self, version_id: str) -> None:
        with self._catalog(write=True) as con:
            con.execute(
                "UPDATE embedding_versions SET activation = nextval('activation_seq') "
                "WHERE version_id = ?",
                [version_id],
            )
            self._rebuild_file_views(con)

    def _stored_vectors(
        self, snapshot: ModelSnapshot, params: EmbeddingParams, shas: list[str]
    ) -> dict[str, np.ndarray]:
        """Vectors already stored for these text hashes under the same model and params."""
        with self._catalog() as con:
            paths = [path for (path,) in con.execute(
                "SELECT path FROM embedding_versions WHERE model = ? AND revision = ? "
                "AND params_hash = ? ORDER BY activation DESC",
                [snapshot.model, snapshot.revision, params.params_hash],
            ).fetchall()]
        if not paths or not shas:
            return {}
        dataset = pads.dataset([self._full_path(p) for p in paths], format="parquet",
                               filesystem=self.filesystem)
        found = dataset.to_table(
            columns=["text_sha256", "embedding"],
            filter=pads.field("text_sha256").isin(pa.array(shas, pa.string())),
        )
        vectors = _vectors_to_numpy(found.column("embedding"))
        return dict(zip(found.column("text_sha256").to_pylist(), vectors, strict=True))

    # ------------------------------------------------------------------- views

    def _rebuild_file_views(self, con: duckdb.DuckDBPyConnection) -> None:
        """Point the persistent `embeddings` and `documents` views at the current files.

        Runs inside the transaction that changed the catalog, so readers see the old views
        or the new ones, never a file that is not registered. Only for local roots, where
        DuckDB reads the files itself: one `read_parquet` over all current files (per
        dimension), joined to the catalog by file name for the per-version columns. Remote
        roots get the views per connection in `connect()`, read through pyarrow.
        """
        if not self.is_local:
            return
        root = _sql_str(self.uri("") + "/")
        versions = con.execute(
            "SELECT dim, list(path ORDER BY path) FROM current_embedding_versions "
            "WHERE dtype = 'float32' GROUP BY dim ORDER BY dim"
        ).fetchall()
        selects = [
            "SELECT f.id, f.text_sha256, v.partition, v.model, v.revision, v.params_hash, "
            "v.corpus_version, v.version_id, "
            f"f.embedding::{f'FLOAT[{dim}]' if len(versions) == 1 else 'FLOAT[]'} AS embedding "
            f"FROM read_parquet({_sql_list(self.uri(path) for path in paths)}, filename = true) f "
            f"JOIN current_embedding_versions v ON f.filename = {root} || v.path"
            for dim, paths in versions
        ]
        corpus_paths = [path for (path,) in con.execute(
            "SELECT path FROM current_corpus_versions ORDER BY path").fetchall()]
        documents = [
            "SELECT f.id, f.text, f.text_sha256, c.partition, c.corpus_version "
            f"FROM read_parquet({_sql_list(self.uri(path) for path in corpus_paths)}, filename = true) f "
            f"JOIN current_corpus_versions c ON f.filename = {root} || c.path"
        ] if corpus_paths else []
        for statement in _view_statements("", selects, documents):
            con.execute(statement)

    def _register_remote_views(self, con: duckdb.DuckDBPyConnection) -> None:
        """Temporary `embeddings` and `documents` views for this connection, one pyarrow
        dataset per current file (DuckDB cannot read arbitrary pyarrow filesystems)."""
        def dataset(name: str, path: str) -> str:
            con.register(name, pads.dataset(self._full_path(path), format="parquet",
                                            filesystem=self.filesystem))
            return name

        versions = con.execute(
            "SELECT version_id, partition, model, revision, params_hash, corpus_version, dim, "
            "path FROM current_embedding_versions WHERE dtype = 'float32' ORDER BY path"
        ).fetchall()
        single_dim = len({version[6] for version in versions}) == 1
        selects = [
            f"SELECT id, text_sha256, {_sql_str(partition)} AS partition, {_sql_str(model)} AS model, "
            f"{_sql_str(revision)} AS revision, {_sql_str(params_hash)} AS params_hash, "
            f"{_sql_str(corpus_version)} AS corpus_version, {_sql_str(version_id)} AS version_id, "
            f"embedding::{f'FLOAT[{dim}]' if single_dim else 'FLOAT[]'} AS embedding "
            f"FROM {dataset(f'_embeddings_{index}', path)}"
            for index, (version_id, partition, model, revision, params_hash, corpus_version, dim, path)
            in enumerate(versions)
        ]
        corpora = con.execute(
            "SELECT partition, corpus_version, path FROM current_corpus_versions ORDER BY path"
        ).fetchall()
        documents = [
            f"SELECT id, text, text_sha256, {_sql_str(partition)} AS partition, "
            f"{_sql_str(corpus_version)} AS corpus_version FROM {dataset(f'_documents_{index}', path)}"
            for index, (partition, corpus_version, path) in enumerate(corpora)
        ]
        for statement in _view_statements("TEMP ", selects, documents):
            con.execute(statement)

    # ------------------------------------------------------------------ search

    def search(
        self, query_embedding: np.ndarray, model: str, top_k: int = 5,
        similarity_fn: str = "cosine",
    ) -> list[SearchHit]:
        """The `top_k` current rows of `model` most similar to `query_embedding`.

        `similarity_fn` is ``"cosine"`` or ``"dot"`` (the model's similarity function).
        """
        functions = {"cosine": "array_cosine_similarity", "dot": "array_inner_product"}
        if similarity_fn not in functions:
            raise ValueError(f"similarity_fn must be one of {sorted(functions)}, not {similarity_fn!r}")
        query = np.asarray(query_embedding, dtype=np.float32).reshape(-1)
        dim = query.shape[0]
        with self.connect() as con:
            rows = con.execute(
                f"""SELECT {functions[similarity_fn]}(e.embedding::FLOAT[{dim}], ?::FLOAT[{dim}])
                           AS score, e.id, e.partition, d.text
                    FROM embeddings e LEFT JOIN documents d
                      ON d.partition = e.partition AND d.id = e.id
                     AND d.text_sha256 = e.text_sha256
                    WHERE e.model = ? AND len(e.embedding) = {dim}
                    ORDER BY score DESC, e.id LIMIT ?""",
                [query.tolist(), model, top_k],
            ).fetchall()
        return [SearchHit(float(score), id_, partition, text) for score, id_, partition, text in rows]


_CORPUS_COLUMNS = "partition, corpus_version, rows, rejected_rows, bytes, path, source_uri"
_EMBEDDING_COLUMNS = (
    "version_id, partition, model, revision, params_hash, params, corpus_version, rows, "
    "reused_rows, dim, dtype, bytes, path, run_id, created_at"
)


def _dtype_name(precision: str) -> str:
    """The stored value type of a precision: float32, int8 or uint8."""
    return np.dtype(_PRECISIONS[precision][0].to_pandas_dtype()).name


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(_sql_str(value) for value in values) + "]"


def _view_statements(kind: str, embedding_selects: list[str], document_selects: list[str]) -> list[str]:
    """CREATE VIEW statements for `embeddings` and `documents` (typed and empty when there
    is nothing stored yet)."""
    no_embeddings = (
        "SELECT NULL::VARCHAR AS id, NULL::VARCHAR AS text_sha256, NULL::VARCHAR AS partition, "
        "NULL::VARCHAR AS model, NULL::VARCHAR AS revision, NULL::VARCHAR AS params_hash, "
        "NULL::VARCHAR AS corpus_version, NULL::VARCHAR AS version_id, "
        "NULL::FLOAT[] AS embedding WHERE false"
    )
    no_documents = (
        "SELECT NULL::VARCHAR AS id, NULL::VARCHAR AS text, NULL::VARCHAR AS text_sha256, "
        "NULL::VARCHAR AS partition, NULL::VARCHAR AS corpus_version WHERE false"
    )
    return [
        f"CREATE OR REPLACE {kind}VIEW embeddings AS "
        + (" UNION ALL ".join(embedding_selects) or no_embeddings),
        f"CREATE OR REPLACE {kind}VIEW documents AS "
        + (" UNION ALL ".join(document_selects) or no_documents),
    ]


def _validated_corpus(partition: str, table: pa.Table) -> pa.Table:
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
        _, first_rows = _unique_with_first_index(table.column("id"))
        duplicate_row = sorted(set(range(table.num_rows)) - set(first_rows.tolist()))[0]
        raise ValueError(f"corpus shard {partition!r} repeats id "
                         f"{table.column('id')[duplicate_row].as_py()!r} at row {duplicate_row}")
    return table


def _unique_with_first_index(column: pa.ChunkedArray) -> tuple[list[str], np.ndarray]:
    """Distinct values in order of first appearance, and the row of each first appearance."""
    values = column.to_pylist()
    first: dict[str, int] = {}
    for row, value in enumerate(values):
        first.setdefault(value, row)
    return list(first), np.fromiter(first.values(), dtype=np.int64, count=len(first))


def _vectors_to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    array = column.combine_chunks()
    width = array.type.list_size
    return array.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)


def _check_encoded(encoded: np.ndarray, count: int, width: int, dtype: np.dtype, partition: str) -> None:
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


def _fsync_directory(directory: str) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove_orphaned_temp_files(directory: str) -> None:
    """Delete temp files left by writers of this host that died mid-write."""
    for name in os.listdir(directory):
        if not (name.startswith(".") and name.endswith(_TEMP_SUFFIX)):
            continue
        parts = name[: -len(_TEMP_SUFFIX)].rsplit(".", 3)
        if len(parts) != 4 or parts[1] != _HOSTNAME or not parts[2].isdigit():
            continue
        if not _process_alive(int(parts[2])):
            try:
                os.remove(os.path.join(directory, name))
            except FileNotFoundError:
                pass


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
