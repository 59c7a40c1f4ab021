"""`embedding-search`: semantic search over an embedding store from the command line.

    embedding-search "how do I read a file line by line" --store store --top-k 5

Searches the serving version of the store's model (`--version KEY`: a candidate version
set instead) and encodes the query with that version's own snapshot and parameters (its
revision, normalization, truncation, backend; the model's `query` prompt when it has one),
not with whatever model is configured now; the first line names the version it serves.

`embedding-store` checks a store and manages the version sets of its models:

    embedding-store verify --store store [--read-rows] [--json]
    embedding-store versions [--model M] [--json]         # coverage, serving flag, metrics
    embedding-store promote KEY [--force] [--reason TEXT] # KEY serves its model from now on
    embedding-store rollback [--model M] [--reason TEXT]  # the version that served before
"""

import argparse
import dataclasses
import json
import os
import shlex
import sys
from collections.abc import Sequence

from embedding_core.fs import default_store_root, is_uri
from embedding_core.hub import folder_content_hash
from embedding_core.landing import bucket_count, bucket_of
from embedding_core.store import (
    CATALOG_FILE_NAME,
    EmbeddingStore,
    ModelSnapshot,
    Promotion,
    SearchHit,
    VerifyReport,
    VersionError,
    VersionSet,
)


def search(store: EmbeddingStore, query: str, model_key: str | None = None, top_k: int = 5,
           prompt_name: str | None = None, device: str | None = None, exact: bool = False,
           by_chunk: bool = False, version: str | None = None
           ) -> tuple[ModelSnapshot, VersionSet, list[SearchHit], bool]:
    """Encode `query` as the serving version of the store's model (or `model_key`'s) was
    encoded (or version set `version`'s), and return the snapshot that encoded it, the
    version searched, the best hits, and whether the vector index answered (else every
    stored vector was scanned)."""
    model_name = _pick_snapshot(store, model_key).model
    chosen = _pick_version(store, model_name, version)
    snapshot = store.version_snapshot(chosen)
    if snapshot is None:
        raise SystemExit(f"version {chosen.key} of {model_name} has no recorded model snapshot of revision "
                         f"{chosen.revision}: materialize model_snapshot at that revision")
    if snapshot.source in ("local", "bundled") and os.path.isdir(snapshot.path):
        found = folder_content_hash(snapshot.path)
        if found != snapshot.revision:  # the folder changed since: its files are another revision
            raise SystemExit(f"version {chosen.key} of {model_name} holds vectors of revision {snapshot.revision}, "
                             f"but {snapshot.path} now holds revision {found}: the query cannot be encoded as "
                             "they were (promote a version of the new revision, or restore the folder)")
    params = chosen.embedding_params
    model = _load_for(snapshot, params.backend, device)
    if params.max_seq_length is not None:
        model.max_seq_length = params.max_seq_length
    if prompt_name is None and "query" in snapshot.prompts:
        prompt_name = "query"
    query_vector = model.encode([query], prompt_name=prompt_name, normalize_embeddings=params.normalize_embeddings,
                                truncate_dim=params.truncate_dim, show_progress_bar=False)[0]
    searcher = store.searcher(model_name, snapshot.similarity_fn, exact=exact, by_chunk=by_chunk,
                              version=chosen.key, snapshot=snapshot)
    return snapshot, chosen, searcher.search(query_vector, top_k), searcher.uses_index


def _pick_version(store: EmbeddingStore, model: str, key: str | None) -> VersionSet:
    """The serving version set of `model`, or the one keyed `key`."""
    try:
        chosen = store.version_set(key, model) if key is not None else store.serving_version(model)
    except VersionError as error:
        raise SystemExit(str(error)) from None
    if chosen is None:
        raise SystemExit(f"{model} has no embeddings in {store.catalog_label}; materialize embeddings first")
    if chosen.dtype != "float32":
        raise SystemExit(f"version {chosen.key} of {model} stores {chosen.params.get('precision')} vectors; "
                         "search reads float32 versions only")
    return chosen


