"""`store_maintenance`: expires replaced versions, keeps every current one readable."""

from dagster import AssetKey, materialize

from embedding_assets.assets import store_maintenance
from embedding_assets.backfill import landing_partitions, materialize_selection
from embedding_assets.definitions import build_definitions
from embedding_assets.resources import EncoderResource
from tests.assets.conftest import ROWS_PER_SHARD, SHARDS, materialize_everything
from tests.assets.test_pipeline import local_model_copy


def bump_revision_and_promote(defs, instance, store, model_dir, note: str):
    """A new content revision of the model folder, embedded for every partition, promoted and
    indexed: what a finished rollout leaves."""
    (model_dir / "NOTES.md").write_text(note)
    results = materialize_selection(defs, instance, [AssetKey("model_snapshot")])
    results += materialize_selection(defs, instance, [AssetKey("embeddings")], landing_partitions())
    assert all(result.success for result in results)
    (candidate,) = [s for s in store.version_sets() if not s.serving and not s.previous]
    assert candidate.complete
    (index,) = store.build_vector_indexes(version=candidate.key)
    store.promote(candidate.model, candidate.key, reason=note)
    return index


def test_maintenance_expires_replaced_versions_and_keeps_current_ones(tmp_path, landing, instance):
    """Revisions A, B and C served in turn: maintenance expires A (served before the previous
    one) with its index, and keeps C (serving) and B (previous: a rollback target)."""
    model_dir = local_model_copy(tmp_path / "model")
    defs = build_definitions(store_root=str(tmp_path / "store"), landing_dir=str(landing),
                             encoder=EncoderResource(model_name=str(model_dir)))
    materialize_everything(defs, instance)
    store = defs.resources["embedding_store"].open()
    (first_index,) = store.build_vector_indexes()
    second_index = bump_revision_and_promote(defs, instance, store, model_dir, "revision B\n")
    index = bump_revision_and_promote(defs, instance, store, model_dir, "revision C\n")
    assert len({first_index.record.revision, second_index.record.revision, index.record.revision}) == 3
    assert index.record.mode == "full"
    first, second, new = store.embedding_versions("python_docs.jsonl")
    with store.connect() as con:
        before = con.execute("SELECT version_id, embedding FROM embeddings "
                             "WHERE partition = 'python_docs.jsonl' ORDER BY id").fetchall()

    result = materialize([store_maintenance], instance=instance, resources=defs.resources,
                         run_config={"ops": {"store_maintenance": {"config": {"older_than_days": 0}}}})

    assert result.success
    metadata = result.asset_materializations_for_node("store_maintenance")[0].metadata
    assert metadata["expired_embedding_versions"].value == len(SHARDS)  # revision A's
    assert metadata["deleted_files"].value > 0
    assert metadata["deleted_index_files"].value == 2  # revision A's index and its rows
    assert sorted(r.index_id for r in store.vector_indexes()) == sorted(
        [second_index.record.index_id, index.record.index_id])
    assert store.searcher(index.record.model).uses_index
    assert [v.version_id for v in store.embedding_versions("python_docs.jsonl")] == [second.version_id,
                                                                                    new.version_id]
    assert first.version_id != new.version_id
    with store.connect() as con:
        after = con.execute("SELECT version_id, embedding FROM embeddings "
                            "WHERE partition = 'python_docs.jsonl' ORDER BY id").fetchall()
        total = con.execute("SELECT count(*) FROM embeddings").fetchone()[0]
    assert after == before and {row[0] for row in after} == {new.version_id}
    assert total == ROWS_PER_SHARD * len(SHARDS)
    store.rollback(index.record.model)  # the previous revision is still whole
    assert store.serving_version(index.record.model).revision == second.revision
