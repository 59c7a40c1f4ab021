"""Partitioning shared by the corpus and embeddings assets (the key of a landing file is
`embedding_core.landing.partition_key_for_file`), and what every asset is labelled with."""

import warnings

from dagster import BackfillPolicy, BetaWarning, DynamicPartitionsDefinition, asset

# One partition per corpus file in the landing folder; the landing sensor adds them.
corpus_partitions = DynamicPartitionsDefinition(name="corpus_shards")

# A backfill runs up to this many shards per run: the model loads once per run, and a
# failed run re-does at most this many shards.
MAX_PARTITIONS_PER_RUN = 8
backfill_policy = BackfillPolicy.multi_run(max_partitions_per_run=MAX_PARTITIONS_PER_RUN)

# Shown on every asset in the UI (Catalog filters, asset pages).
ASSET_OWNERS = ["team:search-platform"]
ASSET_TAGS = {"domain": "semantic-search", "pipeline": "embeddings"}


def shard_asset(**kwargs):
    """`@asset(partitions_def=corpus_partitions, backfill_policy=backfill_policy, **kwargs)`.
    Dagster marks `backfill_policy` as beta and warns at every load of the code location; the
    warning is about Dagster's API and gives a user nothing to act on, so it is not shown."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)
        return asset(partitions_def=corpus_partitions, backfill_policy=backfill_policy, **kwargs)
