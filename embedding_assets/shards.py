"""One bad shard does not fail the other shards of its run.

A run materializes a range of partitions (the assets' backfill policy), and each step loops
over them. `ShardFailures` runs each partition's work on its own: a partition that raises is
recorded with its file and reason, the loop goes on, and `raise_if_any` ends the step with
one error naming every bad partition. So the good shards of the range are stored.

Dagster records a step's output for every partition of its range or for none, and a failed
step skips the steps after it. A `corpus` step with only some bad files therefore does not
fail when the same run also materializes `embeddings`: it marks each bad partition's metadata
with `SHARD_ERROR` (nothing is stored for it), and the `embeddings` step, which finds those
marks in the run's event log (`corpus_failures_in_run`), embeds the good shards, records
them, and fails naming every bad file and its reason. Without `embeddings` in the run, or
when every partition is bad, `corpus` fails itself.

Example::

    failures = ShardFailures("corpus", context.partition_keys, context.log)
    for key in context.partition_keys:
        with failures.attempt(key, source=uri_of(key)):
            store_shard(key)
    failures.raise_if_any()
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from dagster import AssetKey, AssetMaterialization, DagsterEventType

# Metadata key of a partition whose corpus file could not be stored in this run.
SHARD_ERROR = "error"


class ShardsFailedError(RuntimeError):
    """Some partitions of a run failed; the others were stored. `errors`: key -> reason."""

    def __init__(self, asset: str, errors: Mapping[str, str], partitions: int) -> None:
        self.errors = dict(errors)
        lines = "\n".join(f"  {key}: {reason}" for key, reason in errors.items())
        super().__init__(f"{asset}: {len(self.errors)} of {partitions} partition(s) failed, the "
                         f"other {partitions - len(self.errors)} were stored:\n{lines}")


class ShardFailures:
    """The partitions of one step that failed, each with its file and reason."""

    def __init__(self, asset: str, partition_keys: Iterable[str], log) -> None:
        self.asset = asset
        self.partition_keys = list(partition_keys)
        self.log = log
        self.errors: dict[str, str] = {}

    @property
    def all_failed(self) -> bool:
        return len(self.errors) == len(self.partition_keys)

    @contextmanager
    def attempt(self, partition_key: str, source: str | None = None) -> Iterator[None]:
        """Run one partition's work; an exception is recorded instead of raised."""
        try:
            yield
        except Exception as error:  # noqa: BLE001 - each is named in the step's final error
            message = str(error)
            reason = message if source is None or source in message else f"{source}: {message}"
            self.add(partition_key, f"{type(error).__name__}: {reason}")

    def add(self, partition_key: str, reason: str, append: bool = False) -> None:
        """Record why `partition_key` failed; with `append`, besides the reasons it has."""
        if append and partition_key in self.errors:
            reason = f"{self.errors[partition_key]}; {reason}"
        self.errors[partition_key] = reason
        self.log.error(f"{partition_key}: not stored: {reason}")

    def error(self) -> ShardsFailedError | None:
        if not self.errors:
            return None
        in_order = {key: self.errors[key] for key in self.partition_keys if key in self.errors}
        return ShardsFailedError(self.asset, in_order, len(self.partition_keys))

    def raise_if_any(self) -> None:
        if (error := self.error()) is not None:
            raise error


def resolve_files(landing, failures: ShardFailures) -> dict:
    """The landing file of each of the step's partitions; a key with no usable file (gone, a
    link to outside the folder, a name collision) is recorded in `failures` instead."""
    try:
        return landing.files(failures.partition_keys)
    except (OSError, ValueError):
        files = {}
        for key in failures.partition_keys:
            with failures.attempt(key):
                files.update(landing.files([key]))
        return files


def embeddings_in_run(context) -> bool:
    """Whether this run also executes the `embeddings` step."""
    selection = context.run.asset_selection or context.job_def.asset_layer.selected_asset_keys
    steps = context.run.step_keys_to_execute
    return AssetKey("embeddings") in selection and (steps is None or "embeddings" in steps)


def corpus_failures_in_run(context, partition_keys: Iterable[str]) -> dict[str, str]:
    """Partition -> reason of each `corpus` partition this run could not store."""
    wanted = set(partition_keys)
    records = context.instance.get_records_for_run(
        context.run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
    failures = {}
    for record in records:
        event = record.event_log_entry.asset_materialization
        if (event and event.asset_key == AssetKey("corpus") and event.partition in wanted
                and SHARD_ERROR in event.metadata):
            failures[event.partition] = f"corpus not stored: {event.metadata[SHARD_ERROR].value}"
    return failures


def record_stored(context, asset: str, metadata_by_partition: Mapping[str, dict]) -> None:
    """Record the partitions a failing step did store (Dagster records none of a failed step)."""
    for partition_key, metadata in metadata_by_partition.items():
        context.log_event(AssetMaterialization(asset_key=asset, partition=partition_key,
                                               metadata=metadata))


def end_corpus_step(context, failures: ShardFailures) -> None:
    """Fail the `corpus` step naming every bad file, unless `embeddings` follows in this run
    and some partitions were stored: then mark the bad ones (`SHARD_ERROR`) for it to fail."""
    error = failures.error()
    if error is None:
        return
    if failures.all_failed or not embeddings_in_run(context):
        raise error
    for partition_key, reason in failures.errors.items():
        context.add_asset_metadata({SHARD_ERROR: reason}, partition_key=partition_key)
    context.log.error(f"{error}\nThe embeddings step embeds the others, then fails naming these.")
