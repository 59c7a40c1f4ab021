"""Fixtures of the store tests: a fresh local-catalog store, real corpus rows, and a
half-finished rollout."""

import os
import shutil

import pyarrow as pa
import pytest

from embedding_core.corpus import read_corpus_file
from embedding_core.store import EmbeddingStore

SAMPLE_CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "embedding_assets",
                             "sample_corpus", "python_docs.jsonl")


@pytest.fixture
def store(tmp_path) -> EmbeddingStore:
    return EmbeddingStore(tmp_path / "store")


@pytest.fixture
def sample_rows() -> pa.Table:
    return read_corpus_file(SAMPLE_CORPUS).table.slice(0, 30)


@pytest.fixture(scope="session")
def rollout_folder(tmp_path_factory):
    """The store folder of a half-finished rollout, written once per session."""
    from tests.store.test_serving_versions import write_half_finished_rollout

    folder = tmp_path_factory.mktemp("half-finished-rollout") / "store"
    write_half_finished_rollout(EmbeddingStore(folder))
    return folder


@pytest.fixture
def half_finished_rollout(rollout_folder, tmp_path) -> EmbeddingStore:
    """Partitions p1 and p2 embedded with revision A; revision B written for p1 only: this
    test's own copy (a store folder opens wherever it is copied)."""
    shutil.copytree(rollout_folder, tmp_path / "store")
    return EmbeddingStore(tmp_path / "store")