def _load_for(snapshot: ModelSnapshot, backend: str | None, device: str | None):
    """The snapshot's model on the version's backend (a lossy one, when it runs here; the
    exact one otherwise: its vectors are what the lossy one approximates)."""
    # torch loads here, to encode a query: the store's commands never import it
    from embedding_core.snapshot import load_snapshot_model

    if backend is not None:
        try:
            return load_snapshot_model(snapshot, device=device, backend=backend)
        except (RuntimeError, ValueError, ImportError) as error:
            print(f"note: the version's backend {backend!r} cannot run here ({error}); the query is encoded "
                  "with the exact one", file=sys.stderr)
    return load_snapshot_model(snapshot, device=device)


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
    parser.add_argument("--version", metavar="KEY",
                        help="search this version set (`embedding-store versions`) instead of the serving one")
    args = parser.parse_args(argv)
    store = _open_store(parser, args, "; run `make demo` or materialize first")
    snapshot, version, hits, indexed = search(store, args.query, args.model, args.top_k, args.prompt_name,
                                              args.device, args.exact, args.by_chunk, args.version)
    if args.json:
        for hit in hits:
            print(json.dumps({"score": hit.score, "id": hit.id, "partition": hit.partition, "text": hit.text,
                              "chunk": hit.chunk, "char_start": hit.char_start, "char_end": hit.char_end}))
        return 0
    print(f"{snapshot.model}@{snapshot.revision[:19]}  version {version.key} "
          f"({'serving' if version.serving else 'candidate'})  catalog: {store.catalog_label}  "
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
    """`embedding-store`: verify the data files; list, promote and roll back version sets."""
    parser = argparse.ArgumentParser(prog="embedding-store",
                                     description="Check an embedding store and manage the versions it serves.")
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="check that every data file and vector index file exists, "
                                 "has its recorded size and a readable footer; name the damaged ones and print "
                                 "the command that repairs them; exit status 1 when one is damaged")
    _store_arguments(verify)
    verify.add_argument("--read-rows", action="store_true", help="also read every row (reads the whole lake and "
                        "each index); what only this finds is recorded, so the next materialization repairs it")
    verify.add_argument("--json", action="store_true", help="print the report as one JSON object")
    versions = commands.add_parser("versions", help="every version set of each model: key, revision, "
                                   "params, coverage, complete, serving, last promotion and its metrics")
    _store_arguments(versions)
    versions.add_argument("--model", help="only this model (its name, or the name it is configured by)")
    versions.add_argument("--json", action="store_true", help="one JSON object per version set")
    promote = commands.add_parser("promote", help="make a complete version set the serving version of its "
                                  "model (search, views and index switch in one commit)")
    _store_arguments(promote)
    promote.add_argument("key", metavar="KEY", help="the version set's key (`embedding-store versions`)")
    promote.add_argument("--model", help="the model, when KEY names sets of several")
    promote.add_argument("--force", action="store_true", help="promote it even if it lacks some partitions")
    promote.add_argument("--reason", default="", help="why, recorded with the promotion")
    rollback = commands.add_parser("rollback", help="serve again the version set that served before")
    _store_arguments(rollback)
    rollback.add_argument("--model", help="the model, when the store holds several")
    rollback.add_argument("--reason", default="", help="why, recorded with the rollback")
    args = parser.parse_args(argv)
    store = _open_store(parser, args)
    try:
        if args.command == "versions":
            return _versions(store, _model_name(store, args.model, required=False), args.json)
        if args.command == "promote":
            model = _model_name(store, args.model, required=False)
            chosen = store.version_set(args.key, model)
            promotion = store.promote(chosen.model, chosen.key, reason=args.reason, force=args.force)
            _print_promotion(store, promotion)
            return 0
        if args.command == "rollback":
            promotion = store.rollback(_model_name(store, args.model, required=True), reason=args.reason)
            _print_promotion(store, promotion)
            return 0
    except VersionError as error:
        print(f"embedding-store {args.command}: {error}", file=sys.stderr)
        return 1
    report = store.verify(read_rows=args.read_rows)
    repair = repair_advice(store, report)
    if args.json:
        print(json.dumps({**dataclasses.asdict(report), "repair": repair}))
        return 0 if report.ok else 1
    print(f"{store.catalog_label}: {report.files_checked} data files checked, {len(report.damaged_files)} damaged")
    for file in report.damaged_files:
        print(f"  {file.path}  [{file.table}; partitions {', '.join(file.partitions) or '-'}"
              f"{'; current' if file.current else ''}]: {file.problem}")
    if repair["partitions"]:
        print("damaged partitions (landing file, Dagster partition): " + ", ".join(
            f"{key} ({p['landing_file'] or 'no landing file'}, {p['bucket']})" for key, p in repair["partitions"].items()))
        print(f"materialize corpus + embeddings of {', '.join(repair['buckets'])} to repair them "
              "(the UI's Materialize, or):")
        print(f"  {repair['command']}")
    if report.damaged_indexes:
        print("materialize vector_index to build the damaged index again (or):")
        print(f"  {repair['index_command']}")
    return 0 if report.ok else 1


