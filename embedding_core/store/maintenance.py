"""Keeping the lake small and its views right: expire what is no longer current, and
repair the `embeddings` view after a commit raced another.

Never expired: the latest version of each partition in the serving version set of each
model, in the set that served before it (a rollback's target), and in every candidate set;
nor their vector indexes (`vector_index.expire_indexes`)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import duckdb

import embedding_core.store.damage as damage
from embedding_core.store.catalog import Catalog, lake_name, set_commit_message
from embedding_core.store.files import sql_str
from embedding_core.store.records import MaintenanceReport
from embedding_core.store.views import VECTOR_TABLES, ensure_embeddings_view

__all__ = ["KEPT_SETS_SQL", "maintain", "pin_serving", "repair_embeddings_view"]

logger = logging.getLogger(__name__)

# Version sets maintenance keeps: every one but those *retired*, which served a model (a
# promotion's `from` or `to`) and now neither serve it nor served just before it (what a
# rollback restores), once the model's latest promotion is older than the cutoff (the
# parameter). Candidates, never promoted, stay until the user promotes something over them.
KEPT_SETS_SQL = """
    WITH latest AS (
        SELECT model, created_at, from_revision, from_params_hash FROM promotions
        QUALIFY row_number() OVER (PARTITION BY model ORDER BY snapshot_id DESC, rowid DESC) = 1),
    served AS (
        SELECT model, to_revision AS revision, to_params_hash AS params_hash FROM promotions
        UNION SELECT model, from_revision, from_params_hash FROM promotions WHERE from_revision IS NOT NULL),
    retired AS (
        SELECT * FROM served
        EXCEPT SELECT model, revision, params_hash FROM serving_version_sets
        EXCEPT SELECT model, from_revision, from_params_hash FROM latest WHERE from_revision IS NOT NULL)
    SELECT DISTINCT model, revision, params_hash FROM embedding_versions e
    WHERE NOT EXISTS (SELECT 1 FROM retired r JOIN latest l ON l.model = r.model
                      WHERE r.model = e.model AND r.revision = e.revision AND r.params_hash = e.params_hash
                        AND l.created_at < ?)"""
# The versions maintenance keeps: the latest of each partition in each kept set.
_KEPT_VERSIONS = f"""
    SELECT l.partition, l.corpus_version, l.version_id FROM latest_embedding_versions l SEMI JOIN ({KEPT_SETS_SQL}) k
      ON k.model = l.model AND k.revision = l.revision AND k.params_hash = l.params_hash"""
# Versions nothing keeps any more, last made current before the cutoff (2 parameters: cutoff).
_EXPIRED_EMBEDDINGS = f"""
    SELECT version_id, any_value(dtype), list(DISTINCT write_id) FROM embedding_versions
    WHERE version_id NOT IN (SELECT version_id FROM ({_KEPT_VERSIONS}))
    GROUP BY version_id HAVING max(created_at) < ?"""
# Corpus versions a kept embedding version was made from stay: checks read them back.
_EXPIRED_CORPUS = f"""
    SELECT partition, corpus_version, list(DISTINCT write_id) FROM corpus_versions c
    WHERE NOT EXISTS (SELECT 1 FROM current_corpus_versions k
                      WHERE k.partition = c.partition AND k.corpus_version = c.corpus_version)
      AND NOT EXISTS (SELECT 1 FROM ({_KEPT_VERSIONS}) e
                      WHERE e.partition = c.partition AND e.corpus_version = c.corpus_version)
    GROUP BY partition, corpus_version HAVING max(created_at) < ?"""


def pin_serving(con: duckdb.DuckDBPyConnection) -> None:
    """Record, in the open transaction, the serving set of each model never promoted (its
    first set), so that expiring that set's oldest records cannot change what it serves."""
    con.execute("""INSERT INTO promotions
        SELECT model, NULL, NULL, NULL, version_key, revision, params_hash, '{}',
               'maintenance: the first version set serves until another is promoted', false, NULL,
               current_timestamp
        FROM serving_version_sets WHERE model NOT IN (SELECT model FROM promotions)""")


