"""One bad file does not fail its whole multi-partition run (issue 10, item 4).

As reported: a landing folder of 32 files, 7 of them bad, backfilled in runs of 8
partitions. Before, 0 of 32 partitions were stored and only the first bad file was named.
Partitions are landing buckets now: the 32 files fall in 13 of the 16 buckets, a bad file
fails its bucket (naming the file), and every good file is stored, bad bucket or not.
"""

import json
from pathlib import Path

import pytest
from dagster import AssetKey, AssetPartitionStatus

from embedding_assets.backfill import landing_partitions, materialize_selection
from embedding_assets.definitions import build_definitions
from embedding_assets.partitions import corpus_partitions
from embedding_assets.shards import ShardsFailedError
from embedding_core.landing import bucket_of

ROWS = 3
# File name -> (content, the reason its step error must give); None: a good file.
BAD_FILES = {
    "f03_not_utf8.jsonl": (b'{"id": "a", "text": "caf\xe9"}\n', "not UTF-8 text (byte 24: invalid continuation byte)"),
    "f05_header_quote.csv": (b'"id,text\na,b\n', "the header's quote, opened on line 1, is never closed"),
    "f09_broken.parquet": (b"PAR1 this is not a parquet file", "not a readable Parquet file"),
    "f17_no_text_field.jsonl": (b'{"id": "a", "body": "x"}\n{"id": "b", "body": "y"}\n',
                                "no row has the text field 'text' (fields found: ['body', 'id'])"),
    "f20_no_text_column.csv": (b"id,body\na,x\n", "no row has the text field 'text'"),
    "f26_duplicate_ids.jsonl": (b'{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n',
                                "1 duplicate id(s), each used by more than one row: 'a' (lines 1, 2)"),
}
VANISHED = "f30_vanished.jsonl"  # listed once, gone before the run: not read, not a failure
# The bucket of each bad file (bucket_of(name, 16)), and the buckets of a run of 8.
BAD_BUCKETS = {"f05_header_quote.csv": "bucket-00", "f03_not_utf8.jsonl": "bucket-02",
               "f09_broken.parquet": "bucket-03", "f17_no_text_field.jsonl": "bucket-05",
               "f20_no_text_column.csv": "bucket-09", "f26_duplicate_ids.jsonl": "bucket-13"}


def write_landing(landing: Path) -> dict[str, int]:
    """32 files: 7 bad, an empty one, one with a broken JSON row; returns good name -> rows."""
    landing.mkdir()
    good = {}
    for index in range(32):
        name = next((bad for bad in BAD_FILES if bad.startswith(f"f{index:02d}_")), None)
        if name:
            (landing / name).write_bytes(BAD_FILES[name][0])
            continue
        if index == 30:
            (landing / VANISHED).write_text('{"id": "a", "text": "x"}\n', encoding="utf-8")
            continue
        if index == 12:
            name, rows = "f12_empty.jsonl", []
        elif index == 14:
            name, rows = "f14_broken_json_row.jsonl", [json.dumps({"id": "ok", "text": "kept"}), '{"id": "x", "te']
        else:
            name = f"f{index:02d}_good.jsonl"
            rows = [json.dumps({"id": f"{index}-{row}", "text": f"text {row} of file {index}"})
                    for row in range(ROWS)]
        (landing / name).write_text("".join(row + "\n" for row in rows), encoding="utf-8")
        good[name] = {12: 0, 14: 1}.get(index, ROWS)
    return good


