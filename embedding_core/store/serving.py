"""Version sets and the serving version of each model: listing them, and the append-only
promotion history that moves a model from one to another.

A version set is every vector of one (model, revision, params_hash). Each model name serves
one: its latest `promotions` record's `to`, or (no promotion yet) the first set stored, so a
fresh store serves its first version while it grows. Writing vectors never changes what
serves: a new revision or parameter set is a candidate beside the serving one until
`promote` records it, in one commit that also retypes the `embeddings` view. `rollback`
promotes the version that served before. Views: `views`; the records: `VersionSet`, `Promotion`.
"""

from __future__ import annotations

import json
import logging

import duckdb

from embedding_core.store.catalog import Catalog
from embedding_core.store.maintenance import repair_embeddings_view
from embedding_core.store.records import Promotion, VersionSet
from embedding_core.store.views import ensure_embeddings_view

__all__ = ["VersionError", "find_version_set", "promote", "promotions", "rollback",
           "serving_set", "uncovered_partitions", "version_sets"]

logger = logging.getLogger(__name__)

_SET_COLUMNS = ("version_key, model, revision, params_hash, params, dtype, dim, partitions_covered, "
                "partitions_total, complete, serving, previous, rows, snapshot_id, created_at")
_PROMOTION_COLUMNS = "created_at, run_id, model, from_key, to_key, metrics, reason, forced, snapshot_id"
# How many missing partitions an error names.
_NAMED = 5


class VersionError(ValueError):
    """A version key, model or promotion the store refuses; the message names the item and
    what to do. Nothing was stored."""


def version_sets(con: duckdb.DuckDBPyConnection, model: str | None = None) -> list[VersionSet]:
    """Every version set (of `model`), by model, oldest first, with its coverage."""
    where, args = ("WHERE model = ?", [model]) if model is not None else ("", [])
    rows = con.execute(f"SELECT {_SET_COLUMNS} FROM embedding_version_sets {where} "
                       "ORDER BY model, snapshot_id, revision, params_hash", args).fetchall()
    sets = []
    for row in rows:
        values = dict(zip(_SET_COLUMNS.split(", "), row, strict=True))
        values["key"] = values.pop("version_key")
        values["params"] = json.loads(values["params"])
        sets.append(VersionSet(**values))
    return sets


def serving_set(con: duckdb.DuckDBPyConnection, model: str) -> tuple[str, str, str] | None:
    """(key, revision, params_hash) of the set `model` serves; None when it has no vectors.
    One small query, without coverage (what a searcher opens with)."""
    row = con.execute("SELECT version_key, revision, params_hash FROM serving_version_sets WHERE model = ?",
                      [model]).fetchone()
    return None if row is None else tuple(row)


def find_version_set(con: duckdb.DuckDBPyConnection, model: str | None, key: str,
                     label: str = "the store") -> VersionSet:
    """The version set `key` of `model` (of whichever model has it, when `model` is None);
    `VersionError` naming the key when it is unknown, belongs to another model, or names
    sets of several models."""
    found = [s for s in version_sets(con) if s.key == key]
    mine = [s for s in found if model is None or s.model == model]
    if len(mine) == 1:
        return mine[0]
    if len(mine) > 1:
        if model is None:
            raise VersionError(f"version {key!r} names version sets of several models "
                               f"({', '.join(sorted({s.model for s in mine}))}): say which model")
        raise VersionError(f"version {key!r} names {len(mine)} version sets of model {model!r} "
                           f"(revisions {', '.join(s.revision for s in mine)})")
    if found:
        raise VersionError(f"version {key!r} belongs to model {found[0].model!r}, not {model!r}")
    known = [s.key for s in version_sets(con, model)] if model is not None else sorted({s.key for s in version_sets(con)})
    of = f" of model {model!r}" if model is not None else ""
    raise VersionError(f"no version {key!r}{of} in {label}; known: {', '.join(known) or 'none'}")


def uncovered_partitions(con: duckdb.DuckDBPyConnection, version: VersionSet, limit: int | None = None) -> list[str]:
    """Current corpus partitions (with rows) that `version` holds no vectors of their
    current corpus version for: what completing it takes."""
    rows = con.execute(
        f"""SELECT c.partition FROM current_corpus_versions c WHERE c.rows > 0 AND NOT EXISTS (
                SELECT 1 FROM latest_embedding_versions l WHERE l.partition = c.partition
                  AND l.corpus_version = c.corpus_version AND l.model = ? AND l.revision = ? AND l.params_hash = ?)
            ORDER BY c.partition {'LIMIT ' + str(int(limit)) if limit is not None else ''}""",
        [version.model, version.revision, version.params_hash]).fetchall()
    return [partition for (partition,) in rows]


