"""Backfill embeddings from one command line: the CI entry point after a model revision bump.

    python -m embedding_assets.backfill --model-revision <commit> --from a.jsonl --to z.jsonl

Steps: materialize `model_snapshot` (pinning the requested revision); then `corpus` +
`embeddings` for the selected partitions (landing buckets; a landing file's key names its
bucket) in runs of at most `MAX_PARTITIONS_PER_RUN` contiguous buckets (the assets'
backfill policy). With `--promote`, once every run succeeded, the `promote_candidate` job:
`vector_index`, the blocking check `candidate_retrieval_quality` and `serving_version`,
which promotes the new version set when it is complete and passes (the exit status is 1
when the check holds it back; its reason is printed). Runs execute in this process and are recorded in the
instance under `$DAGSTER_HOME` (an in-memory instance when it is unset). With
`--submit <webserver URL>` nothing executes here: one Dagster backfill of the same assets and
partitions is launched on a running deployment (e.g. `make cluster`) and followed to its end
(`embedding_assets.submit`); the deployment's own EMBEDDING_* settings apply there. The exit
status is non-zero when any run fails. Settings come from the EMBEDDING_* variables
(`embedding_assets.definitions`).

A killed backfill never blocks the next: each run executed here carries the host, pid and
start time of its process (`RUN_PROCESS_TAG`), and every backfill first marks failed the
runs whose process is gone. SIGTERM or Ctrl-C stops a backfill at once: the run in progress
ends FAILURE (CANCELED if it had not started), no further run starts, and the exit status
is 128 + the signal number. Every 30 s it prints the run in progress and any other process
holding the store's DuckDB catalog file (`embedding_assets.heartbeat`).
"""

import argparse
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

import psutil
from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    Definitions,
    RunsFilter,
)

from embedding_assets.assets.serving_version import GATE_KEY, PROMOTE_CANDIDATE
from embedding_assets.heartbeat import Heartbeat
from embedding_assets.jobs import EMBED_CORPUS, SNAPSHOT_MODEL
from embedding_assets.partitions import (
    LANDING_BUCKETS,
    MAX_PARTITIONS_PER_RUN,
    PARTITION_RANGE_END_TAG,
    PARTITION_RANGE_START_TAG,
    contiguous_chunks,
    corpus_partitions,
    partition_range_tags,
)
from embedding_assets.signals import BackfillInterrupted, StopOnSignal, signal_name
from embedding_assets.submit import DEFAULT_RETRY_FOR_S, submit_backfill
from embedding_core.landing import bucket_of
from embedding_core.store import CATALOG_FILE_NAME

SHARD_ASSETS = (AssetKey("corpus"), AssetKey("embeddings"))

