"""Sensors: new corpus files in the landing folder, and a new revision of the model."""

import json

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from embedding_assets.jobs import embed_corpus, snapshot_model
from embedding_assets.partitions import corpus_partitions
from embedding_assets.resources import CorpusSourceResource, EmbeddingStoreResource, EncoderResource
from embedding_core.store.records import sha256_json


def content_version(shard) -> str:
    """What `EmbeddingStore.write_corpus` records as the corpus version of this shard."""
    return sha256_json([shard.table.column("id").to_pylist(),
                        shard.table.column("text_sha256").to_pylist()])


@sensor(
    jobs=[embed_corpus, snapshot_model],
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.STOPPED,
    description="Adds a partition for every new corpus file in the landing folder and runs "
    "embed_corpus for files whose content is new: a file whose ids and texts are already "
    "stored (per the catalog) or only touched runs nothing.",
)
def corpus_landing_sensor(
    context: SensorEvaluationContext,
    corpus_source: CorpusSourceResource,
    embedding_store: EmbeddingStoreResource,
    encoder: EncoderResource,
) -> SensorResult | SkipReason:
    """The cursor maps each file's partition key to [fingerprint (size, modification time),
    content version]. A file whose fingerprint moved is read and its content version (the
    corpus version `corpus` would store) compared with the last one requested, or, for a file
    the cursor has not seen yet (first tick), with the catalog's current corpus version."""
    seen: dict[str, list] = json.loads(context.cursor) if context.cursor else {}
    landing = corpus_source.open()
    files = landing.files()
    moved = {key: file for key, file in files.items()
             if not isinstance(seen.get(key), list) or seen[key][0] != file.fingerprint}
    if not moved:
        return SkipReason(f"no new or changed files among {len(files)} in {corpus_source.landing_dir}")
    store = embedding_store.open()
    if store.current_model_snapshot(encoder.model_name) is None:
        # Embeddings need a snapshot; ask for it first and come back for the shards.
        return SensorResult(run_requests=[RunRequest(run_key=f"model_snapshot:{encoder.model_name}",
                                                     job_name=snapshot_model.name)])
    cursor = dict(seen)
    requests = []
    for key, file in moved.items():
        try:
            version = content_version(landing.read(file))
        except Exception as error:  # noqa: BLE001 - the run reports it, naming the file
            context.log.warning(f"{key}: {error}; requesting a run, which will fail naming it")
            version = f"unreadable:{file.fingerprint}"
        if key in seen:
            stored = seen[key][1]
        else:
            current = store.corpus_version(key)
            stored = current.corpus_version if current is not None else None
        cursor[key] = [file.fingerprint, version]
        if version != stored:
            requests.append(RunRequest(run_key=f"{key}:{version[:32]}", partition_key=key,
                                       job_name=embed_corpus.name))
    known = set(context.instance.get_dynamic_partitions(corpus_partitions.name))
    new_keys = [key for key in files if key not in known]
    unchanged = len(moved) - len(requests)
    if unchanged:
        context.log.info(f"{unchanged} file(s) touched or already stored with the same content: "
                         "nothing to run for them")
    return SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[corpus_partitions.build_add_request(new_keys)] if new_keys else [],
        cursor=json.dumps(cursor, sort_keys=True),
    )


@sensor(
    job=snapshot_model,
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
