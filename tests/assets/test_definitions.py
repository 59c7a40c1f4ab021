"""The one Definitions object: the lineage graph, checks, jobs, automation, policies, resources,
and what the UI labels them with."""

import re
import subprocess
import sys

import pytest
from dagster import AssetKey
from dagster._core.definitions.backfill_policy import BackfillPolicyType

from embedding_assets.definitions import definitions_from_env
from embedding_assets.partitions import MAX_PARTITIONS_PER_RUN, corpus_partitions
from tests.assets.test_dagster_dev import PROJECT


def test_definitions_hold_the_lineage_graph_checks_jobs_automation_and_policies():
    defs = definitions_from_env({"EMBEDDING_STORE_ROOT": "/tmp/unused-store",
                                 "EMBEDDING_TARGET_DEVICES": "cuda:0,cuda:1",
                                 "EMBEDDING_NORMALIZE": "true"})
    graph = defs.resolve_asset_graph()
    assert graph.get(AssetKey("embeddings")).parent_keys == {AssetKey("corpus"), AssetKey("model_snapshot")}
    # Location, groups and assets have distinct names (the location is embedding_pipeline).
    assert {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()} == {
        "corpus": "ingest", "model_snapshot": "models", "embeddings": "vectors",
        "vector_index": "vectors", "serving_version": "vectors", "store_maintenance": "maintenance"}
    checks = {key.name: key for key in graph.asset_check_keys}
    assert set(checks) == {"rows_valid", "encodes_canary", "rows_match_corpus", "dim_matches_model",
                           "vectors_finite", "unit_norm", "texts_fit_max_seq_length",
                           "embeddings_match_model", "recall_at_10", "candidate_retrieval_quality"}
    partitioned = {name for name, key in checks.items()
                   if graph.get(key).partitions_def is not None}
    assert partitioned == set(checks) - {"encodes_canary", "recall_at_10", "candidate_retrieval_quality"}
    for key in ("corpus", "embeddings"):
        node = graph.get(AssetKey(key))
        assert node.partitions_def == corpus_partitions
        assert node.backfill_policy.policy_type == BackfillPolicyType.MULTI_RUN
        assert node.backfill_policy.max_partitions_per_run == MAX_PARTITIONS_PER_RUN
        assert node.owners == ["team:search-platform"] and node.tags["domain"] == "semantic-search"
        assert graph.get(AssetKey(key)).metadata["dagster/code_references"].code_references[0].file_path.endswith(
            "embedding_assets/assets/buckets.py")  # one step, landing_buckets, materializes both
    # No store-wide lock: N workers encode and commit N shards at once.
    assert all(not graph.get(AssetKey(key)).pools for key in ("corpus", "model_snapshot", "embeddings"))
    jobs = {job.name: job for job in defs.resolve_all_job_defs() if not job.name.startswith("__")}
    assert sorted(jobs) == ["embed_corpus", "index_vectors", "promote_candidate", "snapshot_model",
                            "store_maintenance_job", "verify_embeddings"]
    assert jobs["embed_corpus"].asset_layer.executable_asset_keys == {AssetKey("corpus"), AssetKey("embeddings")}
    assert jobs["embed_corpus"].partitions_def == corpus_partitions
    # The partitions are the 16 landing buckets (EMBEDDING_LANDING_BUCKETS), not the files.
    assert corpus_partitions.get_partition_keys() == [f"bucket-{i:02d}" for i in range(16)]
    assert {key.name for key in jobs["embed_corpus"].asset_layer.asset_graph.asset_check_keys} >= {
        "rows_valid", "rows_match_corpus", "embeddings_match_model"}
    assert jobs["snapshot_model"].asset_layer.executable_asset_keys == {AssetKey("model_snapshot")}
    assert sorted(s.name for s in defs.sensors) == [
        "corpus_landing_sensor", "embeddings_automation", "model_revision_sensor"]
    assert sorted(s.name for s in defs.schedules) == ["verify_embeddings_sweep", "weekly_store_maintenance"]
    assert graph.get(AssetKey("embeddings")).automation_condition.get_label() == (
        "missing, new model revision or new code_version")
    # One index over every bucket's current vectors, updated as buckets land.
    assert graph.get(AssetKey("vector_index")).parent_keys == {AssetKey("embeddings")}
    assert graph.get(AssetKey("vector_index")).partitions_def is None
    assert graph.get(AssetKey("vector_index")).automation_condition.get_label() == "missing or embeddings updated"
    # The promotion, behind the blocking retrieval check on vector_index.
    assert graph.get(AssetKey("serving_version")).parent_keys == {
        AssetKey("embeddings"), AssetKey("model_snapshot"), AssetKey("vector_index")}
    assert graph.get(checks["candidate_retrieval_quality"]).blocking
    assert jobs["promote_candidate"].asset_layer.executable_asset_keys == {
        AssetKey("vector_index"), AssetKey("serving_version")}
    encoder = defs.resources["encoder"]
    assert (encoder.target_devices, encoder.normalize_embeddings) == (["cuda:0", "cuda:1"], True)
    assert defs.resources["embedding_store"].root == "/tmp/unused-store"


