"""The Definitions object, the sensors and the schedule, evaluated against real stores."""

import hashlib
import json
import re

import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    RunRequest,
    SensorResult,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
    materialize,
)
from dagster._core.definitions.backfill_policy import BackfillPolicyType

from embedding_assets.backfill import (
    contiguous_chunks,
    materialize_selection,
    register_landing_partitions,
)
from embedding_assets.definitions import build_definitions, definitions_from_env
from embedding_assets.partitions import (
    MAX_PARTITIONS_PER_RUN,
    PartitionKeyCollisionError,
    partition_key_for_file,
)
from embedding_assets.resources import EncoderResource
from embedding_assets.schedules import refresh_stale_embeddings
from embedding_assets.sensors import corpus_landing_sensor, model_revision_sensor
from embedding_core.hub import DEFAULT_MODEL_NAME
from embedding_core.store import ModelSnapshot
from tests.assets.conftest import SHARDS, materialize_everything


def test_definitions_hold_the_lineage_graph_checks_automation_and_policies():
    defs = definitions_from_env({"EMBEDDING_STORE_ROOT": "/tmp/unused-store",
                                 "EMBEDDING_TARGET_DEVICES": "cuda:0,cuda:1",
                                 "EMBEDDING_NORMALIZE": "true"})
    graph = defs.resolve_asset_graph()
    assert graph.get(AssetKey("embeddings")).parent_keys == {AssetKey("corpus"), AssetKey("model_snapshot")}
    assert {key.name for key in graph.asset_check_keys} == {
        "rows_valid", "encodes_canary", "rows_match_corpus", "dim_matches_model", "vectors_finite",
        "unit_norm", "embeddings_match_model"}
    for key in ("corpus", "embeddings"):
        node = graph.get(AssetKey(key))
        assert node.partitions_def.name == "corpus_shards"
        assert node.backfill_policy.policy_type == BackfillPolicyType.MULTI_RUN
        assert node.backfill_policy.max_partitions_per_run == MAX_PARTITIONS_PER_RUN
    # No store-wide lock: N workers encode and commit N shards at once.
    assert all(not graph.get(AssetKey(key)).pools for key in ("corpus", "model_snapshot", "embeddings"))
    assert sorted(s.name for s in defs.sensors) == ["corpus_landing_sensor", "model_revision_sensor"]
    assert sorted(s.name for s in defs.schedules) == ["refresh_stale_embeddings", "weekly_store_maintenance"]
    encoder = defs.resources["encoder"]
    assert (encoder.target_devices, encoder.normalize_embeddings) == (["cuda:0", "cuda:1"], True)
    assert defs.resources["embedding_store"].root == "/tmp/unused-store"


def test_backfill_chunks_are_contiguous_ranges_of_at_most_the_policy_size():
    keys = [f"p{i}" for i in range(20)]
    chunks = contiguous_chunks(keys, [*keys[:10], "p12", "p13", "p19"], size=4)
    assert chunks == [["p0", "p1", "p2", "p3"], ["p4", "p5", "p6", "p7"], ["p8", "p9"],
                      ["p12", "p13"], ["p19"]]
    with pytest.raises(ValueError, match=r"unknown partition\(s\) \['nope'\]"):
        contiguous_chunks(keys, ["nope"], size=4)


def evaluate_landing_sensor(defs, instance: DagsterInstance, cursor: str | None):
    # Entered, so the context's resources (and any instance it opens) are closed here, not
    # whenever garbage collection gets to them.
    with build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                              resources=defs.resources) as context:
        return corpus_landing_sensor(context)


