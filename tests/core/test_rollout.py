"""`embedding_core.rollout` on a real store: a version evaluated with its own model, and a
model folder whose weights changed in place refused, naming both revisions."""

from __future__ import annotations

import shutil

import pytest
from safetensors.torch import load_file, save_file

from embedding_core.corpus import read_corpus_file
from embedding_core.evaluation import store_known_item_queries
from embedding_core.rollout import (
    RolloutError,
    compare_with_serving,
    configured_version,
    evaluate_version,
)
from embedding_core.snapshot import EncoderConfig
from embedding_core.store import EmbeddingStore
from tests.core.test_evaluation import SAMPLE_DOCS


@pytest.fixture
def embedded(tmp_path, bundled_model_path):
    """A store of 60 Python-doc paragraphs embedded with a copy of the bundled model in a
    local folder (its revision: the folder's content hash)."""
    folder = tmp_path / "model"
    shutil.copytree(bundled_model_path, folder)
    config = EncoderConfig(str(folder), device="cpu", backend="torch")
    store = EmbeddingStore(tmp_path / "store")
    snapshot = store.record_model_snapshot(config.resolve())
    params = config.params(snapshot)
    corpus = store.write_corpus("python_docs.jsonl", read_corpus_file(str(SAMPLE_DOCS)).table.slice(0, 60))
    with config.session(snapshot, params) as session:
        store.write_embeddings("python_docs.jsonl", corpus, snapshot, params, session.encode)
    return store, config, folder


def test_a_version_is_evaluated_with_its_own_model_and_index(embedded):
    store, config, _ = embedded
    version = configured_version(store, config)
    assert version.serving and version.complete and version.rows == 60
    store.build_vector_indexes(version.model, version=version.key)
    queries = store_known_item_queries(store, count=20)
    (result,) = evaluate_version(store, version, config, [queries])
    assert result.queries == 20
    assert result.recall_at_10 >= 0.9 and result.mrr_at_10 >= 0.8  # a sentence finds its paragraph
    with pytest.raises(RolloutError, match=f"version {version.key} of .* is the serving one: nothing to compare"):
        compare_with_serving(store, version, config, [queries], tolerance=0.01)


def test_a_model_folder_changed_in_place_is_refused_naming_both_revisions(embedded):
    store, config, folder = embedded
    version = configured_version(store, config)
    tensors = load_file(folder / "model.safetensors")
    name = next(name for name, tensor in tensors.items() if tensor.ndim == 2)
    tensors[name] = tensors[name] * 1.01
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    queries = store_known_item_queries(store, count=5)
    with pytest.raises(RolloutError) as refused:
        evaluate_version(store, version, config, [queries])
    message = str(refused.value)
    assert f"version {version.key} of {folder} was embedded with revision {version.revision}, but the folder " \
           f"{folder} now holds sha256:" in message
    assert "Keep each revision in a folder of its own" in message
