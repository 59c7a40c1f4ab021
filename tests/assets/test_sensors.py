"""The sensors: new landing files, and a new revision of the model, against real stores."""

import json
import os
import re

from dagster import (
    AssetKey,
    DagsterInstance,
    DagsterRunStatus,
    RunRequest,
    SensorResult,
    SkipReason,
    build_sensor_context,
    materialize,
)

from embedding_assets.backfill import landing_partitions, materialize_selection
from embedding_assets.definitions import build_definitions
from embedding_assets.resources import EncoderResource
from embedding_assets.sensors import corpus_landing_sensor, model_revision_sensor
from embedding_core.hub import DEFAULT_MODEL_NAME
from embedding_core.landing import bucket_of
from embedding_core.store import ModelSnapshot
from tests.assets.conftest import ROWS_PER_SHARD, materialize_everything


def evaluate_landing_sensor(defs, instance: DagsterInstance, cursor: str | None):
    # Entered, so the context's resources (and any instance it opens) are closed here, not
    # whenever garbage collection gets to them.
    with build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                              resources=defs.resources) as context:
        return corpus_landing_sensor(context)


RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def bucket_range(request: RunRequest) -> list[str]:
    """The buckets of a run request's partition range."""
    keys = landing_partitions()
    return keys[keys.index(request.tags[RANGE_START]):keys.index(request.tags[RANGE_END]) + 1]


def test_landing_sensor_asks_for_a_snapshot_then_one_run_over_the_changed_buckets(defs, landing, instance):
    store_id = defs.resources["embedding_store"].open().store_id
    # No model snapshot yet: the sensor asks for one (the snapshot_model job) and leaves the files.
    first = evaluate_landing_sensor(defs, instance, None)
    assert [(r.job_name, r.partition_key, r.run_key) for r in first.run_requests] == [
        ("snapshot_model", None, f"model_snapshot:{DEFAULT_MODEL_NAME}:{store_id}:0")]
    assert json.loads(first.cursor) == {"store": store_id, "buckets": {}, "generation": 1}

    materialize_selection(defs, instance, [AssetKey("model_snapshot")])
    second = evaluate_landing_sensor(defs, instance, first.cursor)
    assert isinstance(second, SensorResult)
    (request,) = second.run_requests  # one run for every changed bucket, not one per file
    assert request.job_name == "embed_corpus" and request.run_key == f"landing:{store_id}:1"
    assert request.tags == {RANGE_START: "bucket-04", RANGE_END: "bucket-11", "embedding/trigger": "landing-sensor",
                            "embedding/buckets": "bucket-04,bucket-07,bucket-11"}
    assert second.dynamic_partitions_requests == []
    cursor = json.loads(second.cursor)
    assert (cursor["store"], sorted(cursor["buckets"]), cursor["generation"]) == (
        store_id, ["bucket-04", "bucket-07", "bucket-11"], 2)

    quiet = evaluate_landing_sensor(defs, instance, second.cursor)
    assert isinstance(quiet, SkipReason) and "no new, changed or deleted file among 3" in quiet.skip_message

    # `touch`: a new fingerprint; the sensor reads no file, so the bucket runs (the run reads
    # the file and stores nothing new: test_landing_sensor_first_tick_after_a_backfill_...).
    os.utime(landing / "python_docs.jsonl", (1e9, 1e9))
    touched = evaluate_landing_sensor(defs, instance, second.cursor)
    assert [r.tags["embedding/buckets"] for r in touched.run_requests] == ["bucket-04"]

    (landing / "new_batch.jsonl").write_text(json.dumps({"id": "n1", "text": "A new text."}) + "\n")
    with open(landing / "python_docs.jsonl", "a", encoding="utf-8") as appended:
        appended.write(json.dumps({"id": "extra", "text": "One more paragraph."}) + "\n")
    third = evaluate_landing_sensor(defs, instance, touched.cursor)
    (request,) = third.run_requests
    assert bucket_of("new_batch.jsonl", 16) == "bucket-11"
    assert (request.tags[RANGE_START], request.tags[RANGE_END], request.tags["embedding/buckets"]) == (
        "bucket-04", "bucket-11", "bucket-04,bucket-11")
    # Every request has its own run key, however often a bucket changes.
    keys = [r.run_key for r in [*first.run_requests, *second.run_requests, *touched.run_requests, request]]
    assert keys == [f"model_snapshot:{DEFAULT_MODEL_NAME}:{store_id}:0", *(f"landing:{store_id}:{n}" for n in (1, 2, 3))]

    # While a landing run is queued or running, the sensor waits (and keeps its cursor).
    queued = instance.create_run_for_job(defs.resolve_job_def("embed_corpus"), status=DagsterRunStatus.NOT_STARTED,
                                         tags={"embedding/trigger": "landing-sensor"})
    waiting = evaluate_landing_sensor(defs, instance, touched.cursor)
    assert isinstance(waiting, SkipReason) and queued.run_id in waiting.skip_message

    # A store made anew under the same instance: every bucket with a file again.
    other = build_definitions(store_root=str(landing.parent / "other_store"), landing_dir=str(landing))
    materialize_selection(other, instance, [AssetKey("model_snapshot")])
    instance.report_run_canceled(queued)
    anew = evaluate_landing_sensor(other, instance, third.cursor)
    other_id = other.resources["embedding_store"].open().store_id
    assert other_id != store_id
    assert [(r.run_key, r.tags["embedding/buckets"]) for r in anew.run_requests] == [
        (f"landing:{other_id}:4", "bucket-04,bucket-07,bucket-11")]


