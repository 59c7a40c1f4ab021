"""`EmbeddingStore`: versioned corpus shards and embeddings in a DuckLake lake.

Example::

    store = EmbeddingStore("store")                     # or ("s3://bucket/lake", "postgres:...")
    corpus = store.write_corpus("docs", table)          # id, text, text_sha256
    store.record_model_snapshot(snapshot)
    result = store.write_embeddings("docs", corpus, snapshot, EmbeddingParams(), model.encode)
    with store.connect() as con:
        con.sql("SELECT id, embedding FROM embeddings").fetchall()
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta

import duckdb
import numpy as np
import pyarrow as pa

import embedding_core.store.damage as damage
import embedding_core.store.ingest as ingest
import embedding_core.store.maintenance as maintenance
import embedding_core.store.queries as queries
import embedding_core.store.vector_index as vector_index
import embedding_core.store.writer as writer
from embedding_core.store.catalog import CATALOG_FILE_NAME, Catalog
from embedding_core.store.damage import VerifyReport
from embedding_core.store.files import DataPath
from embedding_core.store.index_files import IndexFiles
from embedding_core.store.records import (
    CorpusVersion,
    EmbeddingParams,
    EmbeddingVersion,
    EmbeddingWriteResult,
    LakeSnapshot,
    LandingRecord,
    MaintenanceReport,
    ModelSnapshot,
    sha256_json,
    vector_width,
)
from embedding_core.store.rows import CHUNK_COLUMNS, Chunker, vectors_to_numpy
from embedding_core.store.serving_methods import ServingMethods
from embedding_core.store.views import VECTOR_TABLES

__all__ = ["EmbeddingStore"]

logger = logging.getLogger(__name__)


class EmbeddingStore(ServingMethods):
    """Versioned corpus shards and embeddings: Parquet files under `root`, a DuckLake catalog.

    Args:
        root: a local folder or ``s3://bucket/prefix`` (S3 settings from the standard
            ``AWS_*`` variables, see `embedding_core.store.files`).
        catalog: a DuckDB file (default ``<root>/catalog.ducklake`` for a local root) or
            ``postgres:<libpq key=value string>`` for many writers on many machines.
        busy_timeout_s: how long to wait for another process holding a DuckDB catalog file.
    """

    def __init__(self, root: str | os.PathLike, catalog: str | os.PathLike | None = None,
                 *, busy_timeout_s: float = 600.0) -> None:
        data = DataPath.parse(root)
        if catalog is None:
            if data.is_s3:
                raise ValueError(f"store root {data.root!r} is on S3: set EMBEDDING_CATALOG (or pass "
                                 "catalog) to a Postgres catalog, postgres:<libpq string>, or a "
                                 "local DuckDB file")
            catalog = os.path.join(data.root, CATALOG_FILE_NAME)
        catalog = os.fspath(catalog)
        if not catalog.startswith("postgres:"):
            catalog = os.path.abspath(catalog)
        self.root = data.root
        self.catalog = catalog
        self._data = data
        self._catalog = Catalog(catalog, data, busy_timeout_s=busy_timeout_s)
        self._store_id: str | None = None
        self._index_files = IndexFiles(data.root)
        data.prepare()
        self._catalog.ensure_schema()

    @classmethod
    def from_env(cls) -> EmbeddingStore:
        """The store named by ``EMBEDDING_STORE_ROOT`` and ``EMBEDDING_CATALOG``."""
        root = os.environ.get("EMBEDDING_STORE_ROOT")
        if not root:
            raise ValueError("set EMBEDDING_STORE_ROOT to the store folder or s3://bucket/prefix")
        return cls(root, os.environ.get("EMBEDDING_CATALOG") or None)

    def __repr__(self) -> str:
        return f"EmbeddingStore(root={self.root!r}, catalog={self.catalog_label!r})"

    @property
    def catalog_label(self) -> str:
        """The catalog with any password masked: for logs and metadata."""
        return self._catalog.label

    @property
    def store_id(self) -> str:
        """An identity of this lake: its catalog and the time it was created. A store deleted
        and created again at the same place gets a new one (the landing sensor starts over)."""
        if self._store_id is None:
            with self.connect() as con:
                created = con.execute("SELECT min(snapshot_time) FROM ducklake_snapshots(current_database())"
                                      ).fetchone()[0]
            self._store_id = sha256_json([self.catalog_label, str(created)])[:16]
        return self._store_id

    def uri(self, relative_path: str = "") -> str:
        """Where a root-relative path lives: an absolute local path or an s3:// URI."""
        return self._data.uri(relative_path)

    def duckdb_shell_sql(self) -> str:
        """SQL that opens this store in a plain ``duckdb`` shell, `embeddings` and
        `documents` included. It carries the catalog's and S3's credentials: don't log it."""
        return self._catalog.shell_sql()

    # ------------------------------------------------------------------ reading

    @contextmanager
    def connect(self, snapshot: int | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only DuckDB connection to the lake, for SQL.

        `embeddings` (current float32 vectors, a row per chunk, `embedding` typed ``FLOAT[dim]``),
        `document_embeddings`, `documents` (current corpus texts) and the tables
        `model_snapshots`, `corpus_versions`, `embedding_versions` resolve unqualified
        (the lake is attached under a name of its own: ``SELECT current_database()``).
        `snapshot` opens the whole store as of that lake snapshot (see `lake_snapshots`).
        With a DuckDB catalog file, writers wait while it is open: keep it short.
        """
        with self._catalog.connection(read_only=True, snapshot=snapshot) as con:
            yield con

    def lake_snapshots(self) -> list[LakeSnapshot]:
        """Every commit of the lake, oldest first: id, time, author and message."""
        with self.connect() as con:
            rows = con.execute("SELECT snapshot_id, snapshot_time, author, commit_message "
                               "FROM ducklake_snapshots(current_database()) ORDER BY snapshot_id").fetchall()
        return [LakeSnapshot(*row) for row in rows]

    def corpus_version(self, partition: str, corpus_version: str | None = None) -> CorpusVersion | None:
        """A stored corpus version of `partition`; the current one when no version is given."""
        with self.connect() as con:
            return queries.corpus_version(con, partition, corpus_version)

    def read_corpus(self, corpus: CorpusVersion) -> pa.Table:
        """The stored rows (`id`, `text`, `text_sha256`) of a corpus version, in order;
        `DamagedDataError` when they lie in a damaged data file."""
        with self.connect() as con:
            return writer.corpus_rows(con, corpus)

    def corpus_partitions(self) -> list[str]:
        """Partitions that have a stored corpus version, sorted."""
        with self.connect() as con:
            rows = con.execute("SELECT partition FROM current_corpus_versions ORDER BY partition").fetchall()
        return [partition for (partition,) in rows]

    def current_model_snapshot(self, model_key: str) -> ModelSnapshot | None:
        """The most recently recorded snapshot for a configured model name, if any."""
        snapshots = self._model_snapshots("WHERE model_key = ?", [model_key])
        return snapshots[0] if snapshots else None

    def current_model_snapshots(self) -> list[ModelSnapshot]:
        """The current snapshot of every configured model name, by name."""
        return self._model_snapshots("ORDER BY model_key", [])

    def _model_snapshots(self, clause: str, args: list) -> list[ModelSnapshot]:
        with self.connect() as con:
            return queries.model_snapshots(con, clause, args)

    def embedding_version(self, partition: str, snapshot: ModelSnapshot, params: EmbeddingParams,
                          corpus_version: str) -> EmbeddingVersion | None:
        """The stored version for exactly these inputs, if there is one."""
        with self.connect() as con:
            return queries.stored_embedding_version(con, writer.version_id(partition, snapshot, params,
                                                                           corpus_version))

    def embedding_versions_of(self, corpora: Sequence[CorpusVersion], snapshot: ModelSnapshot,
                              params: EmbeddingParams) -> dict[str, EmbeddingVersion]:
        """partition -> the stored version of each corpus version embedded with these inputs,
        for those that have one (one query)."""
        vids = {writer.version_id(c.partition, snapshot, params, c.corpus_version): c.partition for c in corpora}
        with self.connect() as con:
            found = queries.stored_embedding_versions(con, list(vids))
        return {vids[vid]: version for vid, version in found.items()}

    def sample_rows(self, picks: Sequence[tuple[EmbeddingVersion, Sequence[int]]]
                    ) -> list[list[tuple[str, str, np.ndarray]]]:
        """For each (version, row numbers): (id, text, vector) of those rows, reading only their
        writes, in one connection: a spot check's sample, not the whole shard."""
        with self.connect() as con:
            return [queries.sample_rows(con, version, rows) for version, rows in picks]

    def current_embedding_version(self, partition: str, model: str,
                                  dtype: str = "float32") -> EmbeddingVersion | None:
        """The version the `embeddings` view shows for a partition and model: that of the
        model's serving version set (`serving_version`)."""
        versions = self._embedding_versions(
            "current_embedding_versions WHERE partition = ? AND model = ? AND dtype = ?",
            [partition, model, dtype])
        return versions[0] if versions else None

    def embedding_versions(self, partition: str | None = None) -> list[EmbeddingVersion]:
        """All stored versions (of one partition, or all), oldest first."""
        where, args = ("WHERE partition = ?", [partition]) if partition is not None else ("", [])
        return self._embedding_versions(f"stored_embedding_versions {where} ORDER BY snapshot_id", args)

    def _embedding_versions(self, source: str, args: list) -> list[EmbeddingVersion]:
        with self.connect() as con:
            return queries.embedding_versions(con, source, args)

    def read_embeddings(self, version: EmbeddingVersion) -> tuple[pa.Table, np.ndarray]:
        """The `id`/`text_sha256` columns of a version (current or not; chunked, also `chunk`,
        `char_start`, `char_end`: a row per chunk) and its vectors as a 2-D array, in corpus order."""
        with self.connect() as con:
            try:
                table = queries.vector_rows_by_write(con, VECTOR_TABLES[version.dtype][0], [version.write_id])
            except duckdb.Error as error:
                damage.raise_if_damaged(con, error, f"embedding version {version.version_id} of partition "
                                        f"{version.partition!r}", [version.write_id])
                raise
        width = vector_width(version.params.get("precision", "float32"), version.dim)
        columns = ["id", "text_sha256", *(CHUNK_COLUMNS if version.chunked else ())]
        return table.select(columns), vectors_to_numpy(table.column("embedding"), width, version.dtype)

    def stale_partitions(self, snapshot: ModelSnapshot, params: EmbeddingParams) -> list[str]:
        """Partitions that the version set of these inputs (serving or a candidate) lacks
        vectors of their current corpus version for, or holds them (like their current
        corpus) in a missing data file or one of another size than recorded (`verify` looks
        deeper): what embedding with these inputs still has to write."""
        where = "model = ? AND revision = ? AND params_hash = ?"
        inputs = [snapshot.model, snapshot.revision, params.params_hash]
        with self.connect() as con:
            current = con.execute(
                f"""SELECT partition, write_id FROM current_corpus_versions UNION ALL
                    SELECT partition, write_id FROM latest_embedding_versions WHERE {where}""", inputs).fetchall()
            damaged = damage.damaged_write_ids(con, {write_id for _, write_id in current}, footers=False)
            rows = con.execute(
                f"""SELECT c.partition FROM current_corpus_versions c
                    LEFT JOIN (SELECT * FROM latest_embedding_versions WHERE {where}) e ON e.partition = c.partition
                    WHERE e.version_id IS NULL OR e.corpus_version <> c.corpus_version
                    ORDER BY c.partition""", inputs).fetchall()
        return sorted({partition for (partition,) in rows}
                      | {partition for partition, write_id in current if write_id in damaged})

    def damaged_files(self, write_ids: Sequence[str]) -> list[damage.DamagedFile]:
        """The data files holding rows of `write_ids` that are missing, of another size than
        recorded, or recorded damaged by `verify --read-rows`: a step's cheap check of its
        inputs (no file is opened)."""
        if not write_ids:
            return []
        with self.connect() as con:
            return damage.damaged_files(con, write_ids, footers=False)[1]

    def verify(self, read_rows: bool = False) -> VerifyReport:
        """Check every data file the lake references: that it exists, has the size the
        catalog recorded and a readable Parquet footer (and, with `read_rows`, that every
        row reads: slower, it reads the whole lake); and the files of each version set's
        newest vector index (with `read_rows`, that they hold the stored rows and vectors).
        Names the damaged files and the partitions whose current versions they hold;
        writing those again (and building the index again) repairs them. Damage the size
        does not show is recorded in the catalog, so the next materialization repairs it."""
        with self.connect() as con:
            report = damage.verify(con, read_rows=read_rows)
            indexes = vector_index.damaged_index_files(con, self._index_files, read_rows)
        for path, problem in indexes:
            logger.warning("Damaged vector index file %s: %s", self.uri(path), problem)
        report = replace(report, damaged_files=report.damaged_files + [
            damage.DamagedFile(self.uri(path), damage.INDEX_TABLE, problem, (), current=True)
            for path, problem in indexes])
        try:
            damage.record_damage(self._catalog, report.damaged_files)
        except duckdb.Error as error:  # a catalog this user may only read: the report stands
            logger.warning("verify could not record the damage it found in %s: %s", self.catalog_label, error)
        return report

    # ------------------------------------------------------------------ writing

    def write_corpus(self, partition: str, table: pa.Table, source_uri: str | None = None,
                     rejected_rows: int = 0, run_id: str | None = None) -> CorpusVersion:
        """Store a normalized corpus shard (`id`, `text`, `text_sha256`) as a new version.

        The version is the SHA-256 of the ids and texts, so storing the same shard twice
        stores nothing new and makes that version current again.
        """
        change = ingest.CorpusChange(partition, table, source_uri=source_uri, rejected_rows=rejected_rows)
        return ingest.write_corpus_changes(self._catalog, [change], run_id)[partition]

    def write_corpus_changes(self, changes: Sequence[ingest.CorpusChange], run_id: str | None = None,
                             report: Sequence[str] = ()) -> dict[str, CorpusVersion]:
        """Store the corpus versions (and landing file records) of many partitions in one
        commit: what one batch of landing files changed (`embedding_core.store.ingest`).
        Returns partition -> current corpus version, for each change that has a table and
        each partition of `report`."""
        return ingest.write_corpus_changes(self._catalog, changes, run_id, report)

    def landing_state(self, keep: Callable[[str], bool] = lambda key: True
                      ) -> tuple[dict[str, LandingRecord], dict[str, CorpusVersion]]:
        """The landing records of the files `keep` accepts (by partition key) and their
        current corpus versions, in one connection."""
        with self.connect() as con:
            return ingest.landing_state(con, keep)

    def landing_records(self, partitions: Sequence[str] | None = None) -> dict[str, LandingRecord]:
        """partition -> the latest record of its landing file: path, fingerprint, content
        version and state (`embedding_core.store.ingest`)."""
        with self.connect() as con:
            return ingest.landing_records(con, partitions)

    def current_corpus_versions(self, partitions: Sequence[str]) -> dict[str, CorpusVersion]:
        """partition -> its current corpus version, for those of `partitions` that have one."""
        with self.connect() as con:
            return ingest.current_versions(con, list(partitions))

    def record_model_snapshot(self, snapshot: ModelSnapshot, run_id: str | None = None) -> ModelSnapshot:
        """Record a pinned model and make it the current snapshot for its `model_key`."""
        if self.current_model_snapshot(snapshot.model_key) == snapshot:
            return snapshot
        row = [snapshot.model_key, snapshot.model, snapshot.revision, snapshot.requested_revision,
               snapshot.source, snapshot.path, snapshot.dim, snapshot.max_seq_length,
               json.dumps(list(snapshot.pooling)), json.dumps(snapshot.prompts, sort_keys=True),
               snapshot.default_prompt_name, snapshot.similarity_fn, snapshot.files_hash, run_id]
        self._catalog.commit(
            lambda con: con.execute(f"INSERT INTO model_snapshots VALUES ({', '.join('?' * 14)}, "
                                    "current_timestamp)", row),
            what=f"model snapshot {snapshot.model_key!r}",
            message=f"model {snapshot.model_key} {snapshot.model}@{snapshot.revision} (run {run_id})",
            extra=json.dumps({"run_id": run_id, "model_key": snapshot.model_key}))
        return snapshot

    def write_embeddings(
        self, partition: str, corpus: CorpusVersion, snapshot: ModelSnapshot, params: EmbeddingParams,
        encode: Callable[[list[str]], np.ndarray], run_id: str | None = None, chunker: Chunker | None = None,
    ) -> EmbeddingWriteResult:
        """Embed a stored corpus version and commit the vectors as a new immutable version.

        `encode` maps a list of texts to a 2-D array (already in `params.precision`), e.g.
        ``functools.partial(model.encode, normalize_embeddings=True)``. Texts whose SHA-256
        already has a vector for the same model revision and parameters (in any
        partition) are reused; only the rest are encoded, each distinct text once, with
        no catalog connection open. Rows, version record and a commit message naming
        `run_id` then commit in one lake transaction. Storing the same inputs twice
        encodes nothing and makes that version current. With `params.chunked`, `chunker`
        (`EncodingSession.chunk`) splits each text: a row per chunk, reused per chunk.
        """
        return writer.write_embeddings(self._catalog, partition, corpus, snapshot, params, encode, run_id,
                                       chunker)

    def write_embeddings_batch(
        self, corpora: Sequence[CorpusVersion], snapshot: ModelSnapshot, params: EmbeddingParams,
        encode: Callable[[list[str]], np.ndarray], run_id: str | None = None, read_back: bool = False,
        chunker: Chunker | None = None,
    ) -> list[EmbeddingWriteResult]:
        """`write_embeddings` for many partitions at once (one per corpus version): one
        lookup, one `encode` call with every text none of them has stored yet, one commit.
        The results are in the order of `corpora`. With `read_back`, each version this call
        stored comes with its rows as the lake holds them (`EmbeddingWriteResult.stored`),
        read in the commit's connection: what the checks judge, without another read."""
        return writer.write_embeddings_batch(self._catalog, corpora, snapshot, params, encode, run_id,
                                             read_back=read_back, chunker=chunker)

    # -------------------------------------------------------------- maintenance

    def maintain(self, older_than: timedelta = timedelta(days=7)) -> MaintenanceReport:
        """Drop what is no longer current and older than `older_than`: versions of a
        partition that something newer replaced that long ago, lake snapshots (time
        travel) older than that, and files nothing references any more (including those
        of writers that died mid-commit), and vector index files superseded that long ago.
        Current versions and current indexes are never touched."""
        report = maintenance.maintain(self._catalog, older_than)
        return replace(report, deleted_index_files=vector_index.expire_indexes(
            self._catalog, self._index_files, older_than))
