"""The one Definitions object: the lineage graph, checks, automation, policies, resources."""

from dagster import AssetKey
from dagster._core.definitions.backfill_policy import BackfillPolicyType

from embedding_assets.definitions import definitions_from_env
from embedding_assets.partitions import MAX_PARTITIONS_PER_RUN


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