def repair_advice(store: EmbeddingStore, report: VerifyReport) -> dict:
    """What repairs the damage `report` found: each damaged partition's landing file and
    Dagster partition (its landing bucket), the buckets to materialize and the backfill
    command that does it; the command that builds a damaged vector index again."""
    records = store.landing_records(report.damaged_partitions) if report.damaged_partitions else {}
    partitions = {key: {"landing_file": records[key].relative_path if key in records else None,
                        "bucket": bucket_of(key, bucket_count())} for key in report.damaged_partitions}
    buckets = sorted({p["bucket"] for p in partitions.values()})
    # The commands name this store (a Postgres catalog, which holds a password, is left to
    # $EMBEDDING_CATALOG), whatever the environment they are run in says.
    store_env = f"env EMBEDDING_STORE_ROOT={shlex.quote(str(store.root))}"
    catalog = str(store.catalog or "")
    if catalog and not catalog.startswith("postgres:") and catalog != os.path.join(str(store.root), CATALOG_FILE_NAME):
        store_env += f" EMBEDDING_CATALOG={shlex.quote(catalog)}"
    return {"partitions": partitions, "buckets": buckets,
            "command": f"{store_env} {sys.executable} -m embedding_assets.backfill --partitions {','.join(buckets)}"
            if buckets else None,
            "index_command": f"{store_env} {os.path.join(os.path.dirname(sys.executable), 'dagster')} asset "
            "materialize -m embedding_assets.definitions --select vector_index" if report.damaged_indexes else None}


def _model_name(store: EmbeddingStore, given: str | None, required: bool) -> str | None:
    """The stored model name `given` names (itself, or the model a configured name resolved
    to); with none given, the store's only model when `required`."""
    models = sorted({s.model for s in store.version_sets()})
    if given is not None:
        if given in models:
            return given
        snapshot = store.current_model_snapshot(given)
        if snapshot is not None and snapshot.model in models:
            return snapshot.model
        raise VersionError(f"no model {given!r} has embeddings in {store.catalog_label}; "
                           f"models: {', '.join(models) or 'none'}")
    if required and len(models) != 1:
        raise VersionError(f"{store.catalog_label} holds {len(models)} models ({', '.join(models) or 'none'}): "
                           "choose one with --model")
    return models[0] if required else None


def params_summary(params: dict) -> str:
    """The parameters that are set, as ``name=value`` (the prompt by its name)."""
    return " ".join(f"{name}={value}" for name, value in sorted(params.items())
                    if value not in (None, False) and name != "prompt")


def _versions(store: EmbeddingStore, model: str | None, as_json: bool) -> int:
    sets = store.version_sets(model)
    last: dict[tuple[str, str], Promotion] = {}
    for promotion in store.promotions(model):
        last[promotion.model, promotion.to_key] = promotion
    if as_json:
        for version in sets:
            promotion = last.get((version.model, version.key))
            print(json.dumps({**dataclasses.asdict(version), "created_at": version.created_at.isoformat(),
                              "last_promotion": None if promotion is None else {
                                  **dataclasses.asdict(promotion), "time": promotion.time.isoformat()}}))
        return 0
    print(f"{store.catalog_label}: {len(sets)} version set(s)")
    for version in sets:
        state = "serving" if version.serving else "previous" if version.previous else "candidate"
        print(f"{'*' if version.serving else ' '} {version.key}  {version.model}  {state:<9}  "
              f"revision {version.revision[:19]}  {version.partitions_covered}/{version.partitions_total} "
              f"partitions{'' if version.complete else ' (incomplete)'}  {version.rows} rows  "
              f"dim {version.dim}  {params_summary(version.params)}")
        promotion = last.get((version.model, version.key))
        if promotion is not None:
            print(f"    promoted {promotion.time:%Y-%m-%d %H:%M:%S}{' (forced)' if promotion.forced else ''}"
                  f"{f': {promotion.reason}' if promotion.reason else ''}"
                  f"{f'  metrics {json.dumps(promotion.metrics, sort_keys=True)}' if promotion.metrics else ''}")
    return 0


def _print_promotion(store: EmbeddingStore, promotion: Promotion) -> None:
    serving = store.serving_version(promotion.model)
    print(f"{promotion.model} serves version {promotion.to_key} (was {promotion.from_key}): "
          f"{serving.partitions_covered}/{serving.partitions_total} partitions, revision {serving.revision[:19]}"
          f"{' (forced: incomplete)' if promotion.forced else ''}")


if __name__ == "__main__":
    sys.exit(main())
