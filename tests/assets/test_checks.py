"""The asset checks of `embeddings`: one result per partition (landing bucket), each passing
on real materializations and failing on real vectors that break it; `unit_norm` is not
evaluated where it does not apply. The four shard checks run in the embeddings step."""

import numpy as np
from dagster import AssetKey, materialize

from embedding_assets.checks import (
    MIN_COSINE,
    SHARD_CHECKS,
    StoredShard,
    dim_problem,
    non_finite_problem,
    rows_match_corpus_problem,
    shard_check_evaluations,
    unit_norm_problem,
)
from embedding_assets.definitions import build_definitions
from embedding_assets.resources import EncoderResource
from embedding_core.hub import DEFAULT_MODEL_NAME
from embedding_core.landing import bucket_keys, bucket_of
from tests.assets.conftest import ROWS_PER_SHARD, materialize_everything

DOCS_BUCKET = bucket_of("python_docs.jsonl", 16)  # bucket-04
STDLIB_BUCKET = bucket_of("stdlib_docstrings.txt", 16)  # bucket-07
BUCKETS = bucket_keys(16)

EMBEDDINGS_CHECKS = {"rows_match_corpus", "dim_matches_model", "vectors_finite", "unit_norm",
                     "texts_fit_max_seq_length", "embeddings_match_model"}


def embeddings_check_evaluations(results, checks=EMBEDDINGS_CHECKS) -> dict:
    """(check name, bucket) -> evaluation; every check reported once for every bucket (those
    without a file too: they have nothing to judge, and pass)."""
    evaluations = {}
    for result in results:
        for e in result.get_asset_check_evaluations():
            if e.asset_key.path == ["embeddings"]:
                assert (e.check_name, e.partition) not in evaluations
                evaluations[e.check_name, e.partition] = e
    assert set(evaluations) == {(name, bucket) for name in checks for bucket in BUCKETS}
    return evaluations


def stored_shard(store, partition: str, params_from: EncoderResource) -> StoredShard:
    """A partition's current embeddings read back, judged against `params_from`'s parameters."""
    snapshot = store.current_model_snapshot(DEFAULT_MODEL_NAME)
    version = store.current_embedding_version(partition, DEFAULT_MODEL_NAME)
    ids, vectors = store.read_embeddings(version)
    corpus_ids = store.read_corpus(store.corpus_version(partition)).column("id").to_pylist()
    return StoredShard(version, ids.column("id").to_pylist(), vectors, corpus_ids, snapshot,
                       params_from.open().params(snapshot))


