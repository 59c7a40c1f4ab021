"""Searching the current vectors of a model's serving version set (or of a candidate set,
named by its key): through the set's vector index (`vector_index`) when one covers them, by
an exact scan in DuckDB otherwise.

A `VectorSearcher` is opened once (one catalog read) and answers many queries from memory:
the index's hits, minus rows of versions that are no longer current, merged with an exact
search of the rows written after the index was built (held in memory). `EmbeddingStore.search`
opens one per call; keep one open for many queries.
"""

from __future__ import annotations

import logging

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import embedding_core.store.damage as damage
import embedding_core.store.serving as serving
import embedding_core.store.vector_index as vector_index
from embedding_core.store.catalog import Catalog
from embedding_core.store.index_files import IndexFiles
from embedding_core.store.queries import CHUNK_TEXT_SQL
from embedding_core.store.records import ModelSnapshot, SearchHit

__all__ = ["SIMILARITY_FUNCTIONS", "VectorSearcher", "exact_search"]

logger = logging.getLogger(__name__)

SIMILARITY_FUNCTIONS = {"cosine": "array_cosine_similarity", "dot": "array_inner_product"}


def check_similarity_fn(similarity_fn: str) -> None:
    if similarity_fn not in SIMILARITY_FUNCTIONS:
        raise ValueError(f"similarity_fn must be one of {sorted(SIMILARITY_FUNCTIONS)}, not {similarity_fn!r}")


def exact_search(con: duckdb.DuckDBPyConnection, query: np.ndarray, version: tuple[str, str, str], top_k: int,
                 similarity_fn: str, by_document: bool = False) -> list[SearchHit]:
    """The `top_k` current rows of a version set, `version` = (model, revision, params_hash),
    nearest `query` (with `by_document`, only each document's best chunk), by a scan of every
    row; a partition whose data files are damaged is left out, with a warning. Only the
    hits' texts are read."""
    dim = query.shape[0]
    best = "QUALIFY row_number() OVER (PARTITION BY partition, id ORDER BY score DESC, chunk) = 1" if by_document else ""
    sql = f"""WITH top AS (
                SELECT {SIMILARITY_FUNCTIONS[similarity_fn]}(embedding::FLOAT[{dim}], ?::FLOAT[{dim}]) AS score,
                       id, partition, corpus_version, chunk, char_start, char_end
                FROM all_version_embeddings WHERE model = ? AND revision = ? AND params_hash = ?
                     AND len(embedding) = {dim} AND NOT list_contains(?::VARCHAR[], partition)
                {best} ORDER BY score DESC, id, partition, chunk LIMIT ?)
              SELECT t.score, t.id, t.partition, {CHUNK_TEXT_SQL.format(rows="t", text="c.text")},
                     t.chunk, t.char_start, t.char_end
              FROM top t
              LEFT JOIN stored_corpus_versions v ON v.partition = t.partition AND v.corpus_version = t.corpus_version
              LEFT JOIN corpus_rows c ON c.write_id = v.write_id AND c.id = t.id
              ORDER BY t.score DESC, t.id, t.partition, t.chunk"""
    try:
        rows = con.execute(sql, [query.tolist(), *version, [""], top_k]).fetchall()
    except duckdb.Error as error:  # a damaged partition: search the others
        if not damage.is_damage_error(error):
            raise
        # Every partition with a damaged file: a candidate's versions are not "current".
        skip = sorted({p for file in damage.verify(con).damaged_files for p in file.partitions})
        logger.warning("search leaves out partitions %s: their data files are damaged (run "
                       "`embedding-store verify`, then materialize them again)", skip)
        rows = con.execute(sql, [query.tolist(), *version, skip, top_k]).fetchall()
    return [SearchHit(float(score), *rest) for score, *rest in rows]


def document_codes(rows: pa.Table) -> np.ndarray:
    """A number per row naming its document (partition and id): equal for a document's chunks."""
    keys = pc.binary_join_element_wise(rows.column("partition"), rows.column("id"), "\x00")
    return keys.combine_chunks().dictionary_encode().indices.to_numpy(zero_copy_only=False)


def first_per_document(codes: np.ndarray) -> np.ndarray:
    """Positions, in order, of the first row of each document among rows best first."""
    _, first = np.unique(codes, return_index=True)
    return np.sort(first)


