"""The sensors: new landing files, and a new revision of the model, against real stores."""

import json
import os
import re

import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    RunRequest,
    SensorResult,
    SkipReason,
    build_sensor_context,
    materialize,
)

from embedding_assets.backfill import materialize_selection
from embedding_assets.definitions import build_definitions
from embedding_assets.resources import EncoderResource
from embedding_assets.sensors import corpus_landing_sensor, model_revision_sensor
from embedding_core.landing import PartitionKeyCollisionError
from embedding_core.store import ModelSnapshot
from tests.assets.conftest import SHARDS, materialize_everything


def evaluate_landing_sensor(defs, instance: DagsterInstance, cursor: str | None):
    # Entered, so the context's resources (and any instance it opens) are closed here, not
    # whenever garbage collection gets to them.
    with build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                              resources=defs.resources) as context:
        return corpus_landing_sensor(context)


def test_landing_sensor_adds_partitions_and_requests_only_new_or_changed_content(defs, landing, instance):
    # No model snapshot yet: the sensor asks for one (the snapshot_model job) and leaves the files.
    first = evaluate_landing_sensor(defs, instance, None)
    assert [(r.job_name, r.partition_key) for r in first.run_requests] == [("snapshot_model", None)]
    assert first.cursor is None

    materialize_selection(defs, instance, [AssetKey("model_snapshot")])
    second = evaluate_landing_sensor(defs, instance, None)
    assert isinstance(second, SensorResult)
    assert [r.partition_key for r in second.run_requests] == list(SHARDS)
    assert all(r.job_name == "embed_corpus" for r in second.run_requests)
    (add_request,) = second.dynamic_partitions_requests
    assert list(add_request.partition_keys) == list(SHARDS)

    instance.add_dynamic_partitions("corpus_shards", list(add_request.partition_keys))
    quiet = evaluate_landing_sensor(defs, instance, second.cursor)
    assert isinstance(quiet, SkipReason) and "no new or changed files among 3" in quiet.skip_message

    # `touch`: a new modification time, the same content: nothing runs.
    os.utime(landing / "python_docs.jsonl", (1e9, 1e9))
    touched = evaluate_landing_sensor(defs, instance, second.cursor)
    assert touched.run_requests == [] and touched.cursor != second.cursor

    (landing / "new_batch.jsonl").write_text(json.dumps({"id": "n1", "text": "A new text."}) + "\n")
    with open(landing / "python_docs.jsonl", "a", encoding="utf-8") as appended:
        appended.write(json.dumps({"id": "extra", "text": "One more paragraph."}) + "\n")
    third = evaluate_landing_sensor(defs, instance, touched.cursor)
    assert [r.partition_key for r in third.run_requests] == ["new_batch.jsonl", "python_docs.jsonl"]
    assert list(third.dynamic_partitions_requests[0].partition_keys) == ["new_batch.jsonl"]
    assert len({r.run_key for r in [*second.run_requests, *third.run_requests]}) == 5


def test_landing_sensor_first_tick_after_a_backfill_runs_nothing(defs, landing, instance):
    """`make demo` then `make dev`: the files the catalog already holds with the same content
    do not run again on the sensor's first tick (its cursor is seeded from the catalog)."""
    materialize_everything(defs, instance)
    first = evaluate_landing_sensor(defs, instance, None)
    assert first.run_requests == [] and first.dynamic_partitions_requests == []
    assert sorted(json.loads(first.cursor)) == sorted(SHARDS)
    store = defs.resources["embedding_store"].open()
    assert json.loads(first.cursor)["python_docs.jsonl"][1] == store.corpus_version("python_docs.jsonl").corpus_version

    # A file rewritten with the same records (a new mtime and inode) still runs nothing; an
    # edited one runs, alone.
    (landing / "package_summaries.csv").write_bytes((landing / "package_summaries.csv").read_bytes())
    lines = (landing / "python_docs.jsonl").read_text().splitlines(keepends=True)
    (landing / "python_docs.jsonl").write_text("".join(lines[:-1]))
    os.utime(landing / "package_summaries.csv", (2e9, 2e9))
    second = evaluate_landing_sensor(defs, instance, first.cursor)
    assert [(r.job_name, r.partition_key) for r in second.run_requests] == [("embed_corpus", "python_docs.jsonl")]


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
