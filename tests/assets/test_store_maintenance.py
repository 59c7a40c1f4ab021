"""`store_maintenance`: expires replaced versions, keeps every current one readable."""

from dagster import AssetKey, materialize

from embedding_assets.assets import store_maintenance
from embedding_assets.backfill import landing_partitions, materialize_selection
from embedding_assets.definitions import build_definitions
from embedding_assets.resources import EncoderResource
from tests.assets.conftest import ROWS_PER_SHARD, SHARDS, materialize_everything
from tests.assets.test_pipeline import local_model_copy


def test_maintenance_expires_replaced_versions_and_keeps_current_ones(tmp_path, landing, instance):
    model_dir = local_model_copy(tmp_path / "model")
    defs = build_definitions(store_root=str(tmp_path / "store"), landing_dir=str(landing),
                             encoder=EncoderResource(model_name=str(model_dir)))
    materialize_everything(defs, instance)
    store = defs.resources["embedding_store"].open()
    (first_index,) = store.build_vector_indexes()
    (model_dir / "NOTES.md").write_text("a new file: a new content revision\n")
    keys = landing_partitions()
    results = materialize_selection(defs, instance, [AssetKey("model_snapshot")])
    results += materialize_selection(defs, instance, [AssetKey("embeddings")], keys)
    assert all(result.success for result in results)
    (index,) = store.build_vector_indexes()  # the new revision's: the first one covers nothing current
    assert index.record.revision != first_index.record.revision and index.record.mode == "full"
    old, new = store.embedding_versions("python_docs.jsonl")
    with store.connect() as con:
        before = con.execute("SELECT version_id, embedding FROM embeddings "
                             "WHERE partition = 'python_docs.jsonl' ORDER BY id").fetchall()

    result = materialize([store_maintenance], instance=instance, resources=defs.resources,
                         run_config={"ops": {"store_maintenance": {"config": {"older_than_days": 0}}}})

    assert result.success
    metadata = result.asset_materializations_for_node("store_maintenance")[0].metadata
    assert metadata["expired_embedding_versions"].value == len(SHARDS)
    assert metadata["deleted_files"].value > 0
    assert metadata["deleted_index_files"].value == 2  # the old revision's index and its rows
    assert [r.index_id for r in store.vector_indexes()] == [index.record.index_id]
    assert store.searcher(index.record.model).uses_index
    assert [v.version_id for v in store.embedding_versions("python_docs.jsonl")] == [new.version_id]
    assert old.version_id != new.version_id
    with store.connect() as con:
        after = con.execute("SELECT version_id, embedding FROM embeddings "
                            "WHERE partition = 'python_docs.jsonl' ORDER BY id").fetchall()
        total = con.execute("SELECT count(*) FROM embeddings").fetchone()[0]
    assert after == before and {row[0] for row in after} == {new.version_id}
    assert total == ROWS_PER_SHARD * len(SHARDS)