def test_every_embeddings_check_passes_on_normalized_truncated_vectors(tmp_path, landing, instance):
    encoder = EncoderResource(model_name=DEFAULT_MODEL_NAME, normalize_embeddings=True, truncate_dim=64)
    defs = build_definitions(store_root=str(tmp_path / "store"), landing_dir=str(landing), encoder=encoder)
    results = materialize_everything(defs, instance)
    # Two runs of 8 buckets (the backfill policy's chunk); each check reports each bucket.
    assert [r.dagster_run.job_name for r in results] == ["snapshot_model", "embed_corpus", "embed_corpus"]
    evaluations = embeddings_check_evaluations(results)
    assert all(e.passed for e in evaluations.values())
    for check in SHARD_CHECKS:
        metadata = evaluations[check.name, DOCS_BUCKET].metadata
        assert (metadata["files_checked"].value, metadata["rows"].value) == (1, ROWS_PER_SHARD)
        assert "problems" not in metadata and "note" not in metadata
        # A bucket without a file: nothing judged, said so.
        empty = evaluations[check.name, "bucket-00"].metadata
        assert (empty["files_checked"].value, empty["rows"].value) == (0, 0)
        assert empty["note"].value == "no new version in this run; the last result stands"
    spot = evaluations["embeddings_match_model", STDLIB_BUCKET].metadata
    assert spot["threshold"].value == MIN_COSINE == 0.9999
    assert spot["min_agreement"].value >= 0.9999 and spot["texts_compared"].value == 4
    # Each points at its own bucket's materialization of the run that covered it.
    run_of = {bucket: results[1 + index // 8].run_id for index, bucket in enumerate(BUCKETS)}
    for (_, bucket), evaluation in evaluations.items():
        assert evaluation.target_materialization_data.run_id == run_of[bucket]

    store = defs.resources["embedding_store"].open()
    _, vectors = store.read_embeddings(store.current_embedding_version("python_docs.jsonl", DEFAULT_MODEL_NAME))
    assert vectors.shape == (ROWS_PER_SHARD, 64) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_unit_norm_and_dim_checks_fail_on_real_vectors_that_break_them(tmp_path, landing, instance):
    # MiniLM ends in a Normalize module, so only truncation gives vectors off unit length.
    truncating = EncoderResource(model_name=DEFAULT_MODEL_NAME, truncate_dim=64)
    defs = build_definitions(store_root=str(tmp_path / "store"), landing_dir=str(landing), encoder=truncating)
    results = materialize_everything(defs, instance)
    # normalize_embeddings is off: unit_norm applies to no bucket, so it is not evaluated
    # (the UI shows it skipped, not "Succeeded"); the other checks report every bucket.
    embeddings_check_evaluations(results, EMBEDDINGS_CHECKS - {"unit_norm"})
    logs = [e.message for e in instance.all_logs(results[1].run_id)]
    assert any("unit_norm does not apply (float32, normalize_embeddings=False); not evaluated"
               in m for m in logs)

    store = defs.resources["embedding_store"].open()
    shard = stored_shard(store, "python_docs.jsonl", truncating)
    norms = np.linalg.norm(shard.vectors, axis=1)
    assert (norms < 0.99).all()
    problem = unit_norm_problem(shard.vectors, shard.ids)
    assert problem.startswith(f"{ROWS_PER_SHARD} of {ROWS_PER_SHARD} vectors are off unit norm by more than 0.0001")
    worst = int(np.argmin(norms))
    assert f"worst id {shard.ids[worst]!r} has norm {norms[worst]:.6f}" in problem
    assert unit_norm_problem(shard.vectors / norms[:, None], shard.ids) is None

    assert dim_problem(shard.vectors, shard.version.dim, "float32", 64) is None
    # The same stored version judged against untruncated parameters: the dim check fails,
    # the others still pass.
    untruncated = stored_shard(store, "python_docs.jsonl", EncoderResource(model_name=DEFAULT_MODEL_NAME))
    assert {check.name: check.find_problem(untruncated) for check in SHARD_CHECKS} == {
        "rows_match_corpus": None, "dim_matches_model": "catalog records dim 64, the model snapshot gives 384",
        "vectors_finite": None, "unit_norm": unit_norm_problem(untruncated.vectors, untruncated.ids)}
    assert dim_problem(shard.vectors, 384, "float32", 384) == (
        f"vectors have shape ({ROWS_PER_SHARD}, 64); dim 384 at float32 needs 384 values per row")


def test_rows_and_finite_checks_name_what_is_wrong(tmp_path, landing, defs, instance):
    materialize_everything(defs, instance)
    store = defs.resources["embedding_store"].open()
    before = store.current_embedding_version("python_docs.jsonl", DEFAULT_MODEL_NAME)
    # The shard checks judge what the step wrote: re-materializing an unchanged bucket writes
    # no version, and the checks say so instead of judging again (the last result stands).
    rerun = materialize(list(defs.assets), instance=instance, resources=defs.resources,
                        selection=[AssetKey("embeddings")], partition_key=DOCS_BUCKET)
    assert store.current_embedding_version("python_docs.jsonl", DEFAULT_MODEL_NAME) == before
    shard_results = {e.check_name: e for e in rerun.get_asset_check_evaluations()
                     if e.check_name in {check.name for check in SHARD_CHECKS}}
    # unit_norm does not apply (normalize_embeddings off): not evaluated.
    assert sorted(shard_results) == ["dim_matches_model", "rows_match_corpus", "vectors_finite"]
    for evaluation in shard_results.values():
        assert (evaluation.partition, evaluation.passed) == (DOCS_BUCKET, True)
        assert evaluation.metadata["files_checked"].value == 0
        assert evaluation.metadata["note"].value == "no new version in this run; the last result stands"
        assert evaluation.target_materialization_data.run_id == rerun.run_id

    shard = stored_shard(store, "python_docs.jsonl", defs.resources["encoder"])
    assert rows_match_corpus_problem(shard.ids, shard.corpus_ids) is None
    assert rows_match_corpus_problem(shard.ids, [*shard.corpus_ids, "extra"]) == (
        f"{ROWS_PER_SHARD} stored rows for {ROWS_PER_SHARD + 1} corpus rows")
    swapped = [shard.corpus_ids[1], shard.corpus_ids[0], *shard.corpus_ids[2:]]
    assert rows_match_corpus_problem(shard.ids, swapped) == (
        f"row 0 holds id {shard.ids[0]!r}, the corpus has {shard.ids[1]!r} there")

    assert non_finite_problem(shard.vectors, shard.ids) is None
    broken = shard.vectors.copy()
    broken[3, 7], broken[5, 0] = np.nan, np.inf
    assert non_finite_problem(broken, shard.ids) == (
        f"2 of {ROWS_PER_SHARD} vectors hold NaN or inf, ids {[shard.ids[3], shard.ids[5]]}")

    # In the step: a bucket's check fails when one of its files breaks it, naming the file.
    bad = StoredShard(shard.version, shard.ids, broken, [*shard.corpus_ids, "extra"], shard.snapshot,
                      shard.params)
    evaluations = {e.check_name: e for e in shard_check_evaluations(
        instance, DOCS_BUCKET, [shard, bad], shard.params)}
    assert {name: e.passed for name, e in evaluations.items()} == {
        "rows_match_corpus": False, "dim_matches_model": True, "vectors_finite": False}  # unit_norm: n/a
    assert evaluations["vectors_finite"].metadata["problems"].value == {
        "python_docs.jsonl": non_finite_problem(broken, shard.ids)}
    assert evaluations["rows_match_corpus"].metadata["problems"].value == {
        "python_docs.jsonl": f"{ROWS_PER_SHARD} stored rows for {ROWS_PER_SHARD + 1} corpus rows"}
    assert evaluations["rows_match_corpus"].metadata["files_checked"].value == 2
    # Each points at the bucket's latest materialization (the re-run's).
    assert {e.target_materialization_data.run_id for e in evaluations.values()} == {rerun.run_id}


def test_binary_vectors_of_a_dim_not_divisible_by_8_take_ceil_dim_over_8_bytes(tmp_path, landing, instance):
    precision = "binary"
    encoder = EncoderResource(model_name=DEFAULT_MODEL_NAME, precision=precision, truncate_dim=100)
    defs = build_definitions(store_root=str(tmp_path / "store"), landing_dir=str(landing), encoder=encoder)
    evaluations = embeddings_check_evaluations(materialize_everything(defs, instance),
                                               EMBEDDINGS_CHECKS - {"unit_norm"})
    assert all(e.passed for e in evaluations.values())
    assert evaluations["embeddings_match_model", DOCS_BUCKET].metadata["threshold"].value == 0.98

    store = defs.resources["embedding_store"].open()
    version = store.current_embedding_version("python_docs.jsonl", DEFAULT_MODEL_NAME, dtype="int8")
    _, vectors = store.read_embeddings(version)
    assert (version.dim, vectors.shape) == (100, (ROWS_PER_SHARD, 13))
    assert vectors.dtype == np.int8
    assert dim_problem(vectors[:, :12], 100, precision, 100) == (
        f"vectors have shape ({ROWS_PER_SHARD}, 12); dim 100 at {precision} needs 13 values per row")
