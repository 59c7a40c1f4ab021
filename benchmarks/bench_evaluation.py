"""What the retrieval evaluation of a rollout costs (`embedding_core.rollout`), next to
embedding the corpus it judges.

Embeds the whole sample corpus into a fresh store (or uses `--store`), builds the serving
version's vector index, then times: making the known-item queries from the corpus, and
evaluating the serving version on them (encode each query with its snapshot, search its
index, score recall/MRR/nDCG@10), also by exact scans. The promotion gate evaluates two
versions (candidate and serving): twice the per-version figure.

    .venv/bin/python benchmarks/bench_evaluation.py [--queries 300] [--store DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from embedding_assets.definitions import SAMPLE_CORPUS_DIR  # noqa: E402
from embedding_core.evaluation import evaluate, store_known_item_queries
from embedding_core.hub import DEFAULT_MODEL_NAME
from embedding_core.landing import LandingFolder
from embedding_core.rollout import evaluate_version, query_session, version_model
from embedding_core.snapshot import EncoderConfig
from embedding_core.store import EmbeddingStore


def fill(store: EmbeddingStore, config: EncoderConfig) -> float:
    """The sample corpus stored and embedded (the serving version of a fresh store); seconds."""
    start = time.perf_counter()
    folder = LandingFolder(SAMPLE_CORPUS_DIR)
    snapshot = store.record_model_snapshot(config.resolve())
    params = config.params(snapshot)
    with config.session(snapshot, params) as session:
        for key, file in folder.files().items():
            corpus = store.write_corpus(key, folder.read(file).table)
            store.write_embeddings(key, corpus, snapshot, params, session.encode)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--store", help="an embedded store to use (default: a fresh one of the sample corpus)")
    args = parser.parse_args()
    config = EncoderConfig(DEFAULT_MODEL_NAME, device="cpu")
    store = EmbeddingStore(args.store or os.path.join(tempfile.mkdtemp(), "store"))
    if not store.version_sets():
        print(f"embedded the sample corpus in {fill(store, config):.1f} s ({config.resolved_backend})")
    start = time.perf_counter()
    store.build_vector_indexes()
    print(f"vector index built in {time.perf_counter() - start:.1f} s")
    serving = store.serving_version(DEFAULT_MODEL_NAME)
    print(f"serving {serving.key}: {serving.rows:,} rows in {serving.partitions_total} partitions")

    start = time.perf_counter()
    queries = store_known_item_queries(store, args.queries)
    made = time.perf_counter() - start
    print(f"{len(queries)} known-item queries made in {made:.2f} s")

    (indexed,) = evaluate_version(store, serving, config, [queries])
    snapshot = version_model(store, serving)
    exact_searcher = store.searcher(serving.model, snapshot.similarity_fn, exact=True, version=serving.key)
    with query_session(replace(config), snapshot, serving) as session:
        session.encode(["warm-up"])
        exact = evaluate(queries, session.encode, lambda vectors, k: exact_searcher.search_batch(vectors, k))
    for name, result in (("index", indexed), ("exact scan", exact)):
        print(f"{name:>10}: recall@10 {result.recall_at_10:.4f}  MRR@10 {result.mrr_at_10:.4f}  "
              f"nDCG@10 {result.ndcg_at_10:.4f}  {result.seconds:.2f} s = "
              f"{result.seconds_per_1000_queries:.1f} s per 1,000 queries")
    gate = 2 * (indexed.seconds + made)
    print(f"the gate (candidate + serving, index): ~{gate:.1f} s for {len(queries)} queries; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
