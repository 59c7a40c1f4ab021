"""The schedule: one run per stale partition, against a real store."""

import json

from dagster import AssetKey, DagsterInstance, build_schedule_context

from embedding_assets.backfill import materialize_selection, register_landing_partitions
from embedding_assets.schedules import refresh_stale_embeddings
from embedding_core.hub import DEFAULT_MODEL_NAME
from tests.assets.conftest import materialize_everything


def evaluate_schedule(defs, instance: DagsterInstance):
    # The context opens its own instance from the ref; leaving the block closes it (and resets
    # Dagster's current defs-state storage) now, not when garbage collection gets to it.
    with build_schedule_context(instance=instance, resources=defs.resources) as context:
        return refresh_stale_embeddings(context)


def test_schedule_requests_exactly_the_stale_partitions(defs, landing, instance):
    assert "no model snapshot" in evaluate_schedule(defs, instance).skip_message

    materialize_everything(defs, instance)
    assert "all embeddings are current" in evaluate_schedule(defs, instance).skip_message

    with open(landing / "python_docs.jsonl", "a", encoding="utf-8") as appended:
        appended.write(json.dumps({"id": "extra", "text": "One more paragraph."}) + "\n")
    keys = register_landing_partitions(defs, instance)
    assert materialize_selection(defs, instance, [AssetKey("corpus")], keys)[0].success
    requests = evaluate_schedule(defs, instance)
    assert [r.partition_key for r in requests] == ["python_docs.jsonl"]
    store = defs.resources["embedding_store"].open()
    snapshot = store.current_model_snapshot(DEFAULT_MODEL_NAME)
    assert requests[0].run_key.startswith(f"python_docs.jsonl:{snapshot.revision}:")