def test_landing_sensor_first_tick_after_a_backfill_runs_only_what_reads_nothing(defs, landing, instance):
    """`make demo` then `make dev`: the sensor's first tick sees every bucket as new, but its
    run reads no file whose fingerprint the store recorded, and encodes nothing."""
    materialize_everything(defs, instance)
    store = defs.resources["embedding_store"].open()
    versions = sorted(v.version_id for v in store.embedding_versions())
    first = evaluate_landing_sensor(defs, instance, None)
    (request,) = first.run_requests
    assert request.tags["embedding/buckets"] == "bucket-04,bucket-07,bucket-11"
    (result,) = materialize_selection(defs, instance, [AssetKey("corpus"), AssetKey("embeddings")],
                                      bucket_range(request), tags=request.tags)
    assert result.success
    corpus = {e.partition: e.materialization.metadata for e in result.get_asset_materialization_events()
              if e.asset_key == AssetKey("corpus")}
    assert {bucket: (m["files_read"].value, m["files_unchanged"].value) for bucket, m in corpus.items()
            if m["files"].value} == {"bucket-04": (0, 1), "bucket-07": (0, 1), "bucket-11": (0, 1)}
    assert sorted(v.version_id for v in store.embedding_versions()) == versions

    # A file rewritten with the same records (a new mtime) is read again but stores no new
    # version; an edited one gets a new corpus version and new vectors, alone.
    docs_before = store.corpus_version("python_docs.jsonl")
    packages_before = store.corpus_version("package_summaries.csv")
    (landing / "package_summaries.csv").write_bytes((landing / "package_summaries.csv").read_bytes())
    lines = (landing / "python_docs.jsonl").read_text().splitlines(keepends=True)
    (landing / "python_docs.jsonl").write_text("".join(lines[:-1]))
    os.utime(landing / "package_summaries.csv", (2e9, 2e9))
    second = evaluate_landing_sensor(defs, instance, first.cursor)
    (request,) = second.run_requests
    assert request.tags["embedding/buckets"] == "bucket-04,bucket-11"
    assert materialize_selection(defs, instance, [AssetKey("corpus"), AssetKey("embeddings")],
                                 bucket_range(request), tags=request.tags)[0].success
    assert store.corpus_version("package_summaries.csv").corpus_version == packages_before.corpus_version
    assert [v.rows for v in store.embedding_versions("package_summaries.csv")] == [ROWS_PER_SHARD]
    assert store.corpus_version("python_docs.jsonl").corpus_version != docs_before.corpus_version
    assert [v.rows for v in store.embedding_versions("python_docs.jsonl")] == [ROWS_PER_SHARD, ROWS_PER_SHARD - 1]
    assert len(store.embedding_versions()) == len(versions) + 1


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
    store_id = defs.resources["embedding_store"].open().store_id
    with build_sensor_context(instance=instance, definitions=defs, resources=defs.resources) as context:
        first = model_revision_sensor(context)  # nothing recorded yet: the first snapshot of this store
        assert isinstance(first, RunRequest) and first.run_key == f"model_snapshot:{model_dir}:{store_id}"

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
    (request,) = result.run_requests
    buckets = [bucket_of(key, 16) for key in ("My_Notes_v2_.jsonl", "sub_dir__unicode.csv")]
    assert request.tags["embedding/buckets"] == ",".join(buckets) == "bucket-07,bucket-11"

    assets = list(defs.assets)
    for bucket in buckets:
        assert materialize(assets, instance=instance, resources=defs.resources,
                           selection=[AssetKey("corpus"), AssetKey("embeddings")], partition_key=bucket).success
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
                 r"'My_Notes_v2_.jsonl'; rename one")
    materialize_selection(defs, instance, [AssetKey("model_snapshot")])
    # The sensor reads no file: the colliding names are a change of their bucket like any other.
    (request,) = evaluate_landing_sensor(defs, instance, None).run_requests
    assert request.tags["embedding/buckets"] == "bucket-07,bucket-13"

    # The run fails the collision's bucket, naming both files; the other file is stored.
    assets = [*defs.assets]
    failed = materialize(assets, instance=instance, resources=defs.resources, selection=[AssetKey("corpus")],
                         tags={RANGE_START: "bucket-07", RANGE_END: "bucket-13"}, raise_on_error=False)
    (failure,) = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.to_string()
    assert "corpus: 1 of 7 partition(s) failed" in message
    assert re.search("bucket-07: My_Notes_v2_.jsonl: " + collision, message)
    assert defs.resources["embedding_store"].open().corpus_partitions() == ["fine.jsonl"]
