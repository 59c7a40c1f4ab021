"""The serving side of `EmbeddingStore`: search, vector indexes, version sets and promotions.

A model's vectors come in version sets (model, revision, params hash); one of them serves
(the views, search and the index answer from it) and the others are candidates until
promoted (`embedding_core.store.serving`). `EmbeddingStore` inherits these methods; they use
its catalog connection, index files and catalog label.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import duckdb
import numpy as np

import embedding_core.store.queries as queries
import embedding_core.store.serving as serving
import embedding_core.store.vector_index as vector_index
from embedding_core.store.catalog import Catalog
from embedding_core.store.index_files import IndexFiles
from embedding_core.store.records import (
    IndexBuild,
    IndexRecord,
    ModelSnapshot,
    Promotion,
    SearchHit,
    VersionSet,
)
from embedding_core.store.search import VectorSearcher

__all__ = ["ServingMethods"]


class ServingMethods:
    """Search and the serving version of each model, for `EmbeddingStore`."""

    # EmbeddingStore's, which these methods use.
    _catalog: Catalog
    _index_files: IndexFiles
    catalog_label: str
    connect: Callable[..., AbstractContextManager[duckdb.DuckDBPyConnection]]

    def search(self, query_embedding: np.ndarray, model: str, top_k: int = 5, similarity_fn: str = "cosine",
               exact: bool = False, by_chunk: bool = False, version: str | None = None,
               snapshot: ModelSnapshot | None = None) -> list[SearchHit]:
        """The `top_k` documents of `model` most similar to `query_embedding`, each by its
        best chunk (`SearchHit` has its text and span; `by_chunk`: the best chunks), by
        ``"cosine"`` or ``"dot"`` `similarity_fn`, among the vectors of the model's serving
        version (`serving_version`), or of the version set `version` (a `VersionSet.key`: a
        candidate, queried explicitly). The version's vector index answers when one exists
        (`build_vector_indexes`), newer rows searched exactly; with none, or `exact`, every row
        is scanned. A query of another dimension than the version's raises `ValueError`
        naming both; so does `snapshot` (the model snapshot that encoded the query) of
        another revision. Each call reads the catalog: for many queries use `search_batch`
        or `searcher`."""
        return self.searcher(model, similarity_fn, exact, by_chunk, version, snapshot).search(query_embedding, top_k)

    def search_batch(self, query_embeddings: np.ndarray, model: str, top_k: int = 5, similarity_fn: str = "cosine",
                     exact: bool = False, by_chunk: bool = False, version: str | None = None,
                     snapshot: ModelSnapshot | None = None) -> list[list[SearchHit]]:
        """`search` for each row of an (n, dim) array, answered together."""
        return self.searcher(model, similarity_fn, exact, by_chunk, version, snapshot).search_batch(
            query_embeddings, top_k)

    def searcher(self, model: str, similarity_fn: str = "cosine", exact: bool = False,
                 by_chunk: bool = False, version: str | None = None,
                 snapshot: ModelSnapshot | None = None) -> VectorSearcher:
        """A searcher of the vectors of `model`'s serving version (or of version set `version`)
        as of now, for many queries (see `search`); `version_key` says which it serves."""
        return VectorSearcher(self._catalog, self._index_files, model, similarity_fn, exact, by_chunk,
                              version=version, snapshot=snapshot)

    def build_vector_indexes(self, model: str | None = None, metric: str | None = None,
                             run_id: str | None = None, rebuild: bool = False,
                             version: str | None = None) -> list[IndexBuild]:
        """Bring the vector index of the serving version of each model (of `model`) up to its
        current vectors, or that of version set `version` (a candidate's, built before it is
        promoted, so promotion switches search to an index at once): an update of the
        previous index of that version where cheaper, else a full build (always with
        `rebuild`). `metric` defaults to the model snapshot's similarity function."""
        with self.connect() as con:
            if version is not None:
                found = serving.find_version_set(con, model, version, self.catalog_label)
                groups = [] if found.dtype != "float32" else [(found.model, found.revision, found.params_hash,
                                                                 found.dim)]
            else:
                groups = vector_index.index_groups(con, model)
            functions = dict(con.execute("SELECT model, similarity_fn FROM current_model_snapshots").fetchall())
        return [vector_index.build_index(self._catalog, self._index_files, group,
                                         metric or functions.get(group[0]) or "cosine", run_id, rebuild)
                for group in groups]

    def vector_indexes(self, model: str | None = None) -> list[IndexRecord]:
        """The current index of each version set (of `model`), serving or not, newest first."""
        with self.connect() as con:
            return vector_index.current_indexes(con, model)

    def version_sets(self, model: str | None = None) -> list[VersionSet]:
        """Every version set (of `model`): (model, revision, params hash) with its key, its
        coverage of the current corpus (partitions covered / total, complete) and whether it
        serves or served just before; by model, oldest first."""
        with self.connect() as con:
            return serving.version_sets(con, model)

    def version_set(self, key: str, model: str | None = None) -> VersionSet:
        """The version set of a key (`VersionSet.key`), of `model` when given; `VersionError`
        naming the key when it is unknown, of another model, or of several models."""
        with self.connect() as con:
            return serving.find_version_set(con, model, key, self.catalog_label)

    def serving_version(self, model: str) -> VersionSet | None:
        """The version set `model` serves: its latest promotion's, else (never promoted) its
        first one; None when the model has no vectors."""
        return next((s for s in self.version_sets(model) if s.serving), None)

    def version_snapshot(self, version: VersionSet) -> ModelSnapshot | None:
        """The recorded model snapshot of a version set's model and revision (the latest
        record of it): what encodes queries for that version."""
        with self.connect() as con:
            found = queries.model_snapshots(con, "WHERE model = ? AND revision = ? ORDER BY snapshot_id DESC LIMIT 1",
                                            [version.model, version.revision], source="model_snapshots")
        return found[0] if found else None

    def promote(self, model: str, key: str, *, run_id: str | None = None, metrics: dict | None = None,
                reason: str = "", force: bool = False) -> Promotion:
        """Make version set `key` the serving version of `model`, in one commit: the views,
        search and the vector index (the set's own, when `build_vector_indexes(model,
        version=key)` built it before) serve it from then on. `metrics` (a JSON-able dict,
        e.g. the retrieval evaluation) and `reason` are recorded with it. Raises
        `VersionError` naming the item, storing nothing, when `key` is unknown, belongs to
        another model, already serves, or is incomplete (it lacks vectors of some current
        partition; `force` promotes it anyway, recorded as forced)."""
        return serving.promote(self._catalog, model, key, run_id=run_id, metrics=metrics, reason=reason, force=force)

    def rollback(self, model: str, *, run_id: str | None = None, reason: str = "") -> Promotion:
        """Promote again the version set that served `model` before the serving one: its vectors
        and index are still there (maintenance keeps them), so search switches back at once.
        Recorded as a promotion whose reason starts with "rollback" (and as forced when the
        set lacks partitions added since it served). `VersionError` when there is no
        previous version (the model was never promoted)."""
        return serving.rollback(self._catalog, model, run_id=run_id, reason=reason)

    def promotions(self, model: str | None = None) -> list[Promotion]:
        """The promotion history (of `model`), oldest first; `connect(snapshot=...)` shows the
        store as of any of them."""
        with self.connect() as con:
            return serving.promotions(con, model)
