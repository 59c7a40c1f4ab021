"""Schedules and automation: what runs without anyone launching it.

- `embeddings` carries an `AutomationCondition` (embedding_assets.assets.embeddings): a
  partition is re-embedded when it is missing, when `model_snapshot` has a new data version
  (a new revision) or when the asset's code_version changed (a new encoder setting changes
  it too, see `definitions.encoder_code_version`). `vector_index` is updated after any bucket
  of `embeddings` was materialized. `embeddings_automation` evaluates both every 30 s; its
  decisions show in the UI under Automation.
- `verify_embeddings_sweep`: weekly, the `embeddings_match_model` spot check over every
  partition (each embeddings run checks only its own partitions).
"""

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from embedding_assets.jobs import verify_embeddings
from embedding_assets.partitions import corpus_partitions, partition_range_tags

embeddings_automation = AutomationConditionSensorDefinition(
    "embeddings_automation",
    target=AssetSelection.assets("embeddings", "vector_index"),
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates the automation conditions of embeddings (re-embeds partitions that "
    "are missing, or whose model revision or code_version moved) and vector_index (updates it "
    "after embeddings were materialized).",
)


@schedule(
    cron_schedule="0 4 * * 0",
    job=verify_embeddings,
    default_status=DefaultScheduleStatus.RUNNING,
    description="Sundays 04:00: the embeddings_match_model spot check over every partition, in "
    "one run (embeddings runs check only their own partitions).",
)
def verify_embeddings_sweep(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
    keys = corpus_partitions.get_partition_keys()
    return RunRequest(tags=partition_range_tags(keys[0], keys[-1]))