def test_encoder_settings_that_change_the_vectors_change_the_code_version():
    def code_version(**env):
        defs = definitions_from_env({"EMBEDDING_STORE_ROOT": "/tmp/unused-store", **env})
        return defs.resolve_asset_graph().get(AssetKey("embeddings")).code_version

    base = code_version()
    assert base.startswith("2-")  # the embeddings asset's own code_version, then the encoder's
    assert code_version(EMBEDDING_BATCH_SIZE="64") == base  # how, not what, is encoded
    assert len({base, code_version(EMBEDDING_PRECISION="binary"), code_version(EMBEDDING_NORMALIZE="1")}) == 3
    chunked = {code_version(EMBEDDING_CHUNK_TOKENS="128"), code_version(EMBEDDING_CHUNK_TOKENS="128",
                                                                        EMBEDDING_CHUNK_OVERLAP="32")}
    assert len(chunked) == 2 and base not in chunked
    assert code_version(EMBEDDING_CHUNK_TOKENS="", EMBEDDING_CHUNK_OVERLAP="32") == base  # unset: off


@pytest.mark.parametrize(("tokens", "overlap", "error"), [
    ("128", "128", "EMBEDDING_CHUNK_OVERLAP=128 must be smaller than EMBEDDING_CHUNK_TOKENS=128"),
    ("128", "-1", "EMBEDDING_CHUNK_OVERLAP=-1 must be 0 or more tokens"),
    ("many", "8", "chunk sizes must be whole numbers of tokens: EMBEDDING_CHUNK_TOKENS='many', "
                  "EMBEDDING_CHUNK_OVERLAP='8'"),
])
def test_bad_chunk_settings_fail_the_load_naming_both_values(tokens, overlap, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        definitions_from_env({"EMBEDDING_STORE_ROOT": "/tmp/unused-store", "EMBEDDING_CHUNK_TOKENS": tokens,
                              "EMBEDDING_CHUNK_OVERLAP": overlap})


def test_loading_the_code_location_prints_no_warning(tmp_path):
    """What `dg dev`/`dagster dev` print when they load the location: no BetaWarning or other
    warning from this project's definitions (the pytest filter does not apply here)."""
    probe = subprocess.run(
        [sys.executable, "-W", "default", "-c",
         "from embedding_assets.definitions import defs\n"
         "defs.resolve_asset_graph(); defs.resolve_all_job_defs(); print('loaded')"],
        cwd=PROJECT, capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(PROJECT), "HF_HUB_OFFLINE": "1",
             "EMBEDDING_STORE_ROOT": str(tmp_path / "store")},
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "loaded"
    assert "Warning" not in probe.stderr, probe.stderr


def test_promotion_settings_come_from_the_environment_and_bad_ones_are_named():
    gate = definitions_from_env({"EMBEDDING_STORE_ROOT": "/tmp/unused-store", "EMBEDDING_PROMOTION_TOLERANCE": "0.02",
                                 "EMBEDDING_EVALUATION_QUERIES": "500"}).resources["promotion_gate"]
    assert (gate.tolerance, gate.known_item_queries, gate.beir_dir) == (0.02, 500, None)
    assert definitions_from_env({"EMBEDDING_STORE_ROOT": "/tmp/unused-store"}).resources["promotion_gate"].tolerance == 0.01
    for env, message in ((dict(EMBEDDING_PROMOTION_TOLERANCE="one point"),
                          "EMBEDDING_PROMOTION_TOLERANCE='one point': expected a number"),
                         (dict(EMBEDDING_PROMOTION_TOLERANCE="-0.1"),
                          "EMBEDDING_PROMOTION_TOLERANCE='-0.1': expected a number of at least 0"),
                         (dict(EMBEDDING_EVALUATION_QUERIES="2.5"),
                          "EMBEDDING_EVALUATION_QUERIES='2.5': expected a whole number")):
        with pytest.raises(ValueError, match=re.escape(message)):
            definitions_from_env({"EMBEDDING_STORE_ROOT": "/tmp/unused-store", **env})