def promotions(con: duckdb.DuckDBPyConnection, model: str | None = None) -> list[Promotion]:
    """The promotion history (of `model`), oldest first."""
    where, args = ("WHERE model = ?", [model]) if model is not None else ("", [])
    rows = con.execute(f"SELECT {_PROMOTION_COLUMNS} FROM promotions {where} ORDER BY snapshot_id, rowid",
                       args).fetchall()
    return [Promotion(time, run_id, model_name, from_key, to_key, json.loads(metrics or "{}"), reason or "",
                      bool(forced), snapshot_id)
            for time, run_id, model_name, from_key, to_key, metrics, reason, forced, snapshot_id in rows]


def promote(catalog: Catalog, model: str, key: str, *, run_id: str | None = None, metrics: dict | None = None,
            reason: str = "", force: bool = False, rollback: bool = False) -> Promotion:
    """See `EmbeddingStore.promote`; with `rollback`, `key` is ignored and the previous
    serving set is promoted (`EmbeddingStore.rollback`)."""
    metrics_json = json.dumps(metrics or {}, sort_keys=True, default=float)

    def work(con: duckdb.DuckDBPyConnection) -> tuple[VersionSet, VersionSet]:
        sets = version_sets(con, model)
        if not sets:
            known = sorted({s.model for s in version_sets(con)})
            raise VersionError(f"model {model!r} has no embeddings in {catalog.label}; models: "
                               f"{', '.join(known) or 'none'}")
        current = next((s for s in sets if s.serving), None)  # None: its promoted set has no vectors left
        if rollback:
            target = next((s for s in sets if s.previous), None)
            if target is None:
                raise VersionError(f"model {model!r} has no previous serving version to roll back to: "
                                   f"{current.key if current else 'nothing'} serves it and was never promoted "
                                   "over another")
        else:
            target = find_version_set(con, model, key, catalog.label)
            if target.serving:
                raise VersionError(f"version {key!r} already serves model {model!r}")
            if not target.complete and not force:
                missing = uncovered_partitions(con, target, _NAMED)
                more = target.partitions_total - target.partitions_covered - len(missing)
                raise VersionError(
                    f"version {key!r} of model {model!r} is incomplete: it covers {target.partitions_covered} "
                    f"of {target.partitions_total} partitions (missing {', '.join(missing)}"
                    f"{f' and {more} more' if more > 0 else ''}); embed the missing partitions with its "
                    "configuration first, or promote with force=True (--force)")
        before = [current.key, current.revision, current.params_hash] if current else [None, None, None]
        con.execute("INSERT INTO promotions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, current_timestamp)",
                    [model, *before, target.key, target.revision,
                     target.params_hash, metrics_json,
                     (f"rollback: {reason}" if reason else "rollback") if rollback else reason,
                     not target.complete, run_id])
        ensure_embeddings_view(con)  # the new set's dimension, in the same commit
        return current, target

    done: list[Promotion] = []

    def after(con: duckdb.DuckDBPyConnection) -> None:
        repair_embeddings_view(con)  # a writer that committed meanwhile saw the old set
        done.append(promotions(con, model)[-1])

    current, target = catalog.commit(
        work, what=f"{'rollback' if rollback else 'promotion'} of {model}",
        message=f"rollback {model}" if rollback else f"promote {model}: {key}",
        extra=json.dumps({"run_id": run_id, "model": model}), after=after)
    if not target.complete:
        logger.warning("%s of %s: version %s serves it, covering %d of %d partitions",
                       "rollback" if rollback else "promotion", model, target.key, target.partitions_covered,
                       target.partitions_total)
    logger.info("%s serves version %s (was %s)", model, target.key, current.key if current else None)
    return done[0]


def rollback(catalog: Catalog, model: str, *, run_id: str | None = None, reason: str = "") -> Promotion:
    """See `EmbeddingStore.rollback`."""
    return promote(catalog, model, "", run_id=run_id, reason=reason, rollback=True)
