"""Backfill embeddings from one command line: the CI entry point after a model revision bump.

    python -m embedding_assets.backfill --model-revision <commit> --from a.jsonl --to z.jsonl

Steps: add a partition for every landing file the instance does not know yet; materialize
`model_snapshot` (pinning the requested revision); then materialize `corpus` + `embeddings`
for the selected partitions in runs of at most `MAX_PARTITIONS_PER_RUN` contiguous shards
(the assets' backfill policy). Runs execute in this process and are recorded in the
instance under `$DAGSTER_HOME` (an in-memory instance when it is unset). With
`--submit <webserver URL>` the same runs go instead to a running deployment's queue (e.g.
`make cluster`) and execute on its executor; the deployment's own EMBEDDING_* settings apply
there. The exit status is non-zero when any run fails. Settings come from the EMBEDDING_* variables
(`embedding_assets.definitions`).
"""

import argparse
import os
import sys
from collections.abc import Sequence

from dagster import AssetKey, DagsterInstance, Definitions
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)
from sqlalchemy.exc import IntegrityError

from embedding_assets.jobs import EMBED_CORPUS, SNAPSHOT_MODEL
from embedding_assets.partitions import MAX_PARTITIONS_PER_RUN, corpus_partitions

SHARD_ASSETS = (AssetKey("corpus"), AssetKey("embeddings"))


def register_landing_partitions(defs: Definitions, instance: DagsterInstance) -> list[str]:
    """Add a partition for every corpus file in the landing folder; return all partitions
    in the instance's order."""
    corpus_source = defs.resources["corpus_source"]
    known = set(instance.get_dynamic_partitions(corpus_partitions.name))
    new_keys = [key for key in corpus_source.open().fingerprints() if key not in known]
    if new_keys:
        try:
            instance.add_dynamic_partitions(corpus_partitions.name, new_keys)
        except IntegrityError:
            # A concurrent backfill or the sensor added some of them first; add the rest.
            instance.add_dynamic_partitions(corpus_partitions.name, new_keys)
    return list(instance.get_dynamic_partitions(corpus_partitions.name))


def contiguous_chunks(all_keys: Sequence[str], selected: Sequence[str], size: int) -> list[list[str]]:
    """Group `selected` into runs of at most `size` keys that are adjacent in `all_keys`,
    so each chunk is one partition range."""
    position = {key: index for index, key in enumerate(all_keys)}
    unknown = [key for key in selected if key not in position]
    if unknown:
        raise ValueError(f"unknown partition(s) {unknown}; known: {list(all_keys)}")
    chunks: list[list[str]] = []
    for key in sorted(set(selected), key=position.__getitem__):
        last = chunks[-1] if chunks else None
        if last and len(last) < size and position[key] == position[last[-1]] + 1:
            last.append(key)
        else:
            chunks.append([key])
    return chunks


def materialize_selection(
    defs: Definitions, instance: DagsterInstance, asset_keys: Sequence[AssetKey],
    partition_keys: Sequence[str] | None = None, tags: dict[str, str] | None = None,
    max_partitions_per_run: int = MAX_PARTITIONS_PER_RUN, log_level: str = "INFO",
) -> list:
    """Materialize `asset_keys` (with their checks) in process, as runs of the named job that
    holds them: once when unpartitioned, else one run per contiguous chunk of
    `partition_keys`. Returns the run results."""
    job = named_job(defs, asset_keys)
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}

    def run(run_tags: dict[str, str] | None):
        return job.execute_in_process(instance=instance, run_config=run_config, tags=run_tags,
                                      asset_selection=list(asset_keys), raise_on_error=False)

    if partition_keys is None:
        return [run(tags)]
    all_keys = instance.get_dynamic_partitions(corpus_partitions.name)
    results = []
    for chunk in contiguous_chunks(all_keys, partition_keys, max_partitions_per_run):
        results.append(run({**(tags or {}), ASSET_PARTITION_RANGE_START_TAG: chunk[0],
                            ASSET_PARTITION_RANGE_END_TAG: chunk[-1]}))
    return results


def named_job(defs: Definitions, asset_keys: Sequence[AssetKey]):
    """The named job (embed_corpus, snapshot_model) that holds `asset_keys`, so the runs show
    under that job in the UI."""
    for name in (SNAPSHOT_MODEL, EMBED_CORPUS):
        job = defs.resolve_job_def(name)
        if set(asset_keys) <= set(job.asset_layer.asset_graph.get_all_asset_keys()):
            return job
    raise ValueError(f"no job of {SNAPSHOT_MODEL}, {EMBED_CORPUS} holds {list(asset_keys)}")