def test_landing_sensor_adds_partitions_and_requests_only_new_or_changed_files(defs, landing, instance):
    # No model snapshot yet: the sensor asks for one and leaves the files for later.
    first = evaluate_landing_sensor(defs, instance, None)
    assert [(r.asset_selection, r.partition_key) for r in first.run_requests] == [
        ([AssetKey("model_snapshot")], None)]
    assert first.cursor is None

    materialize_selection(defs, instance, [AssetKey("model_snapshot")])
    second = evaluate_landing_sensor(defs, instance, None)
    assert isinstance(second, SensorResult)
    assert [r.partition_key for r in second.run_requests] == list(SHARDS)
    assert all(r.asset_selection == [AssetKey("corpus"), AssetKey("embeddings")] for r in second.run_requests)
    (add_request,) = second.dynamic_partitions_requests
    assert list(add_request.partition_keys) == list(SHARDS)

    instance.add_dynamic_partitions("corpus_shards", list(add_request.partition_keys))
    quiet = evaluate_landing_sensor(defs, instance, second.cursor)
    assert isinstance(quiet, SkipReason) and "no new or changed files among 3" in quiet.skip_message

    (landing / "new_batch.jsonl").write_text(json.dumps({"id": "n1", "text": "A new text."}) + "\n")
    with open(landing / "python_docs.jsonl", "a", encoding="utf-8") as appended:
        appended.write(json.dumps({"id": "extra", "text": "One more paragraph."}) + "\n")
    third = evaluate_landing_sensor(defs, instance, second.cursor)
    assert [r.partition_key for r in third.run_requests] == ["new_batch.jsonl", "python_docs.jsonl"]
    assert list(third.dynamic_partitions_requests[0].partition_keys) == ["new_batch.jsonl"]
    assert len({r.run_key for r in [*second.run_requests, *third.run_requests]}) == 5


def test_model_revision_sensor_is_quiet_offline_for_hub_models(tmp_path, instance, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    defs = build_definitions(store_root=str(tmp_path / "store"),
                             encoder=EncoderResource(model_name="some-org/some-model"))
    defs.resources["embedding_store"].open().record_model_snapshot(ModelSnapshot(
        model_key="some-org/some-model", model="some-org/some-model", revision="a" * 40,
        source="hub", path=str(tmp_path / "nowhere"), dim=8))
    with build_sensor_context(instance=instance, definitions=defs, resources=defs.resources) as context:
        result = model_revision_sensor(context)
    assert isinstance(result, SkipReason)
    assert result.skip_message == "offline (HF_HUB_OFFLINE or local_files_only): hub not asked"


def test_model_revision_sensor_requests_a_snapshot_when_a_local_model_changes(tmp_path, landing, instance):
    from tests.assets.test_pipeline import local_model_copy

    model_dir = local_model_copy(tmp_path / "model")
    defs = build_definitions(store_root=str(tmp_path / "store"), landing_dir=str(landing),
                             encoder=EncoderResource(model_name=str(model_dir)))
    with build_sensor_context(instance=instance, definitions=defs, resources=defs.resources) as context:
        assert isinstance(model_revision_sensor(context), RunRequest)  # nothing recorded yet

        materialize_selection(defs, instance, [AssetKey("model_snapshot")])
        unchanged = model_revision_sensor(context)
        assert isinstance(unchanged, SkipReason) and "is still at sha256:" in unchanged.skip_message

        (model_dir / "NOTES.md").write_text("changed\n")
        request = model_revision_sensor(context)
    assert isinstance(request, RunRequest)
    old = defs.resources["embedding_store"].open().current_model_snapshot(str(model_dir)).revision
    assert request.run_key.startswith(f"model_snapshot:{model_dir}:sha256:")
    assert old not in request.run_key


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


@pytest.mark.parametrize(
    ("relative_path", "key"),
    [
        ("python_docs.jsonl", "python_docs.jsonl"),
        ("My Notes (v2).jsonl", "My_Notes_v2_.jsonl"),
        ("sub dir/ünïcode.csv", "sub_dir__unicode.csv"),
        ("2024/q1/batch...7.parquet", "2024__q1__batch.7.parquet"),
        ("日本語.txt", "_-e1422b28.txt"),
        ("x" * 150 + ".jsonl", "x" * 85 + "-" + hashlib.sha256(("x" * 150 + ".jsonl").encode()).hexdigest()[:8] + ".jsonl"),
    ],
)
def test_partition_keys_of_landing_files_are_dagster_and_path_safe(relative_path, key):
    assert partition_key_for_file(relative_path) == key
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,100}", key) and "..." not in key


