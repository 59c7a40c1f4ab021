"""Partitioning shared by the corpus and embeddings assets (the key of a landing file is
`embedding_core.landing.partition_key_for_file`)."""

from dagster import BackfillPolicy, DynamicPartitionsDefinition

# One partition per corpus file in the landing folder; the landing sensor adds them.
corpus_partitions = DynamicPartitionsDefinition(name="corpus_shards")

# A backfill runs up to this many shards per run: the model loads once per run, and a
# failed run re-does at most this many shards.
MAX_PARTITIONS_PER_RUN = 8
backfill_policy = BackfillPolicy.multi_run(max_partitions_per_run=MAX_PARTITIONS_PER_RUN)