def repair_embeddings_view(con: duckdb.DuckDBPyConnection, attempts: int = 3) -> None:
    """Retype the `embeddings` view if committed data no longer fits it (see
    `views.ensure_embeddings_view`); a writer runs it right after its commit."""
    for _ in range(attempts):
        try:
            con.execute("BEGIN TRANSACTION")
            if ensure_embeddings_view(con):
                set_commit_message(con, "retype the embeddings view")
            con.execute("COMMIT")
            return
        except duckdb.TransactionException as error:
            # Another writer changed the view meanwhile: look again on the new snapshot.
            if "conflict" not in str(error).lower():
                raise


def maintain(catalog: Catalog, older_than: timedelta) -> MaintenanceReport:
    """Delete versions no longer current since before now - `older_than`, expire lake
    snapshots older than that, then delete data files no snapshot references any more and
    files no commit ever registered (writers that died mid-commit): any Parquet file under
    ``<root>/lake/`` that the lake does not reference.

    `older_than` must exceed the longest commit: a live writer's files are not registered
    until it commits.
    """
    cutoff = datetime.now(timezone.utc) - older_than
    # Deleting rows reads their files: versions in damaged files stay (`verify` lists them).
    # Checked outside the transaction: on Postgres a failed read would abort it.
    with catalog.connection() as con:
        expiring = {w for query in (_EXPIRED_EMBEDDINGS, _EXPIRED_CORPUS)
                    for *_, write_ids in con.execute(query, [cutoff, cutoff]).fetchall() for w in write_ids}
        damaged = damage.damaged_write_ids(con, expiring) if expiring else set()

    def expire_versions(con: duckdb.DuckDBPyConnection) -> tuple[list[str], list[str]]:
        pin_serving(con)
        embeddings = con.execute(_EXPIRED_EMBEDDINGS, [cutoff, cutoff]).fetchall()
        corpora = con.execute(_EXPIRED_CORPUS, [cutoff, cutoff]).fetchall()
        if damaged:
            logger.warning("maintenance keeps %d expired version(s) whose data files are damaged",
                           sum(bool(damaged & set(ids)) for *_, ids in embeddings + corpora))
            embeddings = [row for row in embeddings if not damaged & set(row[2])]
            corpora = [row for row in corpora if not damaged & set(row[2])]
        for version_id, dtype, write_ids in embeddings:
            con.execute(f"DELETE FROM {VECTOR_TABLES[dtype][0]} WHERE write_id IN ?", [write_ids])
            con.execute("DELETE FROM embedding_versions WHERE version_id = ?", [version_id])
        for partition, corpus_version, write_ids in corpora:
            con.execute("DELETE FROM corpus_rows WHERE write_id IN ?", [write_ids])
            con.execute("DELETE FROM corpus_versions WHERE partition = ? AND corpus_version = ?",
                        [partition, corpus_version])
        return ([version_id for version_id, _, _ in embeddings],
                [f"{partition}@{corpus_version[:16]}" for partition, corpus_version, _ in corpora])

    embeddings, corpora = catalog.commit(expire_versions, what="maintenance",
                                         message=f"maintenance: expire versions older than {cutoff}")
    with catalog.connection(read_only=False) as con:
        lake = sql_str(lake_name(con))
        older = f"older_than => {sql_str(cutoff.isoformat())}::TIMESTAMPTZ"
        expired = con.execute(f"CALL ducklake_expire_snapshots({lake}, {older})").fetchall()
        # Files the expired snapshots alone referenced: no snapshot left can reach them.
        deleted = con.execute(f"CALL ducklake_cleanup_old_files({lake}, cleanup_all => true)").fetchall()
        # Files no commit registered: writers that died mid-commit (older than any live commit).
        orphans = con.execute(f"CALL ducklake_delete_orphaned_files({lake}, {older})").fetchall()
    return MaintenanceReport(expired_embedding_versions=embeddings, expired_corpus_versions=corpora,
                             expired_snapshots=len(expired), deleted_files=len(deleted) + len(orphans))
