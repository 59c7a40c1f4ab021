"""Schedule: re-embed the partitions whose stored embeddings are not from the current inputs."""

from dagster import (
    AssetKey,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from embedding_assets.partitions import corpus_partitions
from embedding_assets.resources import EmbeddingStoreResource, EncoderResource


@schedule(
    cron_schedule="0 3 * * *",
    target=[AssetKey("embeddings")],
    default_status=DefaultScheduleStatus.STOPPED,
    description="Nightly: one run per partition whose current embeddings are missing or "
    "come from another corpus version, model revision or encoding parameters.",
)
def refresh_stale_embeddings(
    context: ScheduleEvaluationContext,
    encoder: EncoderResource,
    embedding_store: EmbeddingStoreResource,
) -> list[RunRequest] | SkipReason:
    store = embedding_store.open()
    snapshot = store.current_model_snapshot(encoder.model_name)
    if snapshot is None:
        return SkipReason(f"no model snapshot of {encoder.model_name!r}; materialize model_snapshot")
    params = encoder.params(snapshot)
    known = set(context.instance.get_dynamic_partitions(corpus_partitions.name))
    stale = [partition for partition in store.stale_partitions(snapshot, params) if partition in known]
    if not stale:
        return SkipReason(f"all embeddings are current for {snapshot.model}@{snapshot.revision}")
    return [
        RunRequest(
            run_key=f"{partition}:{snapshot.revision}:{params.params_hash}:"
            f"{store.corpus_version(partition).corpus_version[:16]}",
            partition_key=partition,
        )
        for partition in stale
    ]
