"""Partitioning shared by the corpus and embeddings assets, and what every asset is labelled
with.

A partition is a landing *bucket*, not a file: each landing file belongs to one of
`LANDING_BUCKETS` buckets by a stable hash of its name (`embedding_core.landing.bucket_of`),
and the store keeps every file as its own partition with its own versions and lineage
(`EmbeddingStore.landing_records`). So a folder of 100,000 files is 16 Dagster partitions,
and a run of a few buckets carries every new or changed file in them (docs/pipeline.md,
*Landing folder*). `EMBEDDING_LANDING_BUCKETS` sets the count (changing it regroups the
files; the store, keyed by file, is untouched).
"""

import contextlib
import warnings
from collections.abc import Sequence

from dagster import BackfillPolicy, BetaWarning, StaticPartitionsDefinition

from embedding_core.landing import bucket_count, bucket_keys

LANDING_BUCKETS = bucket_count()
corpus_partitions = StaticPartitionsDefinition(list(bucket_keys(LANDING_BUCKETS)))

# A backfill runs up to this many buckets per run: the model loads once per run, and a
# failed run re-does at most this many buckets.
MAX_PARTITIONS_PER_RUN = 8
backfill_policy = BackfillPolicy.multi_run(max_partitions_per_run=MAX_PARTITIONS_PER_RUN)

# The run tags of a range of partitions (Dagster's documented tags for a ranged run).
PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"

# Shown on every asset in the UI (Catalog filters, asset pages).
ASSET_OWNERS = ["team:search-platform"]
ASSET_TAGS = {"domain": "semantic-search", "pipeline": "embeddings"}


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


def partition_range_tags(first: str, last: str) -> dict[str, str]:
    """Tags of a run over the partitions `first` ... `last` (inclusive)."""
    return {PARTITION_RANGE_START_TAG: first, PARTITION_RANGE_END_TAG: last}


@contextlib.contextmanager
def quiet_beta():
    """Define assets with `backfill_policy`: Dagster marks it as beta and warns at every load
    of the code location; the warning is about Dagster's API and gives a user nothing to act
    on, so it is not shown."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)
        yield
