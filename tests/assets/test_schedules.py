"""Automation: the embeddings AutomationCondition (what the nightly schedule used to compute by
hand), the weekly spot-check sweep and the weekly store maintenance, against a real store and
instance."""

import json
from datetime import datetime, timezone

from dagster import (
    AssetKey,
    DagsterInstance,
    DefaultScheduleStatus,
    build_schedule_context,
    evaluate_automation_conditions,
)

from embedding_assets.backfill import landing_partitions, materialize_selection
from embedding_assets.definitions import build_definitions
from embedding_assets.resources import EncoderResource
from embedding_assets.schedules import verify_embeddings_sweep
from embedding_core.landing import bucket_of
from embedding_core.store import EmbeddingParams, EmbeddingStore, corpus_table
from tests.assets.conftest import SHARDS, materialize_everything
from tests.assets.test_pipeline import local_model_copy
from tests.store.fakes import TextHashEncoder, bumped

SAMPLE_BUCKETS = sorted(bucket_of(name, 16) for name in SHARDS)  # bucket-04, -07, -11


def requested(result) -> list[str]:
    """The embeddings partitions an automation tick requests."""
    return sorted(result.get_requested_partitions(AssetKey("embeddings")))


def test_automation_reembeds_on_a_new_revision_or_missing_partition_not_on_an_unchanged_one(
        tmp_path, landing, instance: DagsterInstance):
    model_dir = local_model_copy(tmp_path / "model")
    defs = build_definitions(store_root=str(tmp_path / "store"), landing_dir=str(landing),
                             encoder=EncoderResource(model_name=str(model_dir)))
    # Only the buckets that hold files: the others stay missing, their corpus too.
    assert SAMPLE_BUCKETS == ["bucket-04", "bucket-07", "bucket-11"]
    assert materialize_selection(defs, instance, [AssetKey("model_snapshot")])[0].success
    assert all(r.success for r in materialize_selection(
        defs, instance, [AssetKey("corpus"), AssetKey("embeddings")], SAMPLE_BUCKETS))
    tick = evaluate_automation_conditions(defs, instance)
    assert requested(tick) == []  # the 13 empty buckets' corpus is missing: nothing to embed

    # The same revision materialized again: same data version, nothing to do.
    assert materialize_selection(defs, instance, [AssetKey("model_snapshot")])[0].success
    tick = evaluate_automation_conditions(defs, instance, cursor=tick.cursor)
    assert requested(tick) == []

    # A new revision of the model: every materialized bucket is re-embedded.
    (model_dir / "NOTES.md").write_text("a new file: a new content revision\n")
    assert materialize_selection(defs, instance, [AssetKey("model_snapshot")])[0].success
    tick = evaluate_automation_conditions(defs, instance, cursor=tick.cursor)
    assert requested(tick) == SAMPLE_BUCKETS
    assert all(r.success for r in materialize_selection(defs, instance, [AssetKey("embeddings")], SAMPLE_BUCKETS))
    tick = evaluate_automation_conditions(defs, instance, cursor=tick.cursor)
    assert requested(tick) == []

    # A new landing file in a bucket never materialized, its corpus ingested alone: the
    # bucket's embeddings are missing.
    (landing / "a.jsonl").write_text(json.dumps({"id": "n1", "text": "A new text."}) + "\n")
    assert bucket_of("a.jsonl", 16) == "bucket-00"
    tick = evaluate_automation_conditions(defs, instance, cursor=tick.cursor)
    assert requested(tick) == []  # its corpus is missing too: wait for it
    assert materialize_selection(defs, instance, [AssetKey("corpus")], ["bucket-00"])[0].success
    tick = evaluate_automation_conditions(defs, instance, cursor=tick.cursor)
    assert requested(tick) == ["bucket-00"]


