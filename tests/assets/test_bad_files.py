"""One bad file does not fail its whole multi-partition run (issue 10, item 4).

As reported: a landing folder of 32 files, 7 of them bad, backfilled in runs of 8
partitions. Before, 0 of 32 partitions were stored and only the first bad file was named.
"""

import json
from pathlib import Path

import pytest
from dagster import AssetKey, AssetRecordsFilter

from embedding_assets.backfill import materialize_selection, register_landing_partitions
from embedding_assets.definitions import build_definitions
from embedding_assets.shards import SHARD_ERROR, ShardsFailedError

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
    "f30_vanished.jsonl": (b'{"id": "a", "text": "x"}\n', "has no file in"),
}


def write_landing(landing: Path) -> dict[str, int]:
    """32 files: 7 bad, an empty one, one with a broken JSON row; returns good name -> rows."""
    landing.mkdir()
    good = {}
    for index in range(32):
        name = next((bad for bad in BAD_FILES if bad.startswith(f"f{index:02d}_")), None)
        if name:
            (landing / name).write_bytes(BAD_FILES[name][0])
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
    keys = register_landing_partitions(defs, instance)
    assert len(keys) == 32
    (landing / "f30_vanished.jsonl").unlink()  # gone after it got its partition

    assert materialize_selection(defs, instance, [AssetKey("model_snapshot")])[0].success
    results = materialize_selection(defs, instance, [AssetKey("corpus"), AssetKey("embeddings")], keys)
    assert len(results) == 4 and not any(result.success for result in results)

    store = defs.resources["embedding_store"].open()
    for name in BAD_FILES:
        assert store.corpus_version(name) is None
    for name, rows in good.items():
        assert store.corpus_version(name).rows == rows, name
        version = store.current_embedding_version(name, defs.resources["encoder"].model_name)
        assert version is not None and version.rows == rows, name
        assert len(store.read_embeddings(version)[1]) == rows

    # Each run fails at the end with one error naming every bad file of its range and why.
    named = {}
    for result, run_keys in zip(results, [keys[i:i + 8] for i in range(0, 32, 8)], strict=True):
        failures = result.get_step_failure_events()
        assert [event.step_key for event in failures] == ["embeddings"]
        error = failures[0].step_failure_data.error.cause  # Dagster wraps what the step raised
        assert error.cls_name == ShardsFailedError.__name__
        bad_here = [name for name in BAD_FILES if name in run_keys]
        assert f"embeddings: {len(bad_here)} of 8 partition(s) failed, the other " \
               f"{8 - len(bad_here)} were stored" in error.message
        for name in bad_here:
            line = next(line for line in error.message.splitlines() if line.startswith(f"  {name}: "))
            named[name] = line
            assert BAD_FILES[name][1] in line and str(landing) in line, line
    assert sorted(named) == sorted(BAD_FILES)

    # Dagster records what was stored, and only that, for embeddings.
    materialized = {record.partition_key for record in instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("embeddings")), limit=100).records}
    assert materialized == set(good)
    bad_corpus = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("corpus"), asset_partitions=["f26_duplicate_ids.jsonl"]),
        limit=1).records[0].asset_materialization
    assert BAD_FILES["f26_duplicate_ids.jsonl"][1] in bad_corpus.metadata[SHARD_ERROR].value


def test_a_run_whose_every_file_is_bad_fails_in_corpus_naming_all(tmp_path, instance):
    landing = tmp_path / "landing"
    landing.mkdir()
    for name in ("f03_not_utf8.jsonl", "f17_no_text_field.jsonl"):
        (landing / name).write_bytes(BAD_FILES[name][0])
    defs = build_definitions(store_root=str(tmp_path / "store"), landing_dir=str(landing))
    keys = register_landing_partitions(defs, instance)
    assert materialize_selection(defs, instance, [AssetKey("model_snapshot")])[0].success
    [result] = materialize_selection(defs, instance, [AssetKey("corpus"), AssetKey("embeddings")], keys)
    failure = result.get_step_failure_events()
    assert [event.step_key for event in failure] == ["corpus"]
    message = failure[0].step_failure_data.error.cause.message
    assert "corpus: 2 of 2 partition(s) failed" in message
    assert all(BAD_FILES[name][1] in message for name in keys)