# "<host>:<pid>:<process start time>" of the process that executes a run in place.
RUN_PROCESS_TAG = "embedding/process"
UNFINISHED = [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
# Dagster's documented run tag for a run's own retry budget (run_retries in dagster.yaml).
MAX_RETRIES_TAG = "dagster/max_retries"
INTERRUPT_ERRORS = {"DagsterExecutionInterruptedError", "KeyboardInterrupt"}


def this_process_tag() -> str:
    """`RUN_PROCESS_TAG`'s value for this process (the start time tells a reused pid apart)."""
    process = psutil.Process()
    return f"{socket.gethostname()}:{process.pid}:{process.create_time():.2f}"


def process_alive(tag: str) -> bool | None:
    """Whether the process a `RUN_PROCESS_TAG` value names still runs; None on another host."""
    host, pid, started = tag.rsplit(":", 2)
    if host != socket.gethostname():
        return None
    try:
        process = psutil.Process(int(pid))
        return (abs(process.create_time() - float(started)) < 1.0
                and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:  # ZombieProcess included
        return False
    except psutil.AccessDenied:  # another user's process: alive
        return True


def fail_dead_runs(instance: DagsterInstance) -> list[DagsterRun]:
    """Mark failed every unfinished run executed in place by a process of this host that is
    gone (killed, out of memory): a run left STARTED holds nothing, but misleads."""
    dead = []
    for run in instance.get_runs(RunsFilter(statuses=UNFINISHED)):
        tag = run.tags.get(RUN_PROCESS_TAG)
        if tag and process_alive(tag) is False:
            host, pid, _ = tag.rsplit(":", 2)
            instance.report_run_failed(run, f"the process that executed this run (pid {pid} on "
                                       f"{host}) is gone, killed before the run ended; marked "
                                       f"failed by the backfill of pid {os.getpid()}")
            dead.append(run)
    return dead


def end_own_runs(instance: DagsterInstance, process_tag: str, reason: str) -> list[DagsterRun]:
    """Mark canceled this process's runs that an interruption left unfinished."""
    runs = [run for run in instance.get_runs(RunsFilter(statuses=UNFINISHED))
            if run.tags.get(RUN_PROCESS_TAG) == process_tag]
    for run in runs:
        instance.report_run_canceled(run, f"the backfill was {reason}")
    return runs


def was_interrupted(result) -> bool:
    """Whether a run ended because a signal interrupted it (Dagster turns SIGINT/SIGTERM in a
    run into an interruption error of the step or of the run)."""
    for event in result.all_events:
        error = ((event.step_failure_data.error if event.is_step_failure else None)
                 or (event.event_specific_data.error
                     if event.event_type == DagsterEventType.RUN_FAILURE
                     and event.event_specific_data else None))
        while error is not None:
            if error.cls_name in INTERRUPT_ERRORS:
                return True
            error = error.cause
    return False


def landing_partitions() -> list[str]:
    """Every partition (landing bucket), in order."""
    return list(corpus_partitions.get_partition_keys())


def materialize_selection(
    defs: Definitions, instance: DagsterInstance, asset_keys: Sequence[AssetKey],
    partition_keys: Sequence[str] | None = None, tags: dict[str, str] | None = None,
    max_partitions_per_run: int = MAX_PARTITIONS_PER_RUN, log_level: str = "INFO",
    stopped: Callable[[], bool] = lambda: False,
) -> list:
    """Materialize `asset_keys` (with their checks) in process, as runs of the named job that
    holds them: once when unpartitioned, else one run per contiguous chunk of
    `partition_keys`. Returns the run results; none starts after a run that a signal
    interrupted, or once `stopped()` is true."""
    job = named_job(defs, asset_keys)
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}

    def run(run_tags: dict[str, str] | None):
        return job.execute_in_process(instance=instance, run_config=run_config, tags=run_tags,
                                      asset_selection=list(asset_keys), raise_on_error=False)

    if partition_keys is None:
        return [run(tags)]
    all_keys = landing_partitions()
    results = []
    for chunk in contiguous_chunks(all_keys, partition_keys, max_partitions_per_run):
        results.append(run({**(tags or {}), **partition_range_tags(chunk[0], chunk[-1])}))
        if was_interrupted(results[-1]) or stopped():
            break
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
                      listed: str | None, landing_keys: Sequence[str] = ()) -> list[str]:
    """Buckets named by --partitions, or the inclusive range --from/--to (default: from the
    first to the last bucket that holds a landing file).

    Each name is a bucket (``bucket-03``) or a landing file's key (``python_docs.jsonl``),
    which stands for its bucket; a --from/--to range of file keys selects the buckets of
    every landing file whose key lies in that range."""
    files = sorted(landing_keys)

    def bucket(name: str, flag: str) -> str:
        if name in all_keys:
            return name
        if name in files:
            return bucket_of(name, LANDING_BUCKETS)
        raise ValueError(f"{flag} {name!r} is neither a partition ({all_keys[0]} ... {all_keys[-1]}) "
                         f"nor a landing file of the landing folder")

    if listed:
        names = [key.strip() for key in listed.split(",") if key.strip()]
        return sorted({bucket(name, "--partitions") for name in names}, key=list(all_keys).index)
    if first is None and last is None and files:
        # Every bucket that holds a landing file: one range, so they share runs.
        held = sorted({bucket_of(key, LANDING_BUCKETS) for key in files}, key=list(all_keys).index)
        first, last = held[0], held[-1]
    for flag, name in (("--from", first), ("--to", last)):
        if name is not None:
            bucket(name, flag)
    if (first is None or first in all_keys) and (last is None or last in all_keys):
        start = all_keys.index(first) if first else 0
        end = all_keys.index(last) if last else len(all_keys) - 1
        return list(all_keys[start:end + 1])
    in_range = [key for key in files if (first is None or key >= first) and (last is None or key <= last)]
    return sorted({bucket_of(key, LANDING_BUCKETS) for key in in_range}, key=list(all_keys).index)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m embedding_assets.backfill",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-revision", help="branch, tag or commit to pin (sets "
                        "EMBEDDING_MODEL_REVISION)")
    parser.add_argument("--from", dest="first", help="first partition of the range")
    parser.add_argument("--to", dest="last", help="last partition of the range (inclusive)")
    parser.add_argument("--partitions", help="comma-separated partitions instead of a range")
    parser.add_argument("--max-partitions-per-run", type=int,
                        help=f"partitions per run, in process (default {MAX_PARTITIONS_PER_RUN}); "
                        "a --submit backfill follows the assets' backfill policy")
    parser.add_argument("--promote", action="store_true", help="then run the promote_candidate job: "
                        "evaluate the new version set against the serving one and promote it when it "
                        "passes (in this process; not with --submit)")
    parser.add_argument("--submit", metavar="URL", help="launch one Dagster backfill on the "
                        "deployment whose webserver is at URL (e.g. http://127.0.0.1:3000) and "
                        "wait for it, instead of executing the runs in this process")
    parser.add_argument("--retry-for", type=float, metavar="SECONDS",
                        default=float(os.environ.get("EMBEDDING_SUBMIT_RETRY_S", DEFAULT_RETRY_FOR_S)),
                        help="with --submit: how long to retry while the deployment is unreachable "
                        f"or failing (default EMBEDDING_SUBMIT_RETRY_S or {DEFAULT_RETRY_FOR_S:.0f})")
    args = parser.parse_args(argv)
    if args.submit and args.promote:
        parser.error("--promote runs in this process; with --submit, launch promote_candidate on the "
                     "deployment (its UI, or its schedule) once the backfill is done")
    if args.submit:
        return submit_main(args, parser)
    if args.model_revision:
        os.environ["EMBEDDING_MODEL_REVISION"] = args.model_revision

    runs = InProcessRuns()
    stop = StopOnSignal(on_deadline=lambda signum: runs.end_interrupted(signal_name(signum)))
    try:
        with stop:
            return backfill_in_process(args, parser, runs, stop)
    except BackfillInterrupted as interruption:  # before the instance was open
        print(f"backfill: {interruption} before any run started", file=sys.stderr)
        return 128 + (interruption.signum or signal.SIGINT)