@pytest.mark.slow
def test_seven_bad_files_of_32_fail_their_runs_naming_each_and_the_good_25_are_stored(tmp_path, instance):
    landing = tmp_path / "landing"
    good = write_landing(landing)
    defs = build_definitions(store_root=str(tmp_path / "store"), landing_dir=str(landing))
    assert {name: bucket_of(name, 16) for name in BAD_FILES} == BAD_BUCKETS
    assert bucket_of(VANISHED, 16) == "bucket-14"  # alone in its bucket
    keys = landing_partitions()
    assert len(keys) == 16
    (landing / VANISHED).unlink()  # gone after the sensor could have seen it

    assert materialize_selection(defs, instance, [AssetKey("model_snapshot")])[0].success
    results = materialize_selection(defs, instance, [AssetKey("corpus"), AssetKey("embeddings")], keys)
    assert len(results) == 2 and not any(result.success for result in results)

    store = defs.resources["embedding_store"].open()
    for name in [*BAD_FILES, VANISHED]:
        assert store.corpus_version(name) is None
    assert sorted(store.landing_records()) == sorted(good)
    for name, rows in good.items():
        assert store.corpus_version(name).rows == rows, name
        version = store.current_embedding_version(name, defs.resources["encoder"].model_name)
        assert version is not None and version.rows == rows, name
        assert len(store.read_embeddings(version)[1]) == rows

    # Each run fails at the end with one error naming every bad bucket of its range, its
    # file and why.
    named = {}
    for result, run_keys in zip(results, [keys[:8], keys[8:]], strict=True):
        assert (result.dagster_run.tags["dagster/asset_partition_range_start"],
                result.dagster_run.tags["dagster/asset_partition_range_end"]) == (run_keys[0], run_keys[-1])
        failures = result.get_step_failure_events()
        assert [event.step_key for event in failures] == ["landing_buckets"]
        error = failures[0].step_failure_data.error.cause  # Dagster wraps what the step raised
        assert error.cls_name == ShardsFailedError.__name__
        bad_here = [name for name, bucket in BAD_BUCKETS.items() if bucket in run_keys]
        assert len(bad_here) == (4 if run_keys[0] == "bucket-00" else 2)
        assert f"corpus + embeddings: {len(bad_here)} of 8 partition(s) failed, the other " \
               f"{8 - len(bad_here)} were stored" in error.message
        for name in bad_here:
            line = next(line for line in error.message.splitlines()
                        if line.startswith(f"  {BAD_BUCKETS[name]}: "))
            named[name] = line
            assert f"  {BAD_BUCKETS[name]}: {name}: " in line, line
            assert BAD_FILES[name][1] in line and str(landing) in line, line
    assert sorted(named) == sorted(BAD_FILES)

    # Dagster records what was stored, and only that, for both assets: every bucket without
    # a bad file (the empty buckets and the vanished file's included) is materialized, each
    # bucket with a bad file failed (the good files of a bad bucket are stored all the same).
    for asset in ("corpus", "embeddings"):
        status = instance.get_status_by_partition(AssetKey(asset), keys, corpus_partitions)
        assert {key for key, value in status.items() if value == AssetPartitionStatus.MATERIALIZED} \
            == set(keys) - set(BAD_BUCKETS.values()), asset
        assert {key for key, value in status.items() if value == AssetPartitionStatus.FAILED} \
            == set(BAD_BUCKETS.values()), asset


def test_a_run_whose_every_file_is_bad_fails_in_corpus_naming_all(tmp_path, instance):
    landing = tmp_path / "landing"
    landing.mkdir()
    for name in ("f03_not_utf8.jsonl", "f17_no_text_field.jsonl"):
        (landing / name).write_bytes(BAD_FILES[name][0])
    defs = build_definitions(store_root=str(tmp_path / "store"), landing_dir=str(landing))
    buckets = ["bucket-02", "bucket-05"]  # one file each, not adjacent: two runs
    assert [BAD_BUCKETS[name] for name in ("f03_not_utf8.jsonl", "f17_no_text_field.jsonl")] == buckets
    assert materialize_selection(defs, instance, [AssetKey("model_snapshot")])[0].success
    results = materialize_selection(defs, instance, [AssetKey("corpus"), AssetKey("embeddings")], buckets)
    assert len(results) == 2
    for result, name in zip(results, ("f03_not_utf8.jsonl", "f17_no_text_field.jsonl"), strict=True):
        failure = result.get_step_failure_events()
        assert [event.step_key for event in failure] == ["landing_buckets"]
        message = failure[0].step_failure_data.error.cause.message
        assert "corpus + embeddings: 1 of 1 partition(s) failed" in message
        assert f"  {BAD_BUCKETS[name]}: {name}: " in message and BAD_FILES[name][1] in message
    assert defs.resources["embedding_store"].open().landing_records() == {}


