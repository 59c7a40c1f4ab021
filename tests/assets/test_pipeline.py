"""corpus -> model_snapshot -> embeddings materialized in process against a temporary store."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from dagster import AssetCheckSeverity, AssetKey, AssetSelection, DagsterInstance, materialize
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver

from embedding_assets.backfill import landing_partitions, materialize_selection
from embedding_assets.checks import embeddings_match_model
from embedding_assets.definitions import build_definitions
from embedding_assets.resources import EncoderResource
from embedding_core.hub import DEFAULT_MODEL_NAME, bundled_model_path, folder_content_hash
from embedding_core.landing import bucket_of
from embedding_core.store import EmbeddingParams, corpus_table
from tests.assets.conftest import ROWS_PER_SHARD, SHARDS, append_long_docs, materialize_everything

# The landing buckets (Dagster partitions) of the sample files.
DOCS_BUCKET = bucket_of("python_docs.jsonl", 16)  # bucket-04
STDLIB_BUCKET = bucket_of("stdlib_docstrings.txt", 16)  # bucket-07
PACKAGES_BUCKET = bucket_of("package_summaries.csv", 16)  # bucket-11


def test_sample_files_fall_in_three_distinct_buckets():
    assert (DOCS_BUCKET, STDLIB_BUCKET, PACKAGES_BUCKET) == ("bucket-04", "bucket-07", "bucket-11")


def latest_materialization(instance: DagsterInstance, key: str, partition: str | None = None):
    from dagster import AssetRecordsFilter

    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(key), asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    return records[0].asset_materialization


def test_whole_graph_stores_vectors_equal_to_sentence_transformers(defs, instance, oracle):
    materialize_everything(defs, instance)
    store = defs.resources["embedding_store"].open()
    snapshot = store.current_model_snapshot(DEFAULT_MODEL_NAME)
    assert (snapshot.source, snapshot.dim, snapshot.revision) == (
        "bundled", 384, folder_content_hash(bundled_model_path()))

    with store.connect() as con:
        rows = con.execute(
            "SELECT e.partition, e.id, d.text, e.embedding, e.revision FROM embeddings e "
            "JOIN documents d USING (partition, id) ORDER BY e.partition, e.id"
        ).fetchall()
    assert sorted({row[0] for row in rows}) == list(SHARDS)
    assert len(rows) == ROWS_PER_SHARD * len(SHARDS)
    assert {row[4] for row in rows} == {snapshot.revision}
    expected = oracle.encode([row[2] for row in rows], convert_to_numpy=True)
    np.testing.assert_allclose(np.array([row[3] for row in rows]), expected, atol=2e-5)


def test_materializations_carry_rows_revision_dim_throughput_path_and_preview(defs, instance):
    materialize_everything(defs, instance)
    store = defs.resources["embedding_store"].open()
    snapshot = store.current_model_snapshot(DEFAULT_MODEL_NAME)
    revision = snapshot.revision

    snapshot_event = latest_materialization(instance, "model_snapshot")
    assert snapshot_event.metadata["revision"].value == revision
    assert snapshot_event.metadata["dim"].value == 384
    assert snapshot_event.metadata["pooling"].value == "mean"
    assert snapshot_event.tags["dagster/data_version"] == revision

    assert "prompts" not in snapshot_event.metadata  # the model has none: no empty {} shown
    assert snapshot_event.metadata["dagster/uri"].value == snapshot.path

    # A bucket's materialization: the files of the bucket (here python_docs.jsonl alone).
    corpus_event = latest_materialization(instance, "corpus", DOCS_BUCKET)
    assert corpus_event.metadata["dagster/row_count"].value == ROWS_PER_SHARD
    assert [c.name for c in corpus_event.metadata["dagster/column_schema"].value.columns] == [
        "id", "text", "text_sha256"]
    assert (corpus_event.metadata["files"].value, corpus_event.metadata["files_read"].value,
            corpus_event.metadata["files_unchanged"].value) == (1, 1, 0)
    assert (corpus_event.metadata["rows_read"].value, corpus_event.metadata["rejected_rows"].value) == (
        ROWS_PER_SHARD, 0)
    # Nothing deleted, retired or failed: no empty {} or [] shown.
    assert not {"files_deleted_rows_kept", "files_retired", "files_failed"} & set(corpus_event.metadata)
    corpus_preview = corpus_event.metadata["preview"].value
    first_id = store.read_corpus(store.corpus_version("python_docs.jsonl")).column("id")[0].as_py()
    assert corpus_preview.records[0].data["id"] == first_id and len(corpus_preview.records) == 5
    assert corpus_event.metadata["preview_source"].value == "python_docs.jsonl"
    assert corpus_event.metadata["lake_snapshot"].value == str(
        store.corpus_version("python_docs.jsonl").snapshot_id)
    # Each file is versioned in the store, with its landing record.
    record = store.landing_records()["python_docs.jsonl"]
    assert (record.state, record.corpus_version) == (
        "stored", store.corpus_version("python_docs.jsonl").corpus_version)

    event = latest_materialization(instance, "embeddings", STDLIB_BUCKET)
    metadata = {key: value.value for key, value in event.metadata.items()}
    version = store.current_embedding_version("stdlib_docstrings.txt", DEFAULT_MODEL_NAME)
    assert metadata["dagster/row_count"] == metadata["encoded_rows"] == ROWS_PER_SHARD
    assert (metadata["files"], metadata["new_versions"], metadata["reused_rows"]) == (1, 1, 0)
    assert metadata["preview_source"] == "stdlib_docstrings.txt"
    assert [(c.name, c.type) for c in metadata["dagster/column_schema"].columns] == [
        ("id", "string"), ("text_sha256", "string"), ("embedding", "float32[384]")]
    assert metadata["dagster/uri"] == store.root
    assert (metadata["revision"], metadata["dim"], metadata["dtype"]) == (revision, "384", "float32")
    # Identifiers are text: the UI plots numbers over time, which means nothing for them.
    assert metadata["lake_snapshot"] == str(version.snapshot_id)
    assert metadata["catalog"] == store.catalog_label
    assert version.bytes > ROWS_PER_SHARD * 384 * 4
    assert metadata["size"] == f"{version.bytes / 1024:.1f} KiB"
    assert len(store.read_embeddings(version)[1]) == ROWS_PER_SHARD
    assert metadata["sentences_per_second"] > 0
    assert metadata["encode_seconds"] > 0
    assert metadata["preview"].records[0].data["id"] == "stdlib_docstrings:1"
    assert abs(metadata["preview"].records[0].data["norm"] - 1.0) < 1e-3


def test_rematerializing_unchanged_inputs_encodes_nothing(defs, instance):
    materialize_everything(defs, instance)
    store = defs.resources["embedding_store"].open()
    before = [v.version_id for v in store.embedding_versions()]
    materialize_everything(defs, instance)
    assert [v.version_id for v in store.embedding_versions()] == before
    corpus_event = latest_materialization(instance, "corpus", DOCS_BUCKET)
    # The file's fingerprint matches its landing record: not read again.
    assert (corpus_event.metadata["files_read"].value, corpus_event.metadata["files_unchanged"].value) == (0, 1)
    event = latest_materialization(instance, "embeddings", DOCS_BUCKET)
    assert (event.metadata["encoded_rows"].value, event.metadata["new_versions"].value) == (0, 0)
    assert event.metadata["files"].value == 1
    # Nothing encoded: no throughput at all rather than null/0 (which erased the UI's plot).
    assert "sentences_per_second" not in event.metadata and "encode_seconds" not in event.metadata


def test_single_bucket_run_stores_only_the_files_of_that_bucket(defs, instance):
    assets = list(defs.assets)
    materialize(assets, instance=instance, resources=defs.resources, selection=[AssetKey("model_snapshot")])
    result = materialize(assets, instance=instance, resources=defs.resources,
                         selection=[AssetKey("corpus"), AssetKey("embeddings")],
                         partition_key=DOCS_BUCKET)
    assert result.success
    store = defs.resources["embedding_store"].open()
    assert sorted(store.landing_records()) == ["python_docs.jsonl"]
    assert store.corpus_version("python_docs.jsonl").rows == ROWS_PER_SHARD
    assert store.corpus_version("stdlib_docstrings.txt") is None
    version = store.current_embedding_version("python_docs.jsonl", DEFAULT_MODEL_NAME)
    assert version.rows == ROWS_PER_SHARD
    assert [e.partition for e in result.get_asset_materialization_events()] == [DOCS_BUCKET] * 2
    # The shard checks ran in the embeddings step, one result each for the bucket (unit_norm
    # is not evaluated: normalize_embeddings is off), then the spot check.
    checks = {(c.check_name, c.partition): c.passed for c in result.get_asset_check_evaluations()
              if c.asset_key == AssetKey("embeddings")}
    assert checks == {(name, DOCS_BUCKET): True
                      for name in ("rows_match_corpus", "dim_matches_model", "vectors_finite",
                                   "texts_fit_max_seq_length", "embeddings_match_model")}


def test_texts_shared_between_shards_are_reused_not_reencoded_and_cut_texts_counted(tmp_path, landing, instance):
    rows = append_long_docs(landing)
    (landing / "copy_of_docs.jsonl").write_text((landing / "python_docs.jsonl").read_text())
    defs = build_definitions(store_root=str(tmp_path / "store"), landing_dir=str(landing))
    results = materialize_everything(defs, instance)
    copy_bucket = bucket_of("copy_of_docs.jsonl", 16)
    assert copy_bucket == "bucket-06"
    first = latest_materialization(instance, "embeddings", DOCS_BUCKET)
    second = latest_materialization(instance, "embeddings", copy_bucket)
    # Buckets run in order: python_docs.jsonl (bucket-04) encodes, its copy (bucket-06) reuses.
    assert (first.metadata["encoded_rows"].value, first.metadata["reused_rows"].value) == (rows, 0)
    assert (second.metadata["encoded_rows"].value, second.metadata["reused_rows"].value) == (0, rows)
    store = defs.resources["embedding_store"].open()
    assert store.current_embedding_version("copy_of_docs.jsonl", DEFAULT_MODEL_NAME).rows == rows
    # What the encoder cut, counted over every text of the bucket, reused ones included: 2 of
    # 14 texts; (258 - 256) + (911 - 256) of the 958 + 258 + 911 tokens (conftest.LONG_DOCS).
    cut = {"truncated_texts": 2, "truncated_share": 0.1429, "dropped_token_share": 0.3089}
    assert [{key: event.metadata[key].value for key in cut} for event in (first, second)] == [cut, cut]
    checks = {e.partition: e for result in results for e in result.get_asset_check_evaluations()
              if e.check_name == "texts_fit_max_seq_length"}
    # A warning (the run does not fail) for those two buckets; every other one passes.
    assert {e.severity for e in checks.values()} == {AssetCheckSeverity.WARN}
    assert {bucket: e.passed for bucket, e in checks.items()} == {
        bucket: bucket not in (DOCS_BUCKET, copy_bucket) for bucket in landing_partitions()}
    assert {key: value.value for key, value in checks[copy_bucket].metadata.items()} == {
        **cut, "texts": rows, "max_seq_length": 256}
    assert checks[STDLIB_BUCKET].metadata["truncated_texts"].value == 0


def local_model_copy(folder: Path) -> Path:
    """The bundled model as a local folder (files linked, not copied)."""
    source = Path(bundled_model_path())
    for path in source.rglob("*"):
        target = folder / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)
    return folder


def test_model_revision_bump_marks_embeddings_stale_and_adds_versions(tmp_path, landing, instance):
    model_dir = local_model_copy(tmp_path / "model")
    encoder = EncoderResource(model_name=str(model_dir))
    defs = build_definitions(store_root=str(tmp_path / "store"), landing_dir=str(landing), encoder=encoder)
    materialize_everything(defs, instance)
    store = defs.resources["embedding_store"].open()
    old = store.current_model_snapshot(str(model_dir))
    assert old.source == "local"

    (model_dir / "NOTES.md").write_text("a new file: a new content revision\n")
    materialize_selection(defs, instance, [AssetKey("model_snapshot")])
    new = store.current_model_snapshot(str(model_dir))
    assert new.revision != old.revision
    assert latest_materialization(instance, "model_snapshot").tags["dagster/data_version"] == new.revision

    resolver = get_stale_status_resolver(instance, [*defs.assets])
    assert resolver.get_status(AssetKey("embeddings"), DOCS_BUCKET) == StaleStatus.STALE
    assert store.stale_partitions(new, encoder.open().params(new)) == sorted(SHARDS)

    keys = landing_partitions()
    assert all(r.success for r in materialize_selection(defs, instance, [AssetKey("embeddings")], keys))
    versions = store.embedding_versions("python_docs.jsonl")
    assert [v.revision for v in versions] == [old.revision, new.revision]
    assert [len(store.read_embeddings(v)[1]) for v in versions] == [ROWS_PER_SHARD] * 2
    assert store.stale_partitions(new, encoder.open().params(new)) == []
    resolver = get_stale_status_resolver(instance, [*defs.assets])
    assert resolver.get_status(AssetKey("embeddings"), DOCS_BUCKET) == StaleStatus.FRESH


def test_rejected_rows_are_counted_and_the_warning_check_fails(tmp_path, instance):
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "messy.jsonl").write_text("\n".join([
        json.dumps({"id": "a", "text": "A fine sentence."}),
        json.dumps({"text": "No id at all."}),
        json.dumps({"id": "b", "text": ""}),
        "{broken",
        json.dumps({"id": "c", "text": "Another fine sentence."}),
        json.dumps({"id": "d", "text": ["not", "a", "string"]}),
    ]) + "\n")
    defs = build_definitions(store_root=str(tmp_path / "store"), landing_dir=str(landing))
    bucket = bucket_of("messy.jsonl", 16)
    result = materialize([*defs.assets], instance=instance, resources=defs.resources,
                         selection=[AssetKey("corpus")], partition_key=bucket)
    event = latest_materialization(instance, "corpus", bucket)
    assert event.metadata["dagster/row_count"].value == 2
    assert (event.metadata["rows_read"].value, event.metadata["rejected_rows"].value) == (2, 4)
    store = defs.resources["embedding_store"].open()
    stored = store.read_corpus(store.corpus_version("messy.jsonl"))
    assert stored.column("id").to_pylist() == ["a", "c"]
    (check,) = result.get_asset_check_evaluations()
    assert (check.check_name, check.partition, check.passed, check.severity) == (
        "rows_valid", bucket, False, AssetCheckSeverity.WARN)
    assert check.metadata["rejected_rows"].value == 4
    assert check.metadata["rejected_by_reason"].value == {
        "empty_text": 1, "invalid_json": 1, "missing_id": 1, "non_text": 1}
    assert check.metadata["files_with_rejected_rows"].value == ["messy.jsonl"]
    warnings = [e.message for e in instance.all_logs(result.run_id) if e.level == 30]
    assert any("messy.jsonl line 2: missing_id" in message for message in warnings)
    assert any("messy.jsonl line 6: non_text (id 'd')" in message for message in warnings)


def test_duplicate_ids_fail_the_corpus_run_naming_them_and_keep_the_stored_version(tmp_path, landing, instance):
    defs = build_definitions(store_root=str(tmp_path / "store"), landing_dir=str(landing))
    materialize_everything(defs, instance)
    store = defs.resources["embedding_store"].open()
    before = store.corpus_version("python_docs.jsonl")
    before_rows = store.read_corpus(before)
    with store.connect() as con:
        embedded_before = con.execute(
            "SELECT count(*) FROM embeddings WHERE partition = 'python_docs.jsonl'").fetchone()

    records = [json.loads(line) for line in (landing / "python_docs.jsonl").read_text().splitlines()]
    records += [{**records[0], "text": "A second text under the first id."}, records[2]]
    (landing / "python_docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = materialize([*defs.assets], instance=instance, resources=defs.resources,
                         selection=[AssetKey("corpus"), AssetKey("embeddings")],
                         partition_key=DOCS_BUCKET, raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_key == "landing_buckets"
    message = failure.step_failure_data.error.to_string()
    assert (f"{DOCS_BUCKET}: python_docs.jsonl: {landing / 'python_docs.jsonl'}: 2 duplicate id(s), each used by more "
            f"than one row: {records[0]['id']!r} (lines 1, {ROWS_PER_SHARD + 1}), "
            f"{records[2]['id']!r} (lines 3, {ROWS_PER_SHARD + 2}); ids must be unique") in message

    assert store.corpus_version("python_docs.jsonl") == before
    assert store.read_corpus(before).equals(before_rows)
    with store.connect() as con:
        assert con.execute("SELECT count(*) FROM documents WHERE partition = 'python_docs.jsonl'"
                           ).fetchone() == (ROWS_PER_SHARD,)
        assert con.execute("SELECT count(*) FROM embeddings WHERE partition = 'python_docs.jsonl'"
                           ).fetchone() == embedded_before == (ROWS_PER_SHARD,)


def test_unreadable_landing_file_fails_the_run_naming_the_file_and_keeps_the_store(tmp_path, landing, instance):
    defs = build_definitions(store_root=str(tmp_path / "store"), landing_dir=str(landing))
    materialize_everything(defs, instance)
    store = defs.resources["embedding_store"].open()
    before = store.corpus_version("package_summaries.csv")

    (landing / "package_summaries.csv").write_text("id,summary\npypi-x,no text column\n")
    result = materialize([*defs.assets], instance=instance, resources=defs.resources,
                         selection=[AssetKey("corpus")], partition_key=PACKAGES_BUCKET,
                         raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.to_string()
    assert f"{PACKAGES_BUCKET}: package_summaries.csv: " in message
    assert "package_summaries.csv: no row has the text field 'text'" in message
    assert store.corpus_version("package_summaries.csv") == before
    assert store.landing_records()["package_summaries.csv"].corpus_version == before.corpus_version


def test_embeddings_before_model_snapshot_fail_with_the_step_to_take(defs, instance):
    result = materialize([*defs.assets], instance=instance, resources=defs.resources,
                         selection=[AssetKey("corpus"), AssetKey("embeddings")],
                         partition_key=DOCS_BUCKET, raise_on_error=False)
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "materialize model_snapshot first" in failure.step_failure_data.error.to_string()


def test_model_check_fails_when_stored_vectors_are_not_the_models(defs, instance):
    materialize_everything(defs, instance)
    store = defs.resources["embedding_store"].open()
    snapshot = store.current_model_snapshot(DEFAULT_MODEL_NAME)
    edited = corpus_table([f"edited-{i}" for i in range(6)], [f"Edited text number {i}." for i in range(6)])
    # Vectors from elsewhere registered under this model's revision: what the check is for.
    store.write_embeddings(
        "python_docs.jsonl", store.write_corpus("python_docs.jsonl", edited), snapshot,
        EmbeddingParams(max_seq_length=snapshot.max_seq_length),
        lambda texts: np.random.default_rng(0).standard_normal((len(texts), 384), dtype=np.float32),
    )
    # The spot check alone (as the UI's "Execute" on the check does), for a range of buckets.
    result = materialize(list(defs.assets), instance=instance, resources=defs.resources,
                         selection=AssetSelection.checks(embeddings_match_model),
                         tags={"dagster/asset_partition_range_start": DOCS_BUCKET,
                               "dagster/asset_partition_range_end": PACKAGES_BUCKET})
    evaluations = {e.partition: e for e in result.get_asset_check_evaluations()}
    assert sorted(evaluations) == [f"bucket-{i:02d}" for i in range(4, 12)]
    assert {p: e.passed for p, e in evaluations.items()} == {
        p: p != DOCS_BUCKET for p in evaluations}
    assert evaluations[DOCS_BUCKET].metadata["min_agreement"].value < 0.5
    assert evaluations[DOCS_BUCKET].metadata["worst_id"].value.startswith("edited-")
    assert evaluations[PACKAGES_BUCKET].metadata["texts_compared"].value == 4
    assert evaluations[STDLIB_BUCKET].metadata["texts_compared"].value == 4
    # A bucket without files has nothing to compare.
    assert evaluations["bucket-05"].metadata["texts_compared"].value == 0


@pytest.mark.slow
def test_multi_process_pool_stores_the_same_vectors(tmp_path, landing, instance, oracle):
    encoder = EncoderResource(model_name=DEFAULT_MODEL_NAME, target_devices=["cpu", "cpu"])
    defs = build_definitions(store_root=str(tmp_path / "store"), landing_dir=str(landing), encoder=encoder)
    materialize_everything(defs, instance)
    store = defs.resources["embedding_store"].open()
    corpus = store.read_corpus(store.corpus_version("python_docs.jsonl"))
    _, vectors = store.read_embeddings(store.current_embedding_version("python_docs.jsonl", DEFAULT_MODEL_NAME))
    np.testing.assert_allclose(vectors, oracle.encode(corpus.column("text").to_pylist()), atol=2e-5)


def test_landing_folder_from_a_uri_and_a_copied_store(tmp_path, landing, instance):
    defs = build_definitions(store_root=f"file://{tmp_path / 'store'}", landing_dir=f"file://{landing}")
    materialize_everything(defs, instance)
    shutil.copytree(tmp_path / "store", tmp_path / "store_copy")
    store = build_definitions(store_root=str(tmp_path / "store_copy")).resources["embedding_store"].open()
    with store.connect() as con:
        assert con.execute("SELECT count(*) FROM embeddings").fetchone() == (ROWS_PER_SHARD * len(SHARDS),)


def test_empty_shards_store_empty_versions_with_a_warning_and_the_others_are_stored(tmp_path, landing, instance):
    (landing / "empty.jsonl").write_text("")
    (landing / "all_rejected.jsonl").write_text(json.dumps({"id": "x", "text": "  "}) + "\n{broken\n")
    defs = build_definitions(store_root=str(tmp_path / "store"), landing_dir=str(landing))
    results = materialize_everything(defs, instance)  # before: ArrowTypeError, string vs null
    empty_bucket = bucket_of("empty.jsonl", 16)
    assert empty_bucket == bucket_of("all_rejected.jsonl", 16) == "bucket-01"

    store = defs.resources["embedding_store"].open()
    for key in ("empty.jsonl", "all_rejected.jsonl"):
        corpus_version = store.corpus_version(key)
        (version,) = store.embedding_versions(key)
        assert (corpus_version.rows, version.rows, version.corpus_version) == (0, 0, corpus_version.corpus_version)
        ids, vectors = store.read_embeddings(version)
        assert ids.num_rows == 0 and len(vectors) == 0
    for key in SHARDS:
        assert store.corpus_version(key).rows == ROWS_PER_SHARD
        assert [v.rows for v in store.embedding_versions(key)] == [ROWS_PER_SHARD]
    with store.connect() as con:
        assert con.execute("SELECT count(*) FROM embeddings").fetchone() == (ROWS_PER_SHARD * len(SHARDS),)
    corpus_event = latest_materialization(instance, "corpus", empty_bucket)
    assert (corpus_event.metadata["files"].value, corpus_event.metadata["files_read"].value,
            corpus_event.metadata["dagster/row_count"].value, corpus_event.metadata["rejected_rows"].value) == (
        2, 2, 0, 2)
    embeddings_event = latest_materialization(instance, "embeddings", empty_bucket)
    assert (embeddings_event.metadata["files"].value, embeddings_event.metadata["new_versions"].value,
            embeddings_event.metadata["dagster/row_count"].value) == (2, 2, 0)
    checks = {(c.check_name, c.partition): c.passed for r in results for c in r.get_asset_check_evaluations()
              if c.asset_key == AssetKey("embeddings")}
    assert checks and all(checks.values()), checks