def test_weekly_sweep_runs_the_spot_check_over_every_partition(defs, instance):
    materialize_everything(defs, instance)
    with build_schedule_context(instance=instance) as context:
        request = verify_embeddings_sweep(context)
    # Every bucket, whatever the folder holds: the full static range.
    assert (request.tags["dagster/asset_partition_range_start"],
            request.tags["dagster/asset_partition_range_end"]) == ("bucket-00", "bucket-15")
    result = defs.resolve_job_def("verify_embeddings").execute_in_process(
        instance=instance, tags=request.tags)
    evaluations = result.get_asset_check_evaluations()
    assert sorted((e.check_name, e.partition, e.passed) for e in evaluations) == [
        ("embeddings_match_model", bucket, True) for bucket in landing_partitions()]
    compared = {e.partition: e.metadata["texts_compared"].value for e in evaluations}
    assert compared == {bucket: 4 if bucket in SAMPLE_BUCKETS else 0 for bucket in landing_partitions()}


def test_weekly_store_maintenance_requests_a_run_that_maintains_the_store(tmp_path, landing, instance):
    """Sundays 03:00: the schedule's request, run as the daemon would launch it, maintains the
    store and keeps what was replaced this week (older_than_days defaults to 7)."""
    store_root = tmp_path / "store"
    defs = build_definitions(store_root=str(store_root), landing_dir=str(landing))
    schedule = defs.resolve_schedule_def("weekly_store_maintenance")
    assert schedule.cron_schedule == "0 3 * * 0" and schedule.job_name == "store_maintenance_job"
    assert schedule.default_status == DefaultScheduleStatus.RUNNING

    store = EmbeddingStore(store_root)
    corpus = store.write_corpus("docs", corpus_table(["d1", "d2"], ["First text.", "Second text."]))
    replaced = store.write_embeddings("docs", corpus, bumped(revision="a" * 40), EmbeddingParams(),
                                      TextHashEncoder()).version
    newer = store.write_embeddings("docs", corpus, bumped(revision="b" * 40), EmbeddingParams(),
                                   TextHashEncoder()).version
    serving = store.current_embedding_version("docs", newer.model)

    sunday = datetime(2026, 12, 6, 3, 0, tzinfo=timezone.utc)
    with build_schedule_context(instance=instance, scheduled_execution_time=sunday) as context:
        (request,) = schedule.evaluate_tick(context).run_requests
    result = defs.resolve_job_def(schedule.job_name).execute_in_process(
        instance=instance, run_config=request.run_config, tags=request.tags)

    assert result.success
    metadata = result.asset_materializations_for_node("store_maintenance")[0].metadata
    assert metadata["older_than_days"].value == 7.0
    assert metadata["expired_embedding_versions"].value == 0  # replaced minutes ago: kept
    assert [v.version_id for v in store.embedding_versions("docs")] == [replaced.version_id, newer.version_id]
    assert store.current_embedding_version("docs", newer.model) == serving


def test_embeddings_updated_while_an_index_run_is_pending_ask_for_one_more_index_run(defs, instance):
    """The index run a tick asks for reads the store when it runs; embeddings materialized after
    that, before the next tick, must ask for another run (a lost update left the index behind
    the store for good: seen through the daemon in test_landing_daemon)."""
    def index_runs(tick) -> int:
        return tick.get_num_requested(AssetKey("vector_index"))

    def build_index() -> bool:
        return defs.resolve_job_def("index_vectors").execute_in_process(instance=instance).success

    tick = evaluate_automation_conditions(defs, instance)  # the first evaluation asks for nothing
    materialize_everything(defs, instance)
    tick = evaluate_automation_conditions(defs, instance, cursor=tick.cursor)
    assert index_runs(tick) == 1
    # the requested run, then a bucket embedded again, both before the next tick
    assert build_index()
    assert materialize_selection(defs, instance, [AssetKey("embeddings")], SAMPLE_BUCKETS[:1])[0].success
    tick = evaluate_automation_conditions(defs, instance, cursor=tick.cursor)
    assert index_runs(tick) == 1
    assert build_index()
    tick = evaluate_automation_conditions(defs, instance, cursor=tick.cursor)
    assert index_runs(tick) == 0  # the index's own materialization asks for nothing more
