"""Retrieval evaluation: does one embedding version find documents as well as another?

Two kinds of query set, both a `QuerySet` (queries, and the relevance of documents to each):

* **Known-item queries** (`known_item_queries`, `store_known_item_queries`) made from the
  current corpus: a sentence from inside a document is the query, that document the one
  relevant answer. The documents are taken in the order of an md5 of (seed, partition, id),
  so the same corpus gives the same queries, and a grown corpus keeps most of them.
* **A BEIR-format set** a user supplies (`load_beir`): ``queries.jsonl``, ``qrels/<split>.tsv``
  and, optionally, ``corpus.jsonl`` (see `load_beir` for how its ids map to the store's).

`evaluate` encodes the queries, searches them and scores the ranked hits: recall@10, MRR@10
and nDCG@10 (`recall_at_k`, `mrr_at_k`, `ndcg_at_k`; graded relevance counts in nDCG).

    >>> queries = store_known_item_queries(store, count=300)
    >>> result = evaluate(queries, session.encode, lambda q, k: searcher.search_batch(q, k))
    >>> result.metrics
    {'recall@10': 0.97, 'mrr@10': 0.91, 'ndcg@10': 0.925}
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

__all__ = [
    "DEFAULT_K",
    "KNOWN_ITEM_QUERIES",
    "METRICS",
    "BeirFormatError",
    "EvaluationResult",
    "QuerySet",
    "document_key",
    "evaluate",
    "known_item_queries",
    "load_beir",
    "metric_deltas",
    "mrr_at_k",
    "ndcg_at_k",
    "recall_at_k",
    "regressions",
    "split_sentences",
    "store_known_item_queries",
]

DEFAULT_K = 10
KNOWN_ITEM_QUERIES = 300
METRICS = ("recall@10", "mrr@10", "ndcg@10")
# A query sentence needs this many words: "See below." or "New in 3.8." names no document.
MIN_QUERY_WORDS = 6

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[*A-Z0-9])")


class Hit(Protocol):
    """What a searcher returns per found document (`embedding_core.store.SearchHit` is one)."""

    id: str
    partition: str


def document_key(partition: str, row_id: str) -> str:
    """The key a known-item query's relevant document has: partition and id (ids repeat
    across landing files: ``1`` of one CSV is not ``1`` of another)."""
    return f"{partition}\x00{row_id}"


@dataclass(frozen=True)
class QuerySet:
    """Queries and what is relevant to each: ``qrels[query_id][document] = grade`` (> 0 is
    relevant; 0 is judged not relevant). A document is `document_key(partition, id)` when
    `by_partition`, else the store id alone (found in any partition)."""

    name: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    by_partition: bool = False

    def __post_init__(self) -> None:
        unjudged = [query_id for query_id in self.queries if query_id not in self.qrels]
        if unjudged:
            raise ValueError(f"query set {self.name!r}: queries without relevance judgements: {unjudged[:5]}")

    def __len__(self) -> int:
        return len(self.queries)

    def key(self, hit: Hit) -> str:
        """The document a search hit is, as `qrels` names documents."""
        return document_key(hit.partition, hit.id) if self.by_partition else hit.id


# ------------------------------------------------------------------ metrics


def _first_occurrences(ranked: Sequence[str], k: int) -> list[str]:
    """The top `k` distinct documents of a ranking (a document found twice counts once)."""
    seen: set[str] = set()
    top = []
    for document in ranked:
        if document not in seen:
            seen.add(document)
            top.append(document)
            if len(top) == k:
                break
    return top


def recall_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int = DEFAULT_K) -> float:
    """Share of the relevant documents (grade > 0) among the top `k`; 0 when none is relevant."""
    relevant = {document for document, grade in relevance.items() if grade > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(_first_occurrences(ranked, k))) / len(relevant)


def mrr_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int = DEFAULT_K) -> float:
    """1 / rank of the first relevant document in the top `k`, 0 when there is none."""
    for rank, document in enumerate(_first_occurrences(ranked, k), start=1):
        if relevance.get(document, 0) > 0:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int = DEFAULT_K) -> float:
    """Normalized discounted cumulative gain at `k`, with the grade as the gain (as BEIR's
    pytrec_eval counts it): sum of grade / log2(rank + 1) over the top `k`, divided by that
    of the best possible order of the judged documents."""
    gains = [max(relevance.get(document, 0), 0) for document in _first_occurrences(ranked, k)]
    ideal = sorted((grade for grade in relevance.values() if grade > 0), reverse=True)[:k]
    best = sum(grade / math.log2(rank + 1) for rank, grade in enumerate(ideal, start=1))
    if best == 0:
        return 0.0
    return sum(gain / math.log2(rank + 1) for rank, gain in enumerate(gains, start=1)) / best


@dataclass(frozen=True)
class EvaluationResult:
    """One version's scores on one query set: the mean of each metric over `queries`, and
    how long encoding and searching them took."""

    query_set: str
    queries: int
    recall_at_10: float
    mrr_at_10: float
    ndcg_at_10: float
    seconds: float
    per_query: dict[str, dict[str, float]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def metrics(self) -> dict[str, float]:
        return {"recall@10": self.recall_at_10, "mrr@10": self.mrr_at_10, "ndcg@10": self.ndcg_at_10}

    @property
    def seconds_per_1000_queries(self) -> float:
        return 1000.0 * self.seconds / self.queries if self.queries else 0.0


Encode = Callable[[Sequence[str]], np.ndarray]
Search = Callable[[np.ndarray, int], Sequence[Sequence[Hit]]]


def evaluate(query_set: QuerySet, encode: Encode, search: Search, k: int = DEFAULT_K,
             batch_size: int = 256) -> EvaluationResult:
    """Encode the queries of `query_set` with `encode`, search them with `search` (query
    vectors, top k -> ranked hits per query) and score the hits: recall@k, MRR@k, nDCG@k,
    averaged over the queries (k is 10 in the field names and in `METRICS`)."""
    if k != DEFAULT_K:
        raise ValueError(f"the result names its metrics @{DEFAULT_K}; k={k} is not supported")
    ids = list(query_set.queries)
    per_query: dict[str, dict[str, float]] = {}
    start = time.perf_counter()
    for first in range(0, len(ids), batch_size):
        batch = ids[first:first + batch_size]
        vectors = np.asarray(encode([query_set.queries[query_id] for query_id in batch]), dtype=np.float32)
        for query_id, hits in zip(batch, search(vectors, k), strict=True):
            ranked = [query_set.key(hit) for hit in hits]
            relevance = query_set.qrels[query_id]
            per_query[query_id] = {"recall@10": recall_at_k(ranked, relevance, k),
                                   "mrr@10": mrr_at_k(ranked, relevance, k),
                                   "ndcg@10": ndcg_at_k(ranked, relevance, k)}
    seconds = time.perf_counter() - start

    def mean(metric: str) -> float:
        return float(np.mean([scores[metric] for scores in per_query.values()])) if per_query else 0.0

    return EvaluationResult(query_set.name, len(ids), mean("recall@10"), mean("mrr@10"), mean("ndcg@10"),
                            seconds, per_query)


def metric_deltas(candidate: EvaluationResult, serving: EvaluationResult) -> dict[str, float]:
    """candidate - serving, per metric (positive: the candidate is better)."""
    return {metric: candidate.metrics[metric] - serving.metrics[metric] for metric in METRICS}


def regressions(candidate: EvaluationResult, serving: EvaluationResult, tolerance: float) -> dict[str, float]:
    """The metrics on which the candidate is worse than serving by more than `tolerance`
    (absolute, e.g. 0.01 = one point of recall): metric -> delta (negative)."""
    return {metric: delta for metric, delta in metric_deltas(candidate, serving).items()
            if delta < -tolerance - 1e-12}


# ------------------------------------------------------------ known-item queries


def split_sentences(text: str) -> list[str]:
    """The sentences of a text: cut after ``.``, ``!`` or ``?`` followed by a space and a
    capital, a digit, a quote or a bullet (so "e.g. this" and "3.14" stay whole)."""
    return [sentence.strip() for sentence in _SENTENCE_END.split(text.strip()) if sentence.strip()]


def _order_key(seed: int, partition: str, row_id: str) -> str:
    return hashlib.md5(f"{seed}\x00{partition}\x00{row_id}".encode()).hexdigest()


def known_item_queries(documents: Iterable[tuple[str, str, str]], count: int = KNOWN_ITEM_QUERIES,
                       seed: int = 0) -> QuerySet:
    """Up to `count` known-item queries from `documents` ((partition, id, text) each): for a
    document, one of its sentences, drawn with `seed`, is the query and the document the
    one relevant answer.

    Documents are taken in the order of an md5 of (seed, partition, id): the same corpus
    gives the same queries, whatever order it is read in. A document is skipped when it
    has a single sentence (the query would be the whole text, which every version finds
    at similarity ~1.0: it would measure nothing) or no sentence of at least
    `MIN_QUERY_WORDS` words (a short one names no document)."""
    ordered = sorted(documents, key=lambda document: _order_key(seed, document[0], document[1]))
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for partition, row_id, text in ordered:
        if len(queries) == count:
            break
        sentences = split_sentences(text or "")
        usable = [sentence for sentence in sentences if len(sentence.split()) >= MIN_QUERY_WORDS]
        if len(sentences) < 2 or not usable:
            continue
        pick = int(_order_key(seed + 1, partition, row_id), 16) % len(usable)
        query_id = f"q{len(queries)}"
        queries[query_id] = usable[pick]
        qrels[query_id] = {document_key(partition, row_id): 1}
    return QuerySet(f"known-item (seed {seed})", queries, qrels, by_partition=True)


def store_known_item_queries(store, count: int = KNOWN_ITEM_QUERIES, seed: int = 0) -> QuerySet:
    """`known_item_queries` from the current corpus of `store` (its `documents` view): reads
    the documents in md5 order, a window at a time, until `count` queries are made or the
    corpus ends (no more than it needs of a large corpus)."""
    order = "md5(?::VARCHAR || chr(0) || partition || chr(0) || id)"
    window, offset = max(4 * count, 256), 0
    documents: list[tuple[str, str, str]] = []
    with store.connect() as con:
        while True:
            rows = con.execute(f"SELECT partition, id, text FROM documents ORDER BY {order}, partition, id "
                               "LIMIT ? OFFSET ?", [str(seed), window, offset]).fetchall()
            documents += rows
            offset += len(rows)
            found = known_item_queries(documents, count, seed)
            if len(found) == count or len(rows) < window:
                return found
            window *= 2


# ------------------------------------------------------------------ BEIR sets


class BeirFormatError(ValueError):
    """A file of a BEIR-format folder cannot be read; the message names the file and line."""


def _jsonl(path: Path, required: Sequence[str]) -> Iterable[tuple[int, dict]]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise BeirFormatError(f"{path} line {number}: not JSON ({error.msg}): {line.strip()[:80]!r}") from None
            if not isinstance(record, dict) or any(name not in record for name in required):
                raise BeirFormatError(f"{path} line {number}: expected an object with {list(required)}, "
                                      f"got {line.strip()[:80]!r}")
            yield number, record


def _qrels_file(folder: Path, split: str) -> Path:
    qrels = folder / "qrels"
    wanted = qrels / f"{split}.tsv"
    if wanted.is_file():
        return wanted
    found = sorted(qrels.glob("*.tsv")) if qrels.is_dir() else []
    if len(found) == 1:
        return found[0]
    raise BeirFormatError(f"{folder}: no qrels/{split}.tsv (found {[path.name for path in found]}); "
                          "a BEIR folder holds queries.jsonl and qrels/<split>.tsv")


def load_beir(folder: str | Path, split: str = "test") -> QuerySet:
    """A BEIR-format query set: ``queries.jsonl`` (``{"_id", "text"}`` a line),
    ``qrels/<split>.tsv`` (``query-id<TAB>corpus-id<TAB>score``, a header line first; the only
    ``.tsv`` there when `split` has none) and, optionally, ``corpus.jsonl``.

    The corpus ids of the qrels are the store's document ids (the `id` column of
    `documents`): land the BEIR corpus as a landing file with its ``_id`` as ``id``. When
    the store gave the documents other ids, ``corpus.jsonl`` maps them: a line's
    ``"store_id"`` (default its ``_id``) is the id the store holds; a qrel naming a corpus id
    it lacks is an error. Queries with no judgement in the split are left out. A malformed
    line raises `BeirFormatError` naming the file and line."""
    folder = Path(folder)
    queries_path = folder / "queries.jsonl"
    if not queries_path.is_file():
        raise BeirFormatError(f"{folder}: no queries.jsonl; a BEIR folder holds queries.jsonl and qrels/<split>.tsv")
    texts = {str(record["_id"]): str(record["text"]) for _, record in _jsonl(queries_path, ("_id", "text"))}
    corpus_path = folder / "corpus.jsonl"
    store_ids = ({str(record["_id"]): str(record.get("store_id", record["_id"]))
                  for _, record in _jsonl(corpus_path, ("_id",))} if corpus_path.is_file() else None)
    qrels_path = _qrels_file(folder, split)
    qrels: dict[str, dict[str, int]] = {}
    with qrels_path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            fields = line.rstrip("\n").split("\t")
            if not line.strip() or (number == 1 and fields[0] == "query-id"):
                continue
            if len(fields) != 3:
                raise BeirFormatError(f"{qrels_path} line {number}: expected query-id<TAB>corpus-id<TAB>score, "
                                      f"got {line.strip()[:80]!r}")
            query_id, corpus_id, score = fields
            try:
                grade = int(score)
            except ValueError:
                raise BeirFormatError(f"{qrels_path} line {number}: score {score!r} is not an integer") from None
            if store_ids is not None:
                if corpus_id not in store_ids:
                    raise BeirFormatError(f"{qrels_path} line {number}: corpus id {corpus_id!r} is not in "
                                          f"{corpus_path}")
                corpus_id = store_ids[corpus_id]
            if query_id not in texts:
                raise BeirFormatError(f"{qrels_path} line {number}: query id {query_id!r} is not in {queries_path}")
            qrels.setdefault(query_id, {})[corpus_id] = grade
    judged = {query_id: text for query_id, text in texts.items() if query_id in qrels}
    return QuerySet(f"BEIR {folder.name} ({qrels_path.stem})", judged, qrels)