def test_a_four_bucket_run_with_one_bad_file_records_three_materialized_one_failed_and_staleness(
        tmp_path, instance):
    """Issue 18: one run of 4 buckets, one bad file. Both assets: 3 buckets materialized and 1
    failed; each materialization carries its bucket's data version, so staleness is per bucket
    (the bad bucket MISSING, the others FRESH), and moves per bucket after."""
    from dagster._core.definitions.data_version import StaleStatus
    from dagster._utils.test.data_versions import get_stale_status_resolver

    landing = tmp_path / "landing"
    landing.mkdir()
    files = {"bucket-00": "shard_17.jsonl", "bucket-01": "shard_08.jsonl", "bucket-02": "shard_00.jsonl",
             "bucket-03": "shard_25.jsonl"}
    assert {bucket: bucket_of(name, 16) for bucket, name in files.items()} == {b: b for b in files}
    for index, name in enumerate(files.values()):
        (landing / name).write_text("".join(json.dumps({"id": f"{index}-{row}", "text": f"Text {row} of file {index}."})
                                            + "\n" for row in range(ROWS)))
    bad = files["bucket-02"]
    (landing / bad).write_bytes(BAD_FILES["f26_duplicate_ids.jsonl"][0])
    defs = build_definitions(store_root=str(tmp_path / "store"), landing_dir=str(landing))
    buckets = list(files)
    assert materialize_selection(defs, instance, [AssetKey("model_snapshot")])[0].success
    [result] = materialize_selection(defs, instance, [AssetKey("corpus"), AssetKey("embeddings")], buckets)
    assert not result.success  # one run, failed naming the bad file
    assert f"  bucket-02: {bad}: " in result.get_step_failure_events()[0].step_failure_data.error.cause.message

    def statuses(asset: str) -> dict:
        return {key: value.value for key, value in instance.get_status_by_partition(
            AssetKey(asset), buckets, corpus_partitions).items()}

    expected = {"bucket-00": "MATERIALIZED", "bucket-01": "MATERIALIZED", "bucket-02": "FAILED",
                "bucket-03": "MATERIALIZED"}
    assert statuses("corpus") == expected and statuses("embeddings") == expected

    def staleness() -> dict:
        resolver = get_stale_status_resolver(instance, [*defs.assets])
        return {bucket: resolver.get_status(AssetKey("embeddings"), bucket) for bucket in buckets}

    assert staleness() == {"bucket-00": StaleStatus.FRESH, "bucket-01": StaleStatus.FRESH,
                           "bucket-02": StaleStatus.MISSING, "bucket-03": StaleStatus.FRESH}

    # The file fixed and its bucket re-run: every bucket materialized and fresh.
    (landing / bad).write_text(json.dumps({"id": "fixed", "text": "A fixed file."}) + "\n")
    assert materialize_selection(defs, instance, [AssetKey("corpus"), AssetKey("embeddings")], ["bucket-02"])[0].success
    assert statuses("embeddings") == dict.fromkeys(buckets, "MATERIALIZED")
    assert set(staleness().values()) == {StaleStatus.FRESH}

    # One file changes and only its corpus is re-run: its bucket's embeddings are stale, no other.
    (landing / files["bucket-01"]).write_text(json.dumps({"id": "new", "text": "New content."}) + "\n")
    assert materialize_selection(defs, instance, [AssetKey("corpus")], ["bucket-01"])[0].success
    assert staleness() == {"bucket-00": StaleStatus.FRESH, "bucket-01": StaleStatus.STALE,
                           "bucket-02": StaleStatus.FRESH, "bucket-03": StaleStatus.FRESH}
    # A corpus re-run that finds nothing new keeps the same data version: nothing goes stale.
    assert materialize_selection(defs, instance, [AssetKey("corpus")], ["bucket-03"])[0].success
    assert staleness()["bucket-03"] == StaleStatus.FRESH
