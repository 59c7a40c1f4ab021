"""Sensors: the landing folder, and a new revision of the model.

`corpus_landing_sensor` keeps a tick bounded whatever the folder holds: it lists the folder
once (no file is read, the catalog is asked one short question), compares a digest of
each bucket's file names and fingerprints with the one in its cursor, and requests one run
of `embed_corpus` over the buckets that moved. The run reads only the files that changed
(`embedding_core.landing_sync`). Run keys carry the cursor's generation, so every change is
its own request (content A -> B -> A runs three times) and a retried tick never runs twice.
"""

import json
import os
import time

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from embedding_assets.jobs import embed_corpus, snapshot_model
from embedding_assets.partitions import LANDING_BUCKETS, partition_range_tags
from embedding_assets.resources import CorpusSourceResource, EmbeddingStoreResource, EncoderResource
from embedding_core.landing import bucket_digests

TRIGGER_TAG = "embedding/trigger"
LANDING_TRIGGER = "landing-sensor"
BUCKETS_TAG = "embedding/buckets"
# How often the landing folder is looked at (seconds); tests set it lower.
LANDING_INTERVAL_S = int(os.environ.get("EMBEDDING_LANDING_SENSOR_INTERVAL_S") or 30)
IN_FLIGHT = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
             DagsterRunStatus.STARTED]


def run_in_flight(context: SensorEvaluationContext, job_name: str, tags: dict[str, str]) -> str | None:
    """The id of a queued or running run of `job_name` with `tags`, if there is one."""
    runs = context.instance.get_runs(RunsFilter(job_name=job_name, statuses=IN_FLIGHT, tags=tags), limit=1)
    return runs[0].run_id if runs else None


@sensor(
    jobs=[embed_corpus, snapshot_model],
    minimum_interval_seconds=LANDING_INTERVAL_S,
    default_status=DefaultSensorStatus.STOPPED,
    description="Runs embed_corpus over the landing buckets whose files were added, changed, "
    "renamed or deleted since the last request (one run for all of them; only the changed "
    "files are read). Waits while its previous run is queued or running.",
)
def corpus_landing_sensor(
    context: SensorEvaluationContext,
    corpus_source: CorpusSourceResource,
    embedding_store: EmbeddingStoreResource,
    encoder: EncoderResource,
) -> SensorResult | SkipReason:
    """The cursor holds the store it served (a store recreated under the same instance starts
    over), a digest per bucket as of the last request, and a generation number that makes
    each request's run key new."""
    cursor = json.loads(context.cursor) if context.cursor else {}
    store = embedding_store.open()
    store_id = store.store_id
    generation = int(cursor.get("generation", 0))
    if cursor.get("store") != store_id:
        if cursor:
            context.log.info(f"the store changed ({cursor.get('store')} -> {store_id}): every bucket again")
        cursor = {"store": store_id, "buckets": {}, "generation": generation}
    if store.current_model_snapshot(encoder.model_name) is None:
        # Embeddings need a snapshot; ask for it first and come back for the buckets.
        if (running := run_in_flight(context, snapshot_model.name, {TRIGGER_TAG: LANDING_TRIGGER})):
            return SkipReason(f"waiting for model_snapshot run {running}")
        cursor["generation"] = generation + 1
        return SensorResult(
            run_requests=[RunRequest(run_key=f"model_snapshot:{encoder.model_name}:{store_id}:{generation}",
                                     job_name=snapshot_model.name, tags={TRIGGER_TAG: LANDING_TRIGGER})],
            cursor=json.dumps(cursor, sort_keys=True))
    if (running := run_in_flight(context, embed_corpus.name, {TRIGGER_TAG: LANDING_TRIGGER})):
        return SkipReason(f"waiting for run {running}; changes since are picked up after it")
    started = time.monotonic()
    listing = corpus_source.open().listing()
    digests = bucket_digests(listing, LANDING_BUCKETS)
    listed_s = time.monotonic() - started
    changed = sorted(bucket for bucket in set(digests) | set(cursor["buckets"])
                     if digests.get(bucket) != cursor["buckets"].get(bucket))
    if not changed:
        return SkipReason(f"no new, changed or deleted file among {len(listing)} in "
                          f"{corpus_source.landing_dir} (listed in {listed_s:.2f} s)")
    context.log.info(f"{len(changed)} bucket(s) changed among {len(listing)} files (listed in "
                     f"{listed_s:.2f} s): {', '.join(changed)}")
    request = RunRequest(
        run_key=f"landing:{store_id}:{generation}", job_name=embed_corpus.name,
        tags={**partition_range_tags(changed[0], changed[-1]), TRIGGER_TAG: LANDING_TRIGGER,
              BUCKETS_TAG: ",".join(changed)})
    return SensorResult(run_requests=[request], cursor=json.dumps(
        {"store": store_id, "buckets": digests, "generation": generation + 1}, sort_keys=True))


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
        return RunRequest(run_key=f"model_snapshot:{encoder.model_name}:{embedding_store.open().store_id}")
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
