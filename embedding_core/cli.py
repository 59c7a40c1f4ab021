"""`embedding-search`: semantic search over an embedding store from the command line.

    embedding-search "how do I read a file line by line" --store store --top-k 5

Encodes the query with the store's current model snapshot (its `query` prompt when it has
one) and ranks the current vectors of that model with DuckDB.

`embedding-store verify` checks the store's data files (exit status 1 when one is damaged):

    embedding-store verify --store store [--read-rows] [--json]
"""

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence

from embedding_core.fs import default_store_root, is_uri
from embedding_core.snapshot import load_snapshot_model
from embedding_core.store import CATALOG_FILE_NAME, EmbeddingStore, ModelSnapshot, SearchHit


def search(store: EmbeddingStore, query: str, model_key: str | None = None, top_k: int = 5,
           prompt_name: str | None = None, device: str | None = None,
           exact: bool = False, by_chunk: bool = False) -> tuple[ModelSnapshot, list[SearchHit], bool]:
    """Encode `query` with the store's model (or `model_key`'s) and return the best hits, and
    whether the vector index answered (else every stored vector was scanned)."""
    snapshot = _pick_snapshot(store, model_key)
    model = load_snapshot_model(snapshot, device=device)
    if prompt_name is None and "query" in snapshot.prompts:
        prompt_name = "query"
    query_vector = model.encode([query], prompt_name=prompt_name, show_progress_bar=False)[0]
    searcher = store.searcher(snapshot.model, snapshot.similarity_fn, exact=exact, by_chunk=by_chunk)
    return snapshot, searcher.search(query_vector, top_k), searcher.uses_index


def _pick_snapshot(store: EmbeddingStore, model_key: str | None) -> ModelSnapshot:
    if model_key is not None:
        snapshot = store.current_model_snapshot(model_key)
        if snapshot is None:
            known = [s.model_key for s in store.current_model_snapshots()]
            raise SystemExit(f"no model {model_key!r} in {store.catalog_label}; known: {known}")
        return snapshot
    snapshots = store.current_model_snapshots()
    if len(snapshots) != 1:
        raise SystemExit(
            f"{store.catalog_label} holds {len(snapshots)} models "
            f"{[s.model_key for s in snapshots]}; choose one with --model"
        )
    return snapshots[0]


def positive_int(value: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="embedding-search", description=__doc__.split("\n\n")[0])
    parser.add_argument("query", help="the text to search for")
    _store_arguments(parser)
    parser.add_argument("--model", help="model name as configured, when the store holds several")
    parser.add_argument("--top-k", type=positive_int, default=5, help="how many hits (default: 5)")
    parser.add_argument("--prompt-name", help="encode the query with this prompt of the model")
    parser.add_argument("--device", help="cpu, cuda, ... (default: best available)")
    parser.add_argument("--json", action="store_true", help="one JSON object per hit")
    parser.add_argument("--exact", action="store_true",
                        help="scan every stored vector instead of using the vector index")
    parser.add_argument("--by-chunk", action="store_true",
                        help="the best chunks (several of one document), not the best documents")
    args = parser.parse_args(argv)
    store = _open_store(parser, args, "; run `make demo` or materialize first")
    snapshot, hits, indexed = search(store, args.query, args.model, args.top_k, args.prompt_name, args.device,
                                     args.exact, args.by_chunk)
    if args.json:
        for hit in hits:
            print(json.dumps({"score": hit.score, "id": hit.id, "partition": hit.partition, "text": hit.text,
                              "chunk": hit.chunk, "char_start": hit.char_start, "char_end": hit.char_end}))
        return 0
    print(f"{snapshot.model}@{snapshot.revision[:19]}  catalog: {store.catalog_label}  "
          f"({'vector index' if indexed else 'exact scan'})")
    for rank, hit in enumerate(hits, start=1):
        text = " ".join((hit.text or "").split())
        span = f" chunk {hit.chunk} (chars {hit.char_start}-{hit.char_end})" if hit.char_start is not None else ""
        print(f"{rank:>2}. {hit.score:.4f}  [{hit.partition}] {hit.id}{span}\n    {text[:160]}")
    return 0


def _store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default=default_store_root(),
                        help="store root folder or URI (default: $EMBEDDING_STORE_ROOT, else store/ "
                        "in the project folder)")
    parser.add_argument("--catalog", default=os.environ.get("EMBEDDING_CATALOG"),
                        help="DuckDB catalog file or postgres:<libpq string> (default: "
                        "$EMBEDDING_CATALOG, else the file under a local store; needed for s3://)")


def _open_store(parser: argparse.ArgumentParser, args: argparse.Namespace, hint: str = "") -> EmbeddingStore:
    """The store `--store`/`--catalog` name; a usage error when a local store has no catalog."""
    if not is_uri(args.store) and not args.catalog and not os.path.isfile(
            os.path.join(args.store, CATALOG_FILE_NAME)):
        parser.error(f"no embedding catalog under {args.store!r}{hint}")
    return EmbeddingStore(args.store, catalog=args.catalog)


def store_main(argv: Sequence[str] | None = None) -> int:
    """`embedding-store verify`: name damaged data files and the partitions they take down."""
    parser = argparse.ArgumentParser(prog="embedding-store", description="Check an embedding store.")
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="check that every data file exists, has its recorded "
                                 "size and a readable Parquet footer; exit status 1 when one is damaged")
    _store_arguments(verify)
    verify.add_argument("--read-rows", action="store_true", help="also read every row (reads the whole lake)")
    verify.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = parser.parse_args(argv)
    store = _open_store(parser, args)
    report = store.verify(read_rows=args.read_rows)
    if args.json:
        print(json.dumps(dataclasses.asdict(report)))
    else:
        print(f"{store.catalog_label}: {report.files_checked} data files checked, "
              f"{len(report.damaged_files)} damaged")
        for file in report.damaged_files:
            print(f"  {file.path}  [{file.table}; partitions {', '.join(file.partitions) or '-'}"
                  f"{'; current' if file.current else ''}]: {file.problem}")
        if report.damaged_partitions:
            print(f"damaged partitions (materialize them again to repair): {', '.join(report.damaged_partitions)}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
