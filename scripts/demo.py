"""`make demo`: the whole graph on the bundled sample corpus and model, then a search.

    .venv/bin/python scripts/demo.py ["your own query" ...]

Materializes model_snapshot, then corpus + embeddings for every file of the sample corpus
(embedding_assets/sample_corpus) into ./store, recording the runs in the project's Dagster
instance (./.dagster_home, so `make dev` shows them), and prints where the catalog is and
the best hits for a few queries. Run it again: nothing is re-encoded.
"""

import os
import shutil
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
QUERIES = ["how do I read a file line by line", "parse command line arguments",
           "asynchronous HTTP client"]


def main(queries: list[str]) -> int:
    os.environ.setdefault("DAGSTER_HOME", str(PROJECT / ".dagster_home"))
    os.environ.setdefault("EMBEDDING_STORE_ROOT", str(PROJECT / "store"))
    instance_settings = Path(os.environ["DAGSTER_HOME"]) / "dagster.yaml"
    if not instance_settings.exists():
        instance_settings.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROJECT / "dagster.yaml", instance_settings)

    from embedding_assets.backfill import main as backfill
    from embedding_core.snapshot import load_snapshot_model
    from embedding_core.store import EmbeddingStore

    status = backfill([])
    if status != 0:
        return status
    store = EmbeddingStore.from_env()
    with store.connect() as con:
        rows, partitions = con.execute(
            "SELECT count(*), count(DISTINCT partition) FROM embeddings").fetchone()
    print(f"\nStore:   {store.root}\nCatalog: {store.catalog_label} "
          f"({rows} vectors in {partitions} partitions; views `embeddings`, `documents`)")
    (snapshot,) = store.current_model_snapshots()
    model = load_snapshot_model(snapshot)  # once, for every query
    prompt_name = "query" if "query" in snapshot.prompts else None
    vectors = model.encode(queries, prompt_name=prompt_name, show_progress_bar=False)
    for query, vector in zip(queries, vectors, strict=True):
        hits = store.search(vector, snapshot.model, top_k=3, similarity_fn=snapshot.similarity_fn)
        print(f"\nQuery: {query!r}  ({snapshot.model})")
        for hit in hits:
            print(f"  {hit.score:.3f}  [{hit.partition}] {' '.join((hit.text or '').split())[:110]}")
    print("\nMore: .venv/bin/embedding-search \"your query\" --store store    |    make dev  (Dagster UI)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or QUERIES))
