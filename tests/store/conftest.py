"""Fixtures of the store tests: a fresh local-catalog store and real corpus rows."""

import os

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