@dataclass
class InProcessRuns:
    """The runs a backfill executes in this process, and how to end them when it is stopped."""

    process_tag: str = field(default_factory=this_process_tag)
    instance: DagsterInstance | None = None
    results: list = field(default_factory=list)

    def in_progress(self) -> str | None:
        """The run this process executes now, for the heartbeat."""
        for run in self.instance.get_runs(RunsFilter(statuses=UNFINISHED,
                                                     tags={RUN_PROCESS_TAG: self.process_tag})):
            first = run.tags.get(PARTITION_RANGE_START_TAG)
            what = f"partitions {first}...{run.tags[PARTITION_RANGE_END_TAG]}" if first else \
                ", ".join(key.to_user_string() for key in run.asset_selection or ())
            return f"run {run.run_id} ({what or 'model_snapshot'}) is {run.status.value}"
        return None

    def end_interrupted(self, signal_names: str) -> list[str]:
        """Mark canceled what a signal left unfinished; name every interrupted run."""
        ended = [f"{r.run_id} FAILURE" for r in self.results if was_interrupted(r)]
        if self.instance is not None:
            ended += [f"{run.run_id} CANCELED" for run in end_own_runs(
                self.instance, self.process_tag, f"stopped by {signal_names}")]
        return ended


def backfill_in_process(args: argparse.Namespace, parser: argparse.ArgumentParser,
                        runs: InProcessRuns, stop: StopOnSignal) -> int:
    """model_snapshot, then the shard runs, executed here and recorded in the instance."""
    from embedding_assets.definitions import definitions_from_env

    defs = definitions_from_env()
    with (DagsterInstance.get() if os.environ.get("DAGSTER_HOME")
          else DagsterInstance.ephemeral()) as instance:
        runs.instance = instance
        try:
            for run in fail_dead_runs(instance):
                print(f"backfill: run {run.run_id} was left {run.status.value} by a process "
                      "that is gone; marked FAILURE", file=sys.stderr)
            all_keys = landing_partitions()
            landing_keys = list(defs.resources["corpus_source"].open().listing())
            try:
                selected = select_partitions(all_keys, args.first, args.last, args.partitions, landing_keys)
            except ValueError as error:
                parser.error(str(error))
            tags = {"embedding/trigger": "backfill-cli", RUN_PROCESS_TAG: runs.process_tag,
                    MAX_RETRIES_TAG: "0"}  # not re-executable by the daemon: a backfill redoes it
            with Heartbeat(runs.in_progress, local_catalog_file(defs)):
                runs.results += materialize_selection(defs, instance, [AssetKey("model_snapshot")],
                                                      tags=tags)
                if runs.results[0].success and stop.signum is None:
                    runs.results += materialize_selection(
                        defs, instance, SHARD_ASSETS, selected, tags=tags,
                        max_partitions_per_run=args.max_partitions_per_run or MAX_PARTITIONS_PER_RUN,
                        stopped=lambda: stop.signum is not None)
                if args.promote and all(result.success for result in runs.results) and stop.signum is None:
                    runs.results.append(defs.resolve_job_def(PROMOTE_CANDIDATE).execute_in_process(
                        instance=instance, tags=tags, raise_on_error=False))
                    print(f"promotion: {promotion_outcome(instance)}")
            if stop.signum is not None or was_interrupted(runs.results[-1]):
                raise BackfillInterrupted(stop.signum)
        except BackfillInterrupted as interruption:
            report_runs(runs.results)
            ended = runs.end_interrupted(signal_name(interruption.signum or stop.signum))
            print(f"backfill: {interruption}; interrupted run(s): {', '.join(ended) or 'none'}; "
                  "no further run started", file=sys.stderr)
            return 128 + (interruption.signum or stop.signum or signal.SIGINT)
        report_runs(runs.results)
        store = defs.resources["embedding_store"].open()
        print(f"{len(selected)} partition(s); catalog: {store.catalog_label}")
        return 0 if all(result.success for result in runs.results) else 1


