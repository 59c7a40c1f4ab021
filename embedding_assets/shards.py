"""One bad bucket does not fail the other buckets of its run, and each bucket is recorded
on its own.

A run materializes a range of partitions (the assets' backfill policy). An asset's output
would record every partition of the range or none, so `landing_buckets` yields no asset
output: it logs one `AssetMaterialization` per bucket it stored (`record`), with the bucket's
own data version and, for `embeddings`, the input versions it was made from, so the UI's
staleness is per bucket. `ShardFailures` runs each bucket's work on its own: a bucket that
raises is recorded with its file and reason, the loop goes on, and `raise_if_any` ends the
step with one error naming every bad bucket. The run then fails, so Dagster shows the bad
buckets failed and the others materialized.

Example::

    failures = ShardFailures("corpus", context.partition_keys, context.log)
    for key in context.partition_keys:
        with failures.attempt(key, source=uri_of(key)):
            store_shard(key)
    failures.raise_if_any()
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from dagster import AssetCheckEvaluation, AssetKey, AssetMaterialization

# Dagster's documented provenance tags of a materialization (what its staleness reads).
DATA_VERSION_TAG = "dagster/data_version"
CODE_VERSION_TAG = "dagster/code_version"
USER_PROVIDED_TAG = "dagster/data_version_is_user_provided"
INPUT_DATA_VERSION_TAG = "dagster/input_data_version/{}"
INPUT_EVENT_POINTER_TAG = "dagster/input_event_pointer/{}"


@dataclass
class BucketResult:
    """What one bucket's half of the step produced: the materialization's metadata, the
    bucket's data version, check evaluations (no target yet), and input data versions."""

    metadata: dict
    data_version: str
    evaluations: list[AssetCheckEvaluation]
    inputs: dict[str, tuple[str, int | None]] = field(default_factory=dict)  # key -> (version, storage id)


def bucket_data_version(versions: Mapping[str, str]) -> str:
    """A bucket's data version: a digest of each file's current version id."""
    return hashlib.sha256(json.dumps(sorted(versions.items())).encode()).hexdigest()[:24]


def record(context, asset: AssetKey, bucket: str, result: BucketResult, code_version: str | None) -> None:
    """Log the bucket's materialization, with its provenance."""
    tags = {DATA_VERSION_TAG: result.data_version, USER_PROVIDED_TAG: "true"}
    for key, (version, storage_id) in result.inputs.items():
        tags[INPUT_DATA_VERSION_TAG.format(key)] = version
        tags[INPUT_EVENT_POINTER_TAG.format(key)] = "NULL" if storage_id is None else str(storage_id)
    if code_version:
        tags[CODE_VERSION_TAG] = code_version
    context.log_event(AssetMaterialization(asset_key=asset, partition=bucket, metadata=result.metadata, tags=tags))


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

    def add(self, partition_key: str, reason: str, append: bool = False, log: bool = True) -> None:
        """Record why `partition_key` failed; with `append`, besides the reasons it has."""
        if log:
            self.log.error(f"{partition_key}: not stored: {reason}")
        if append and partition_key in self.errors:
            reason = f"{self.errors[partition_key]}; {reason}"
        self.errors[partition_key] = reason

    def error(self) -> ShardsFailedError | None:
        if not self.errors:
            return None
        in_order = {key: self.errors[key] for key in self.partition_keys if key in self.errors}
        return ShardsFailedError(self.asset, in_order, len(self.partition_keys))

    def raise_if_any(self) -> None:
        if (error := self.error()) is not None:
            raise error
