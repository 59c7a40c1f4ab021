"""Automation: the embeddings AutomationCondition (what the nightly schedule used to compute by
hand) and the weekly spot-check sweep, against a real store and instance."""

import json

from dagster import (
    AssetKey,
    DagsterInstance,
    build_schedule_context,
    evaluate_automation_conditions,
)

from embedding_assets.backfill import materialize_selection, register_landing_partitions
from embedding_assets.definitions import build_definitions
from embedding_assets.resources import EncoderResource
from embedding_assets.schedules import verify_embeddings_sweep
from tests.assets.conftest import SHARDS, materialize_everything
from tests.assets.test_pipeline import local_model_copy


def requested(result) -> list[str]:
    """The embeddings partitions an automation tick requests."""
    return sorted(result.get_requested_partitions(AssetKey("embeddings")))


def test_automation_reembeds_on_a_new_revision_or_missing_partition_not_on_an_unchanged_one(
        tmp_path, landing, instance: DagsterInstance):
    model_dir = local_model_copy(tmp_path / "model")
    defs = build_definitions(store_root=str(tmp_path / "store"), landing_dir=str(landing),
                             encoder=EncoderResource(model_name=str(model_dir)))
    materialize_everything(defs, instance)
    tick = evaluate_automation_conditions(defs, instance)
    assert requested(tick) == []

    # The same revision materialized again: same data version, nothing to do.
    assert materialize_selection(defs, instance, [AssetKey("model_snapshot")])[0].success
    tick = evaluate_automation_conditions(defs, instance, cursor=tick.cursor)
    assert requested(tick) == []

    # A new revision of the model: every partition is re-embedded.
    (model_dir / "NOTES.md").write_text("a new file: a new content revision\n")
    assert materialize_selection(defs, instance, [AssetKey("model_snapshot")])[0].success
    tick = evaluate_automation_conditions(defs, instance, cursor=tick.cursor)
    assert requested(tick) == sorted(SHARDS)
    keys = register_landing_partitions(defs, instance)
    assert all(r.success for r in materialize_selection(defs, instance, [AssetKey("embeddings")], keys))
    tick = evaluate_automation_conditions(defs, instance, cursor=tick.cursor)
    assert requested(tick) == []

    # A new landing file whose corpus was ingested alone: its embeddings are missing.
    (landing / "new_batch.jsonl").write_text(json.dumps({"id": "n1", "text": "A new text."}) + "\n")
    register_landing_partitions(defs, instance)
    tick = evaluate_automation_conditions(defs, instance, cursor=tick.cursor)
    assert requested(tick) == []  # its corpus is missing too: wait for it
    assert materialize_selection(defs, instance, [AssetKey("corpus")], ["new_batch.jsonl"])[0].success
    tick = evaluate_automation_conditions(defs, instance, cursor=tick.cursor)
    assert requested(tick) == ["new_batch.jsonl"]


def test_weekly_sweep_runs_the_spot_check_over_every_partition(defs, instance):
    with build_schedule_context(instance=instance) as context:
        assert verify_embeddings_sweep(context).skip_message == "no corpus partitions yet"
    materialize_everything(defs, instance)
    with build_schedule_context(instance=instance) as context:
        request = verify_embeddings_sweep(context)
    assert (request.tags["dagster/asset_partition_range_start"],
            request.tags["dagster/asset_partition_range_end"]) == (SHARDS[0], SHARDS[-1])
    result = defs.resolve_job_def("verify_embeddings").execute_in_process(
        instance=instance, tags=request.tags)
    evaluations = result.get_asset_check_evaluations()
    assert sorted((e.check_name, e.partition, e.passed) for e in evaluations) == [
        ("embeddings_match_model", shard, True) for shard in SHARDS]