def select_partitions(all_keys: Sequence[str], first: str | None, last: str | None,
                      listed: str | None) -> list[str]:
    """Partitions named by --partitions, or the inclusive range --from/--to (default: all)."""
    if listed:
        return [key.strip() for key in listed.split(",") if key.strip()]
    for name, key in (("--from", first), ("--to", last)):
        if key is not None and key not in all_keys:
            raise ValueError(f"{name} {key!r} is not a partition; known: {list(all_keys)}")
    start = all_keys.index(first) if first else 0
    end = all_keys.index(last) if last else len(all_keys) - 1
    return list(all_keys[start:end + 1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m embedding_assets.backfill",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-revision", help="branch, tag or commit to pin (sets "
                        "EMBEDDING_MODEL_REVISION)")
    parser.add_argument("--from", dest="first", help="first partition of the range")
    parser.add_argument("--to", dest="last", help="last partition of the range (inclusive)")
    parser.add_argument("--partitions", help="comma-separated partitions instead of a range")
    parser.add_argument("--max-partitions-per-run", type=int, default=MAX_PARTITIONS_PER_RUN,
                        help=f"shards per run (default {MAX_PARTITIONS_PER_RUN})")
    parser.add_argument("--submit", metavar="URL", help="submit the runs to the deployment whose "
                        "webserver is at URL (e.g. http://127.0.0.1:3000) instead of executing "
                        "them in this process")
    args = parser.parse_args(argv)
    if args.submit:
        return submit_main(args, parser)
    if args.model_revision:
        os.environ["EMBEDDING_MODEL_REVISION"] = args.model_revision

    from embedding_assets.definitions import definitions_from_env

    defs = definitions_from_env()
    with (DagsterInstance.get() if os.environ.get("DAGSTER_HOME")
          else DagsterInstance.ephemeral()) as instance:
        all_keys = register_landing_partitions(defs, instance)
        try:
            selected = select_partitions(all_keys, args.first, args.last, args.partitions)
        except ValueError as error:
            parser.error(str(error))
        tags = {"embedding/trigger": "backfill-cli"}
        results = materialize_selection(defs, instance, [AssetKey("model_snapshot")], tags=tags)
        if results[0].success:
            results += materialize_selection(defs, instance, SHARD_ASSETS, selected, tags=tags,
                                             max_partitions_per_run=args.max_partitions_per_run)
        store = defs.resources["embedding_store"].open()
        for result in results:
            status = "ok" if result.success else "FAILED"
            print(f"run {result.run_id} {result.dagster_run.tags.get(ASSET_PARTITION_RANGE_START_TAG, '')}"
                  f"...{result.dagster_run.tags.get(ASSET_PARTITION_RANGE_END_TAG, '')}: {status}")
        print(f"{len(selected)} partition(s); catalog: {store.catalog_label}")
        return 0 if all(result.success for result in results) else 1


def submit_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """`--submit`: the same runs, launched through the deployment's webserver."""
    from embedding_assets.definitions import definitions_from_env
    from embedding_assets.submit import SubmitError, submit_backfill

    if args.model_revision:
        parser.error("--model-revision cannot be combined with --submit: the deployment's "
                     "EMBEDDING_MODEL_REVISION decides; set it where the code location runs")

    def select(all_keys: Sequence[str]) -> list[str]:
        try:
            return select_partitions(all_keys, args.first, args.last, args.partitions)
        except ValueError as error:
            parser.error(str(error))

    landing_keys = list(definitions_from_env().resources["corpus_source"].open().files())
    try:
        selected, runs = submit_backfill(
            args.submit, landing_keys, select,
            lambda all_keys, keys: contiguous_chunks(all_keys, keys, args.max_partitions_per_run),
            tags={"embedding/trigger": "backfill-cli"},
        )
    except SubmitError as error:
        print(f"backfill: {error}", file=sys.stderr)
        return 1
    for run in runs:
        print(f"run {run.run_id} {run.tags.get(ASSET_PARTITION_RANGE_START_TAG, '')}"
              f"...{run.tags.get(ASSET_PARTITION_RANGE_END_TAG, '')}: "
              f"{'ok' if run.success else run.status}")
    print(f"{len(selected)} partition(s); submitted to {args.submit}")
    return 0 if all(run.success for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
