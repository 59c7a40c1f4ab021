"""The vector_index asset: built over every bucket's current embeddings with its recall
checked, updated (not rebuilt) after a new landing file is embedded, and used by search."""

from dagster import AssetKey

from embedding_assets.backfill import materialize_selection
from embedding_core.landing import bucket_of
from tests.assets.conftest import materialize_everything
from tests.assets.test_pipeline import latest_materialization


def index_run(defs, instance):
    result = defs.resolve_job_def("index_vectors").execute_in_process(instance=instance)
    assert result.success
    (check,) = result.get_asset_check_evaluations()
    return latest_materialization(instance, "vector_index").metadata, check


def test_the_index_covers_every_bucket_checks_its_recall_and_is_updated_after_a_new_file(
        defs, instance, landing, oracle):
    materialize_everything(defs, instance)
    metadata, check = index_run(defs, instance)
    assert metadata["dagster/row_count"].value == 36 and metadata["mode"].value == "full"
    assert metadata["added_rows"].value == 36 and metadata["removed_rows"].value == 0
    assert metadata["recall_at_10"].value >= 0.95
    assert check.passed and check.metadata["recall_at_10"].value == metadata["recall_at_10"].value
    assert check.metadata["queries"].value == 100
    store = defs.resources["embedding_store"].open()
    (record,) = store.vector_indexes()
    assert metadata["index_file"].value == store.uri(record.path)

    # Search goes through the index and finds a stored text from its own vector (the oracle's).
    with store.connect() as con:
        text, partition = con.execute("SELECT text, partition FROM documents ORDER BY id LIMIT 1").fetchone()
    searcher = store.searcher(record.model)
    assert searcher.uses_index
    (hit,) = searcher.search(oracle.encode(text), top_k=1)
    assert (hit.text, hit.partition) == (text, partition)

    # A new landing file: its rows are added to the index.
    (landing / "extra.jsonl").write_text("".join(
        f'{{"id": "x{i}", "text": "Extra document number {i} about vector indexes."}}\n' for i in range(5)))
    bucket = bucket_of("extra.jsonl", 16)
    assert all(r.success for r in materialize_selection(defs, instance, [AssetKey("corpus"), AssetKey("embeddings")],
                                                        [bucket]))
    metadata, check = index_run(defs, instance)
    assert (metadata["mode"].value, metadata["added_rows"].value, metadata["removed_rows"].value,
            metadata["dagster/row_count"].value) == ("update", 5, 0, 41)
    assert check.passed
    (hit,) = store.search(oracle.encode("Extra document number 3 about vector indexes."), record.model, top_k=1)
    assert hit.id == "x3"
    # Nothing new: the index is left as it is.
    metadata, _ = index_run(defs, instance)
    assert (metadata["mode"].value, metadata["dagster/row_count"].value) == ("unchanged", 41)
