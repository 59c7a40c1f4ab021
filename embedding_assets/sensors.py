"""Sensors: new corpus files in the landing folder, and a new revision of the model."""

import json

from dagster import (
    AssetKey,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from embedding_assets.partitions import corpus_partitions
from embedding_assets.resources import CorpusSourceResource, EmbeddingStoreResource, EncoderResource

CORPUS_AND_EMBEDDINGS = [AssetKey("corpus"), AssetKey("embeddings")]
MODEL_SNAPSHOT = [AssetKey("model_snapshot")]


@sensor(
    asset_selection=CORPUS_AND_EMBEDDINGS + MODEL_SNAPSHOT,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.STOPPED,
    description="Adds a partition for every new corpus file in the landing folder and "
    "materializes corpus + embeddings for new or changed files only.",
)
def corpus_landing_sensor(
    context: SensorEvaluationContext,
    corpus_source: CorpusSourceResource,
    embedding_store: EmbeddingStoreResource,
    encoder: EncoderResource,
) -> SensorResult | SkipReason:
    """The cursor holds each file's fingerprint (size, modification time) when last requested."""
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    files = corpus_source.open().fingerprints()
    changed = {key: fingerprint for key, fingerprint in files.items() if seen.get(key) != fingerprint}
    if not changed:
        return SkipReason(f"no new or changed files among {len(files)} in {corpus_source.landing_dir}")
    if embedding_store.open().current_model_snapshot(encoder.model_name) is None:
        # Embeddings need a snapshot; ask for it first and come back for the shards.
        return SensorResult(
            run_requests=[RunRequest(run_key=f"model_snapshot:{encoder.model_name}",
                                     asset_selection=MODEL_SNAPSHOT)],
        )
    known = set(context.instance.get_dynamic_partitions(corpus_partitions.name))
    new_keys = [key for key in changed if key not in known]
    return SensorResult(
        run_requests=[
            RunRequest(run_key=f"{key}:{fingerprint}", partition_key=key,
                       asset_selection=CORPUS_AND_EMBEDDINGS)
            for key, fingerprint in changed.items()
        ],
        dynamic_partitions_requests=[corpus_partitions.build_add_request(new_keys)] if new_keys else [],
        cursor=json.dumps({**seen, **changed}, sort_keys=True),
    )


@sensor(
    asset_selection=MODEL_SNAPSHOT,
    minimum_interval_seconds=3600,
    default_status=DefaultSensorStatus.STOPPED,
    description="Materializes model_snapshot when the configured model's revision moved "
    "(a new hub commit on the branch, or changed files in a local folder). Quiet offline.",
)
def model_revision_sensor(
    context: SensorEvaluationContext,
    encoder: EncoderResource,
    embedding_store: EmbeddingStoreResource,
) -> RunRequest | SkipReason:
    from embedding_core.hub import hub_offline

    snapshot = embedding_store.open().current_model_snapshot(encoder.model_name)
    if snapshot is None:
        return RunRequest(run_key=f"model_snapshot:{encoder.model_name}:first")
    if snapshot.source == "hub":
        if hub_offline() or encoder.local_files_only:
            return SkipReason("offline (HF_HUB_OFFLINE or local_files_only): hub not asked")
        latest = _hub_revision(snapshot.model, encoder.revision)
    else:
        from embedding_core.hub import resolve_model

        latest = resolve_model(encoder.model_name, revision=encoder.revision,
                               cache_folder=encoder.cache_folder, local_files_only=True).revision
    if latest is None:
        return SkipReason(f"the hub could not be reached for {snapshot.model}; will retry")
    if latest == snapshot.revision:
        return SkipReason(f"{snapshot.model} is still at {snapshot.revision}")
    context.log.info(f"{snapshot.model}: {snapshot.revision} -> {latest}")
    return RunRequest(run_key=f"model_snapshot:{encoder.model_name}:{latest}")


def _hub_revision(model: str, ref: str | None) -> str | None:
    """The commit a branch/tag points at now, or None when the hub cannot be reached."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return HfApi().model_info(model, revision=ref or "main").sha
    except (HfHubHTTPError, OSError):
        return None