def test_landing_sensor_gives_odd_file_names_safe_keys_that_materialize_from_their_files(tmp_path, instance):
    landing = tmp_path / "landing"
    (landing / "sub dir").mkdir(parents=True)
    (landing / "My Notes (v2).jsonl").write_text(
        "".join(json.dumps({"id": f"note-{i}", "text": f"Note number {i} about pandas."}) + "\n" for i in range(3)))
    (landing / "sub dir" / "ünïcode.csv").write_text("id,text\nu1,Crème brûlée recipe.\nu2,Naïve café.\n")
    defs = build_definitions(store_root=str(tmp_path / "store"), landing_dir=str(landing))
    materialize_selection(defs, instance, [AssetKey("model_snapshot")])

    result = evaluate_landing_sensor(defs, instance, None)
    assert [r.partition_key for r in result.run_requests] == ["My_Notes_v2_.jsonl", "sub_dir__unicode.csv"]
    (add_request,) = result.dynamic_partitions_requests
    instance.add_dynamic_partitions("corpus_shards", list(add_request.partition_keys))

    assets = [*defs.assets, *defs.asset_checks]
    for key in add_request.partition_keys:
        assert materialize(assets, instance=instance, resources=defs.resources,
                           selection=[AssetKey("corpus"), AssetKey("embeddings")], partition_key=key).success
    store = defs.resources["embedding_store"].open()
    notes = store.corpus_version("My_Notes_v2_.jsonl")
    assert notes.source_uri == str(landing / "My Notes (v2).jsonl")
    assert store.corpus_version("sub_dir__unicode.csv").source_uri == str(landing / "sub dir" / "ünïcode.csv")
    assert store.read_corpus(notes).column("id").to_pylist() == ["note-0", "note-1", "note-2"]
    with store.connect() as con:
        assert con.execute("SELECT partition, count(*) FROM embeddings GROUP BY 1 ORDER BY 1").fetchall() == [
            ("My_Notes_v2_.jsonl", 3), ("sub_dir__unicode.csv", 2)]
        assert con.execute("SELECT text FROM documents WHERE id = 'u2'").fetchone() == ("Naïve café.",)


def test_two_files_with_the_same_key_are_an_error_naming_both(tmp_path, instance):
    landing = tmp_path / "landing"
    landing.mkdir()
    for name in ("My Notes (v2).jsonl", "My_Notes_v2_.jsonl", "fine.jsonl"):
        (landing / name).write_text(json.dumps({"id": "n1", "text": f"From {name}."}) + "\n")
    defs = build_definitions(store_root=str(tmp_path / "store"), landing_dir=str(landing))
    collision = (r"'My Notes \(v2\).jsonl' and 'My_Notes_v2_.jsonl' map to the same partition key "
                 r"'My_Notes_v2_.jsonl'\. Rename one file of each group\.")
    materialize_selection(defs, instance, [AssetKey("model_snapshot")])
    with pytest.raises(PartitionKeyCollisionError, match=collision):
        evaluate_landing_sensor(defs, instance, None)

    instance.add_dynamic_partitions("corpus_shards", ["My_Notes_v2_.jsonl", "fine.jsonl"])
    assets = [*defs.assets]
    failed = materialize(assets, instance=instance, resources=defs.resources, selection=[AssetKey("corpus")],
                         partition_key="My_Notes_v2_.jsonl", raise_on_error=False)
    (failure,) = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
    assert re.search(collision, failure.step_failure_data.error.to_string())
    assert materialize(assets, instance=instance, resources=defs.resources, selection=[AssetKey("corpus")],
                       partition_key="fine.jsonl").success
    assert defs.resources["embedding_store"].open().corpus_partitions() == ["fine.jsonl"]
