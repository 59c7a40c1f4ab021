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
from embedding_core.snapshot import SnapshotNotCurrentError, require_current_snapshot


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
    store, config = embedding_store.open(), encoder.open()
    try:
        snapshot = require_current_snapshot(store, config.model_name, match_revision=False)
    except SnapshotNotCurrentError as error:
        return SkipReason(str(error))
    params = config.params(snapshot)
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
