"""`make demo`: the whole graph on the bundled sample corpus and model, then a search.

    .venv/bin/python scripts/demo.py ["your own query" ...]

Materializes model_snapshot, then corpus + embeddings for every file of the sample corpus
(embedding_assets/sample_corpus) into ./store, then the vector index (the index_vectors job),
recording the runs in the project's Dagster instance (./.dagster_home, so `make dev` shows
them), and prints where the catalog is, how many texts of each file the encoder cuts (longer
than the model's max_seq_length) and how many chunks chunking would make of them, and the
best hits for a few queries, found through the index. Run it again: nothing is re-encoded,
the index is left as it is. With EMBEDDING_CHUNK_TOKENS (and EMBEDDING_CHUNK_OVERLAP) set,
texts are stored as chunks and each hit shows its chunk's span.
"""

import os
import shutil
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
QUERIES = ["how do I read a file line by line", "parse command line arguments",
           "asynchronous HTTP client"]
# The window the demo suggests (and counts): with MiniLM, 128/32 found 93.2% of held-out
# sentences of long documents in the top 10, 256/32 89.5% (docs/performance.md).
DEMO_CHUNK_TOKENS, DEMO_CHUNK_OVERLAP = 128, 32


def main(queries: list[str]) -> int:
    os.environ.setdefault("DAGSTER_HOME", str(PROJECT / ".dagster_home"))
    os.environ.setdefault("EMBEDDING_STORE_ROOT", str(PROJECT / "store"))
    instance_settings = Path(os.environ["DAGSTER_HOME"]) / "dagster.yaml"
    if not instance_settings.exists():
        instance_settings.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROJECT / "dagster.yaml", instance_settings)

    from embedding_assets.backfill import main as backfill
    from embedding_core.chunking import ChunkingParams, chunk_texts
    from embedding_core.snapshot import load_snapshot_model
    from embedding_core.store import EmbeddingStore
    from embedding_core.truncation import truncation_report

    status = backfill([])
    if status != 0:
        return status
    index = build_vector_index()
    if index is None:
        return 1
    store = EmbeddingStore.from_env()
    with store.connect() as con:
        rows, partitions = con.execute(
            "SELECT count(*), count(DISTINCT partition) FROM embeddings").fetchone()
    print(f"\nStore:   {store.root}\nCatalog: {store.catalog_label} "
          f"({rows} vectors in {partitions} partitions; views `embeddings`, `documents`, `document_embeddings`)")
    (snapshot,) = store.current_model_snapshots()
    model = load_snapshot_model(snapshot)  # once, for every query
    prompt_name = "query" if "query" in snapshot.prompts else None
    vectors = model.encode(queries, prompt_name=prompt_name, show_progress_bar=False)
    searcher = store.searcher(snapshot.model, snapshot.similarity_fn)  # the vector index, opened once
    print(f"Index:   {index['dagster/row_count'].value} vectors, {index['mode'].value}, recall@10 "
          f"{index['recall_at_10'].value:.3f} against exact search ({index['index_file'].value})"
          if searcher.uses_index else "Index:   none usable, exact search")
    chunking = ChunkingParams.from_env(os.environ, model.max_seq_length)
    print(f"\nTexts longer than {model.max_seq_length} tokens, "
          + (f"split into chunks of {chunking.tokens} tokens ({chunking.overlap} shared)" if chunking else
             "cut by the encoder") + " (embeddings metadata, check texts_fit_max_seq_length):")
    shown = chunking or ChunkingParams(DEMO_CHUNK_TOKENS, DEMO_CHUNK_OVERLAP)
    for partition in store.corpus_partitions():
        texts = store.read_corpus(store.corpus_version(partition)).column("text").to_pylist()
        cut = truncation_report(model, texts)
        chunks = len(chunk_texts(model, texts, shown))
        print(f"  {partition}: {cut.truncated_texts:,} of {cut.texts:,} texts ({cut.truncated_share:.1%}), "
              f"{cut.dropped_token_share:.1%} of all its tokens {'in later chunks' if chunking else 'dropped'}; "
              f"{chunks:,} chunks of {shown.tokens} tokens{'' if chunking else ' with chunking on'}")
    if chunking is None:
        print(f"  Nothing cut: EMBEDDING_CHUNK_TOKENS={DEMO_CHUNK_TOKENS} EMBEDDING_CHUNK_OVERLAP="
              f"{DEMO_CHUNK_OVERLAP} make demo  (a new version beside this one; search returns each "
              "document by its best chunk)")
    for query, vector in zip(queries, vectors, strict=True):
        hits = searcher.search(vector, top_k=3)
        print(f"\nQuery: {query!r}  ({snapshot.model}, {'vector index' if searcher.uses_index else 'exact scan'})")
        for hit in hits:
            span = f" chars {hit.char_start}-{hit.char_end}" if hit.char_start is not None else ""
            print(f"  {hit.score:.3f}  [{hit.partition}] {hit.id}{span}: {' '.join((hit.text or '').split())[:90]}")
    print("\nMore: .venv/bin/embedding-search \"your query\" --store store    |    make dev  (Dagster UI)")
    return 0


def build_vector_index():
    """Materialize `vector_index` (the index_vectors job) in the project's instance; its
    materialization's metadata, or None when the run failed."""
    from dagster import DagsterInstance

    from embedding_assets.definitions import defs

    with DagsterInstance.get() as instance:
        result = defs.resolve_job_def("index_vectors").execute_in_process(instance=instance, raise_on_error=False)
    if not result.success:
        print("the index_vectors run failed: see it in the Dagster UI (make dev)", file=sys.stderr)
        return None
    (materialization,) = result.asset_materializations_for_node("vector_index")
    return materialization.metadata


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or QUERIES))
