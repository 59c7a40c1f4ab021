"""Retrieval metrics against hand-computed values, known-item queries from a real corpus,
the BEIR loader, and an evaluation with the bundled model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from embedding_core.corpus import read_corpus_file
from embedding_core.evaluation import (
    MIN_QUERY_WORDS,
    BeirFormatError,
    EvaluationResult,
    QuerySet,
    document_key,
    evaluate,
    known_item_queries,
    load_beir,
    metric_deltas,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
    regressions,
    split_sentences,
    store_known_item_queries,
)
from embedding_core.store import EmbeddingStore, SearchHit

SAMPLE_DOCS = Path(__file__).parents[2] / "embedding_assets" / "sample_corpus" / "python_docs.jsonl"


def sample_documents(rows: int = 200) -> list[tuple[str, str, str]]:
    table = read_corpus_file(str(SAMPLE_DOCS)).table.slice(0, rows)
    return [("python_docs.jsonl", row_id, text)
            for row_id, text in zip(table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True)]


# ------------------------------------------------------------------ metrics


def test_binary_relevance_metrics_match_hand_computed_values():
    ranked = ["a", "b", "c", "d"]
    relevance = {"b": 1, "d": 1, "z": 1}  # z is never found
    assert recall_at_k(ranked, relevance) == pytest.approx(2 / 3)
    assert mrr_at_k(ranked, relevance) == pytest.approx(1 / 2)
    # DCG = 1/log2(3) + 1/log2(5) = 1.061606; ideal = 1 + 1/log2(3) + 1/log2(4) = 2.130930
    assert ndcg_at_k(ranked, relevance) == pytest.approx(0.498189, abs=1e-6)


def test_graded_relevance_counts_the_grade_as_gain():
    ranked = ["a", "b", "c"]
    relevance = {"a": 1, "b": 0, "c": 3, "d": 2}  # b judged not relevant
    # DCG = 1/1 + 0 + 3/log2(4) = 2.5; ideal order c, d, a: 3 + 2/log2(3) + 1/2 = 4.761860
    assert ndcg_at_k(ranked, relevance) == pytest.approx(0.525005, abs=1e-6)
    assert recall_at_k(ranked, relevance) == pytest.approx(2 / 3)
    assert mrr_at_k(ranked, relevance) == 1.0
    assert ndcg_at_k(["c", "d", "a"], relevance) == pytest.approx(1.0)


def test_only_the_top_ten_count_and_a_repeated_document_counts_once():
    ranked = [f"other-{i}" for i in range(10)] + ["wanted"]
    assert (recall_at_k(ranked, {"wanted": 1}), mrr_at_k(ranked, {"wanted": 1}),
            ndcg_at_k(ranked, {"wanted": 1})) == (0.0, 0.0, 0.0)
    # Two chunks of "a" found first: "b" is the second document, not the third.
    assert mrr_at_k(["a", "a", "b"], {"b": 1}) == 0.5
    assert ndcg_at_k(["a", "a", "b"], {"b": 1}) == pytest.approx(1 / math.log2(3))


def test_nothing_relevant_scores_zero():
    assert (recall_at_k(["a"], {"a": 0}), mrr_at_k(["a"], {}), ndcg_at_k(["a"], {"a": 0})) == (0.0, 0.0, 0.0)


def test_regressions_are_the_metrics_worse_by_more_than_the_tolerance():
    serving = EvaluationResult("q", 100, 0.90, 0.80, 0.85, 1.0)
    candidate = EvaluationResult("q", 100, 0.895, 0.70, 0.85, 1.0)
    assert metric_deltas(candidate, serving) == pytest.approx({"recall@10": -0.005, "mrr@10": -0.10, "ndcg@10": 0.0})
    assert regressions(candidate, serving, tolerance=0.01) == pytest.approx({"mrr@10": -0.10})
    assert regressions(candidate, serving, tolerance=0.2) == {}
    assert regressions(candidate, serving, tolerance=0.0) == pytest.approx({"recall@10": -0.005, "mrr@10": -0.10})
    assert serving.seconds_per_1000_queries == 10.0


# ------------------------------------------------------------ known-item queries


def test_sentences_split_at_sentence_ends_only():
    assert split_sentences("Use e.g. this. It costs 3.14 units! Why? (Nobody knows.)") == [
        "Use e.g. this.", "It costs 3.14 units!", "Why?", "(Nobody knows.)"]


def test_known_item_queries_are_sentences_of_their_multi_sentence_document():
    documents = sample_documents()
    queries = known_item_queries(documents, count=40, seed=0)
    texts = {document_key(partition, row_id): text for partition, row_id, text in documents}
    assert len(queries) == 40 and queries.by_partition
    for query_id, query in queries.queries.items():
        (relevant, grade), = queries.qrels[query_id].items()
        assert grade == 1
        assert query in texts[relevant]
        assert len(split_sentences(texts[relevant])) >= 2
        assert len(query.split()) >= MIN_QUERY_WORDS
    # Single-sentence documents are never asked for.
    single = {document_key(p, i) for p, i, text in documents if len(split_sentences(text)) < 2}
    assert single and not single & {key for qrel in queries.qrels.values() for key in qrel}


def test_known_item_queries_depend_on_the_seed_not_the_reading_order():
    documents = sample_documents()
    first = known_item_queries(documents, count=30, seed=0)
    assert known_item_queries(list(reversed(documents)), count=30, seed=0) == first
    assert known_item_queries(documents, count=30, seed=1) != first
    # A grown corpus keeps most of the queries: the order is a hash of each document's key.
    grown = known_item_queries(documents + [("more.jsonl", f"x{i}", "One sentence here. And a second "
                                                                      "sentence of several words.")
                                            for i in range(5)], count=30, seed=0)
    assert len(set(grown.queries.values()) & set(first.queries.values())) >= 25


def test_known_item_queries_of_a_store_are_those_of_its_documents(tmp_path):
    store = EmbeddingStore(tmp_path / "store")
    table = read_corpus_file(str(SAMPLE_DOCS)).table.slice(0, 120)
    store.write_corpus("python_docs.jsonl", table)
    from_store = store_known_item_queries(store, count=25, seed=3)
    assert from_store == known_item_queries(sample_documents(120), count=25, seed=3)
    # More than the corpus can give: every usable document, once.
    everything = store_known_item_queries(store, count=10_000, seed=3)
    usable = known_item_queries(sample_documents(120), count=10_000, seed=3)
    assert everything == usable and 25 < len(everything) < 120


# ------------------------------------------------------------------ BEIR sets


def write_beir(folder: Path, qrels: str, corpus: list[dict] | None = None,
               queries: list[dict] | None = None) -> Path:
    (folder / "qrels").mkdir(parents=True)
    queries = queries or [{"_id": "q1", "text": "how do I sort a list"},
                          {"_id": "q2", "text": "read a file line by line"},
                          {"_id": "q3", "text": "a query judged only in train"}]
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "qrels" / "test.tsv").write_text(qrels)
    if corpus is not None:
        (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    return folder


def test_beir_folder_loads_judged_queries_with_graded_qrels(tmp_path):
    folder = write_beir(tmp_path / "beir", "query-id\tcorpus-id\tscore\nq1\tdoc-sort\t2\nq1\tdoc-list\t1\n"
                                           "q2\tdoc-io\t1\nq2\tdoc-sort\t0\n")
    queries = load_beir(folder)
    assert queries.queries == {"q1": "how do I sort a list", "q2": "read a file line by line"}
    assert queries.qrels == {"q1": {"doc-sort": 2, "doc-list": 1}, "q2": {"doc-io": 1, "doc-sort": 0}}
    assert not queries.by_partition and queries.name == "BEIR beir (test)"
    # A hit is matched by its store id, in whichever partition it is.
    assert queries.key(SearchHit(0.9, "doc-io", "any-file.jsonl", None)) == "doc-io"


def test_beir_corpus_maps_its_ids_to_store_ids(tmp_path):
    folder = write_beir(tmp_path / "beir", "query-id\tcorpus-id\tscore\nq1\t7\t1\n",
                        corpus=[{"_id": "7", "title": "Sorting", "text": "...", "store_id": "beir-7"},
                                {"_id": "8", "text": "..."}])
    assert load_beir(folder).qrels == {"q1": {"beir-7": 1}}
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\t8\t1\nq2\t9\t1\n")
    with pytest.raises(BeirFormatError, match=r"test.tsv line 3: corpus id '9' is not in .*corpus.jsonl"):
        load_beir(folder)


@pytest.mark.parametrize(("qrels", "queries_line", "message"), [
    ("q1\tdoc\t1\nq2\tdoc\n", None, r"qrels/test.tsv line 2: expected query-id<TAB>corpus-id<TAB>score, got 'q2\\tdoc'"),
    ("q1\tdoc\thigh\n", None, r"qrels/test.tsv line 1: score 'high' is not an integer"),
    ("q9\tdoc\t1\n", None, r"qrels/test.tsv line 1: query id 'q9' is not in .*queries.jsonl"),
    ("q1\tdoc\t1\n", '{"_id": "q2", "text": "fine"}\n{"_id": "q3" "text": "no comma"}\n',
     r"queries.jsonl line 2: not JSON \(Expecting ',' delimiter\)"),
    ("q1\tdoc\t1\n", '{"_id": "q1"}\n', r"queries.jsonl line 1: expected an object with \['_id', 'text'\]"),
])
def test_a_malformed_beir_line_is_named(tmp_path, qrels, queries_line, message):
    folder = write_beir(tmp_path / "beir", qrels)
    if queries_line is not None:
        (folder / "queries.jsonl").write_text(queries_line)
    with pytest.raises(BeirFormatError, match=message):
        load_beir(folder)


def test_a_folder_without_the_split_names_what_it_has(tmp_path):
    folder = write_beir(tmp_path / "beir", "q1\tdoc\t1\n")
    (folder / "qrels" / "train.tsv").write_text("q3\tdoc\t1\n")
    (folder / "qrels" / "test.tsv").rename(folder / "qrels" / "dev.tsv")
    with pytest.raises(BeirFormatError, match=r"no qrels/test.tsv \(found \['dev.tsv', 'train.tsv'\]\)"):
        load_beir(folder)
    assert load_beir(folder, split="train").queries == {"q3": "a query judged only in train"}


# ------------------------------------------------------------------ evaluate


def test_evaluate_scores_a_real_encoder_and_exact_search(bundled_model_path):
    from embedding_core import SentenceTransformer

    model = SentenceTransformer(bundled_model_path, device="cpu")
    documents = sample_documents(60)
    vectors = model.encode([text for _, _, text in documents], normalize_embeddings=True)

    def search(queries: np.ndarray, k: int) -> list[list[SearchHit]]:
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        order = np.argsort(-(queries @ vectors.T), axis=1)[:, :k]
        return [[SearchHit(0.0, documents[i][1], documents[i][0], None) for i in row] for row in order]

    queries = known_item_queries(documents, count=20)
    result = evaluate(queries, model.encode, search)
    assert result.queries == 20 and result.query_set == "known-item (seed 0)"
    per_query = result.per_query.values()
    assert result.mrr_at_10 == pytest.approx(np.mean([scores["mrr@10"] for scores in per_query]))
    # A sentence of a document finds it among 60 Python-doc paragraphs, nearly always first.
    assert result.recall_at_10 >= 0.9 and result.mrr_at_10 >= 0.8
    assert result.mrr_at_10 <= result.ndcg_at_10 <= result.recall_at_10  # one relevant document each
    assert result.seconds > 0

    # Searching the wrong documents finds nothing.
    shuffled = QuerySet("shifted", queries.queries,
                        {q: {document_key("python_docs.jsonl", "nowhere"): 1} for q in queries.queries},
                        by_partition=True)
    assert evaluate(shuffled, model.encode, search).metrics == {"recall@10": 0.0, "mrr@10": 0.0, "ndcg@10": 0.0}