def promotion_outcome(instance: DagsterInstance) -> str:
    """What the last promote_candidate run did: the gate's verdict and serving_version's action."""
    record = instance.get_latest_asset_check_evaluation_record(GATE_KEY)
    gate = record.event.asset_check_evaluation if record is not None and record.event else None
    served = instance.fetch_materializations(AssetKey("serving_version"), limit=1).records
    action = served[0].asset_materialization.metadata.get("action") if served else None
    return "; ".join(part for part in (
        f"{'passed' if gate.passed else 'FAILED'}: {gate.description}" if gate else "",
        f"serving_version: {action.value}" if action else "") if part) or "nothing recorded"


def local_catalog_file(defs: Definitions) -> str | None:
    """The store's DuckDB catalog file, if it is one (without opening the store)."""
    resource = defs.resources["embedding_store"]
    catalog = resource.catalog or (None if resource.root.startswith("s3://")
                                   else os.path.join(resource.root, CATALOG_FILE_NAME))
    return None if catalog is None or catalog.startswith("postgres:") else os.path.abspath(catalog)


def report_runs(results: Sequence) -> None:
    for result in results:
        status = "ok" if result.success else "FAILED"
        print(f"run {result.run_id} {result.dagster_run.tags.get(PARTITION_RANGE_START_TAG, '')}"
              f"...{result.dagster_run.tags.get(PARTITION_RANGE_END_TAG, '')}: {status}")


def submit_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """`--submit`: one Dagster backfill on the deployment (`embedding_assets.submit`)."""
    from embedding_assets.definitions import definitions_from_env

    def select(all_keys: Sequence[str]) -> list[str]:
        landing_keys = list(definitions_from_env().resources["corpus_source"].open().listing())
        try:
            return select_partitions(all_keys, args.first, args.last, args.partitions, landing_keys)
        except ValueError as error:
            parser.error(str(error))

    return submit_backfill(args, parser, select)


def exit_now(code: int) -> NoReturn:
    """End the command with `code` without tearing the interpreter down.

    By the time `main` returns, every run is recorded and every store and instance
    connection is closed (their `with` blocks); what is left is Python's finalization of
    torch, OpenVINO, DuckDB and Dagster, which took ~2 s of a backfill's wall time on the
    2-core machine (benchmarks/bench_pipeline.py, phase "other"). Output is flushed first.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more to say
            pass
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