class VectorSearcher:
    """Search of the float32 vectors of `model`'s serving version set (or of the set whose
    key is `version`) as of when it was opened: the best documents, each by its best chunk
    (with `by_chunk`, the best chunks). `version_key` says which set it serves (None: the
    model has no vectors); `snapshot`, when given, is the model snapshot that encodes the
    queries, refused when its revision is not the set's.

    With `exact`, or when no readable index of the set exists, every query scans the
    store (and a log line says why); otherwise queries are answered from the index and the
    rows it does not cover yet.
    """

    def __init__(self, catalog: Catalog, files: IndexFiles, model: str,
                 similarity_fn: str = "cosine", exact: bool = False, by_chunk: bool = False,
                 version: str | None = None, snapshot: ModelSnapshot | None = None) -> None:
        check_similarity_fn(similarity_fn)
        self.catalog, self.model, self.similarity_fn, self.by_chunk = catalog, model, similarity_fn, by_chunk
        self.loaded: vector_index.LoadedIndex | None = None
        self.index_documents = self.delta_documents = None
        self.dims: list[int] = []
        self.by_document = False
        self.version_key = self.revision = self.params_hash = None
        with catalog.connection() as con:
            if version is not None:
                found = serving.find_version_set(con, model, version, catalog.label)
                if found.dtype != "float32":
                    raise ValueError(f"version {version!r} of {model} stores {found.params.get('precision')} "
                                     f"vectors ({found.dtype}); search reads float32 versions only")
                chosen = (found.key, found.revision, found.params_hash)
            else:
                chosen = serving.serving_set(con, model)
            if chosen is None:
                return
            self.version_key, self.revision, self.params_hash = chosen
            if snapshot is not None and (snapshot.model, snapshot.revision) != (model, self.revision):
                raise ValueError(f"the query is encoded with {snapshot.model}@{snapshot.revision}, but version "
                                 f"{self.version_key} of {model} holds vectors of revision {self.revision}: "
                                 "encode it with that version's snapshot (EmbeddingStore.version_snapshot)")
            current = con.execute(
                "SELECT version_id, dim, params LIKE '%\"chunk_tokens\"%' FROM latest_embedding_versions "
                "WHERE dtype = 'float32' AND model = ? AND revision = ? AND params_hash = ?",
                [model, self.revision, self.params_hash]).fetchall()
            self.dims = sorted({dim for _, dim, _ in current})
            # The scan keeps a document's best chunk only where the set is chunked (no window
            # over an unchunked store's rows).
            self.by_document = not by_chunk and any(chunked for _, _, chunked in current)
            current = [(version_id, dim) for version_id, dim, _ in current]
            if exact or not current:
                return
            records = [r for r in vector_index.current_indexes(con, model)
                       if (r.revision, r.params_hash) == (self.revision, self.params_hash)
                       and r.metric == similarity_fn and r.dim in self.dims]
            if not records:
                logger.info("no vector index of %s version %s (%s): exact search (materialize vector_index)",
                            model, self.version_key, similarity_fn)
                return
            try:
                self.loaded = vector_index.load_index(files, records[0])
            except (OSError, ValueError) as error:
                logger.warning("vector index of %s unusable, exact search instead (the next "
                               "vector_index materialization builds it again): %s", model, error)
                return
            record = records[0]
            live = {v for v, dim in current if dim == record.dim}
            # Rows of versions that are no longer current are never returned.
            versions = self.loaded.version_codes
            self.live_rows = np.isin(versions.indices.to_numpy(zero_copy_only=False),
                                     np.flatnonzero(np.isin(versions.dictionary.to_numpy(zero_copy_only=False),
                                                            list(live))))
            self.all_live = bool(self.live_rows.all())
            # Rows written since the index was built are searched exactly, from memory.
            missing = sorted(live - set(record.versions))
            try:
                self.delta_rows, self.delta = vector_index.version_rows(con, missing, record.dim)
            except duckdb.Error as error:
                if not damage.is_damage_error(error):
                    raise
                logger.warning("rows newer than the vector index of %s cannot be read, exact search "
                               "instead: %s", model, error)
                self.loaded = None
                return
            if missing:
                logger.info("vector index of %s lacks %d rows of %d newer version(s): searched exactly",
                            model, len(self.delta), len(missing))
            if similarity_fn == "cosine" and len(self.delta):
                self.delta = self.delta / np.maximum(np.linalg.norm(self.delta, axis=1, keepdims=True), 1e-12)
            if not by_chunk:  # a document's chunks count once (nothing to do when none is chunked)
                if pc.max(self.loaded.rows.column("chunk")).as_py():
                    self.index_documents = document_codes(self.loaded.rows)
                if len(self.delta) and pc.max(self.delta_rows.column("chunk")).as_py():
                    self.delta_documents = document_codes(self.delta_rows)

    @property
    def uses_index(self) -> bool:
        return self.loaded is not None

    def _queries(self, queries: np.ndarray) -> np.ndarray:
        queries = np.asarray(queries, dtype=np.float32)
        queries = queries.reshape(1, -1) if queries.ndim == 1 else queries
        if queries.ndim != 2:
            raise ValueError(f"queries must be one vector or a (n, dim) array, not shape {queries.shape}")
        if self.dims and queries.shape[1] not in self.dims:
            raise ValueError(f"the query has {queries.shape[1]} dimensions; the vectors of {self.model} "
                             f"have {' or '.join(map(str, self.dims))} (version {self.version_key})")
        return queries

    def search(self, query: np.ndarray, top_k: int = 5) -> list[SearchHit]:
        """The `top_k` rows most similar to `query`, best first."""
        return self.search_batch(self._queries(query)[:1], top_k)[0]

    def search_batch(self, queries: np.ndarray, top_k: int = 5) -> list[list[SearchHit]]:
        """`search` of each row of `queries` (an (n, dim) array), answered together."""
        queries = self._queries(queries)
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, not {top_k}")
        if not self.dims:
            return [[] for _ in queries]
        if self.loaded is None:
            with self.catalog.connection() as con:
                version = (self.model, self.revision, self.params_hash)
                return [exact_search(con, query, version, top_k, self.similarity_fn, self.by_document)
                        for query in queries]
        return [self._merge(found, delta, top_k)
                for found, delta in zip(self._from_index(queries, top_k), self._from_delta(queries, top_k),
                                        strict=True)]

    def _from_index(self, queries: np.ndarray, top_k: int) -> list[list[tuple[float, int]]]:
        """(score, row position) of the best live index rows of each query."""
        index, size = self.loaded.index, len(self.loaded.index)
        if size == 0:
            return [[] for _ in queries]
        wanted = min(size, top_k if self.all_live and self.index_documents is None else 2 * top_k + 16)
        results: list[list[tuple[float, int]] | None] = [None] * len(queries)
        todo = np.arange(len(queries))
        while len(todo):
            matches = index.search(queries[todo], wanted, threads=0)
            keys = np.atleast_2d(matches.keys)
            distances = np.atleast_2d(matches.distances)
            # One query gives `Matches` (no counts), several `BatchMatches`.
            counts = np.atleast_1d(getattr(matches, "counts", len(matches.keys)))
            again = []
            for row, query in enumerate(todo):
                positions = self.loaded.positions(keys[row, :counts[row]])
                keep = self.live_rows[positions]
                positions, scores = positions[keep], 1.0 - distances[row, :counts[row]][keep]
                if self.index_documents is not None:
                    first = first_per_document(self.index_documents[positions])
                    positions, scores = positions[first], scores[first]
                if len(positions) < top_k and wanted < size:
                    again.append(query)
                    continue
                results[query] = list(zip(scores.tolist(), positions.tolist(), strict=True))[:top_k]
            todo, wanted = np.array(again, dtype=np.int64), min(size, wanted * 4)
        return results

    def _from_delta(self, queries: np.ndarray, top_k: int) -> list[list[tuple[float, int]]]:
        if not len(self.delta):
            return [[] for _ in queries]
        if self.similarity_fn == "cosine":
            queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        scores = queries @ self.delta.T
        if self.delta_documents is not None:  # the best chunk of each of the best documents
            best = np.argsort(-scores, axis=1, kind="stable")
            best = [order[first_per_document(self.delta_documents[order])][:top_k] for order in best]
        else:
            k = min(top_k, scores.shape[1])
            best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        return [[(float(scores[q, i]), int(i)) for i in best[q]] for q in range(len(queries))]

    def _merge(self, found: list[tuple[float, int]], delta: list[tuple[float, int]], top_k: int) -> list[SearchHit]:
        hits = [self._hit(self.loaded.rows, score, position) for score, position in found]
        hits += [self._hit(self.delta_rows, score, position) for score, position in delta]
        hits.sort(key=lambda hit: (-hit.score, hit.id, hit.partition, hit.chunk))
        if not self.by_chunk:  # a document found in the index and among the newer rows
            seen: set[tuple[str, str]] = set()
            hits = [hit for hit in hits if (hit.partition, hit.id) not in seen and not seen.add((hit.partition, hit.id))]
        return hits[:top_k]

    @staticmethod
    def _hit(rows: pa.Table, score: float, position: int) -> SearchHit:
        return SearchHit(float(score), *(rows.column(name)[position].as_py()
                                         for name in ("id", "partition", "text", "chunk", "char_start", "char_end")))
