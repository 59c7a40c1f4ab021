"""Automation: the embeddings AutomationCondition (what the nightly schedule used to compute by
hand) and the weekly spot-check sweep, against a real store and instance."""

import json

from dagster import (
    AssetKey,
    DagsterInstance,
    build_schedule_context,
    evaluate_automation_conditions,
)

from embedding_assets.backfill import landing_partitions, materialize_selection
from embedding_assets.definitions import build_definitions
from embedding_assets.resources import EncoderResource
from embedding_assets.schedules import verify_embeddings_sweep
from embedding_core.landing import bucket_of
from tests.assets.conftest import SHARDS, materialize_everything
from tests.assets.test_pipeline import local_model_copy

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
