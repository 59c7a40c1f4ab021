"""Corpus versions of many partitions in one commit, and the record of each landing file.

A landing folder of many small files is ingested in batches: every partition (one per
landing file) that changed gets its new corpus version, and every file its `landing_files`
record (path, fingerprint, content version, state), in one lake transaction. The records
are the per-file lineage: which file, and which content of it, every stored row came from.

States of a landing file's record:

- ``stored``: the file was read; its corpus version is current.
- ``deleted``: the file left the landing folder; its rows and vectors are kept (a landing
  folder is often cleaned once its files are ingested).
- ``retired``: the file left the folder and its rows were retired on purpose (deletions
  dropped by configuration, or the file was renamed: its content lives on under the new
  name); the partition's current corpus version is then empty, earlier versions stay
  readable until maintenance.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa

import embedding_core.store.damage as damage
import embedding_core.store.queries as queries
from embedding_core.store.catalog import Catalog
from embedding_core.store.files import sql_str
from embedding_core.store.records import CorpusVersion, LandingRecord, sha256_json
from embedding_core.store.rows import new_write_id, validated_corpus

__all__ = ["CorpusChange", "corpus_content_version", "current_versions", "landing_records", "landing_state",
           "write_corpus_changes"]

LANDING_STATES = ("stored", "deleted", "retired")
_LANDING_COLUMNS = "partition, relative_path, fingerprint, corpus_version, state, detail, run_id, snapshot_id"


def corpus_content_version(table: pa.Table) -> str:
    """The corpus version of a normalized table: SHA-256 of its ids and text hashes."""
    return sha256_json([table.column("id").to_pylist(), table.column("text_sha256").to_pylist()])


@dataclass(frozen=True)
class CorpusChange:
    """What to store for one partition.

    `table` is the normalized shard to make current (an empty table retires the partition);
    None stores no corpus version (a ``deleted`` file whose rows are kept). With
    `relative_path`, the landing file's record is written too.
    """

    partition: str
    table: pa.Table | None
    source_uri: str | None = None
    rejected_rows: int = 0
    relative_path: str | None = None
    fingerprint: str | None = None
    state: str = "stored"
    detail: str | None = None
    # The content version to record for a file whose rows stay as they are (no `table`).
    recorded_version: str | None = None

    def __post_init__(self) -> None:
        if self.state not in LANDING_STATES:
            raise ValueError(f"landing state {self.state!r} of {self.partition!r}: expected one of "
                             f"{LANDING_STATES}")


def write_corpus_changes(catalog: Catalog, changes: Sequence[CorpusChange], run_id: str | None,
                         report: Sequence[str] = ()) -> dict[str, CorpusVersion]:
    """Store `changes` in one commit; partition -> its current corpus version afterwards, for
    each change that has a table and each partition in `report` (read in the commit's own
    connection). Unchanged shards store nothing new (their version stays current); a version
    stored before is made current again without writing its rows twice, unless they lie in
    a damaged data file."""
    partitions = [change.partition for change in changes]
    if len(set(partitions)) != len(partitions):
        raise ValueError(f"corpus changes name partition(s) twice: "
                         f"{sorted({p for p in partitions if partitions.count(p) > 1})}")
    tables = {change.partition: validated_corpus(change.partition, change.table)
              for change in changes if change.table is not None}
    versions = {partition: corpus_content_version(table) for partition, table in tables.items()}
    # Files are checked outside the transaction: on Postgres a failed read aborts it.
    wanted = sorted(set(tables) | set(report))
    with catalog.connection() as con:
        current = current_versions(con, wanted)
        stored = _stored_versions(con, versions)
        damaged = damage.damaged_write_ids(con, [v.write_id for v in stored.values()]) if stored else set()
    changed = [p for p in tables if current.get(p) is None or current[p].corpus_version != versions[p]
               or current[p].write_id in damaged]
    landing = [change for change in changes if change.relative_path is not None]
    if not changed and not landing:
        return current

    def work(con: duckdb.DuckDBPyConnection) -> None:
        again = _stored_versions(con, {p: versions[p] for p in changed})  # a concurrent writer's
        new_rows, records = [], []
        by_partition = {change.partition: change for change in changes}
        for partition in changed:
            table, change = tables[partition], by_partition[partition]
            before = again.get(partition)
            if before is not None and before.write_id not in damaged:
                write_id = before.write_id
            else:
                write_id = new_write_id()
                new_rows.append(table.add_column(0, "write_id", pa.array([write_id] * table.num_rows,
                                                                         pa.string())))
            records.append([partition, versions[partition], table.num_rows, change.rejected_rows,
                            table.nbytes, change.source_uri, run_id, write_id])
        if new_rows:
            con.register("corpus_shards", pa.concat_tables(new_rows))
            con.execute("INSERT INTO corpus_rows SELECT write_id, id, text, text_sha256 FROM corpus_shards")
            con.unregister("corpus_shards")
        if records:
            con.executemany("INSERT INTO corpus_versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, current_timestamp)",
                            records)
        if landing:
            con.executemany("INSERT INTO landing_files VALUES (?, ?, ?, ?, ?, ?, ?, current_timestamp)",
                            [[c.partition, c.relative_path, c.fingerprint,
                              versions.get(c.partition, c.recorded_version), c.state, c.detail, run_id]
                             for c in landing])

    after_commit: dict[str, CorpusVersion] = {}
    what = repr(partitions[0]) if len(partitions) == 1 else f"{len(partitions)} partitions"
    label = (f"{partitions[0]} {versions[partitions[0]][:16]}"
             if len(partitions) == 1 and partitions[0] in versions else what)
    catalog.commit(work, what=f"corpus partition {what}" if len(partitions) == 1 else f"corpus of {what}",
                   message=f"corpus {label} (run {run_id})",
                   extra=json.dumps({"run_id": run_id, **({"partition": partitions[0]} if len(partitions) == 1
                                                          else {"partition_count": len(partitions)})}),
                   after=lambda con: after_commit.update(current_versions(con, wanted)))
    if damaged:  # the damaged files' rows may all be written again by now
        damage.retire_damaged_files(catalog, damaged, run_id)
    return after_commit


def landing_state(con: duckdb.DuckDBPyConnection, keep: Callable[[str], bool]
                  ) -> tuple[dict[str, LandingRecord], dict[str, CorpusVersion]]:
    """The landing records of the files `keep` accepts, and their current corpus versions."""
    records = {key: record for key, record in landing_records(con).items() if keep(key)}
    return records, current_versions(con, sorted(records))


def landing_records(con: duckdb.DuckDBPyConnection,
                    partitions: Sequence[str] | None = None) -> dict[str, LandingRecord]:
    """partition -> the latest record of its landing file (of every file ever recorded, or of
    `partitions`)."""
    where = "" if partitions is None else "WHERE list_contains(?, partition)"
    rows = con.execute(
        f"""SELECT {_LANDING_COLUMNS} FROM landing_files {where}
            QUALIFY row_number() OVER (PARTITION BY partition ORDER BY snapshot_id DESC, rowid DESC) = 1""",
        [] if partitions is None else [list(partitions)]).fetchall()
    return {row[0]: LandingRecord(*row) for row in rows}


def current_versions(con: duckdb.DuckDBPyConnection, partitions: list[str]) -> dict[str, CorpusVersion]:
    if not partitions:
        return {}
    rows = con.execute(f"SELECT {queries.CORPUS_COLUMNS} FROM current_corpus_versions "
                       "WHERE list_contains(?, partition)", [partitions]).fetchall()
    return {row[0]: CorpusVersion(*row) for row in rows}


def _stored_versions(con: duckdb.DuckDBPyConnection, versions: dict[str, str]) -> dict[str, CorpusVersion]:
    """partition -> its stored corpus version of the given content version, where there is one."""
    if not versions:
        return {}
    pairs = ", ".join(f"({sql_str(p)}, {sql_str(v)})" for p, v in versions.items())
    columns = ", ".join(f"s.{column}" for column in queries.CORPUS_COLUMNS.split(", "))
    rows = con.execute(f"SELECT {columns} FROM stored_corpus_versions s JOIN (VALUES {pairs}) w(p, v) "
                       "ON s.partition = w.p AND s.corpus_version = w.v").fetchall()
    return {row[0]: CorpusVersion(*row) for row in rows}

