"""The ONNX Runtime backends: same vectors (fp32) or measured, bounded loss (int8).

Speed is checked by benchmarks/bench_encode.py, never here; these tests prove the vectors.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from tests.conftest import read_jsonl_texts
from tests.core.conftest import assert_rows_match, row_cosines

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from embedding_core import SentenceTransformer  # noqa: E402
from embedding_core.backends import onnx as onnx_backend  # noqa: E402


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory):
    """Built graphs go to a temporary cache, never the user's."""
    folder = tmp_path_factory.mktemp("onnx-cache")
    previous = os.environ.get(onnx_backend.CACHE_ENV)
    os.environ[onnx_backend.CACHE_ENV] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(onnx_backend.CACHE_ENV, None)
    else:
        os.environ[onnx_backend.CACHE_ENV] = previous


@pytest.fixture(scope="session")
def onnx_model(bundled_model_path, onnx_cache):
    model = SentenceTransformer(bundled_model_path, device="cpu", backend="onnx")
    assert model.backend == "onnx"
    return model


@pytest.fixture(scope="session")
def int8_model(bundled_model_path, onnx_cache):
    model = SentenceTransformer(bundled_model_path, device="cpu", backend="onnx-int8")
    assert model.backend == "onnx-int8"
    return model


@pytest.mark.parametrize(
    "options",
    [{}, {"normalize_embeddings": True}, {"prompt": "query: "}, {"batch_size": 7}],
    ids=["default", "normalize", "prompt", "batch7"],
)
def test_onnx_backend_matches_reference(onnx_model, reference, parity_texts, options):
    assert_rows_match(onnx_model.encode(parity_texts, **options), reference.encode(parity_texts, **options))


def test_onnx_backend_token_embeddings_match_torch(onnx_model, model, parity_texts):
    texts = parity_texts[::10]
    ours = onnx_model.encode(texts, output_value="token_embeddings")
    theirs = model.encode(texts, output_value="token_embeddings")
    for mine, expected in zip(ours, theirs, strict=True):
        assert mine.shape == expected.shape
        assert_rows_match(mine.numpy(), expected.numpy())


def test_int8_backend_keeps_vectors_and_neighbours_close_on_mixed_corpus(int8_model, model):
    texts = read_jsonl_texts("mixed_texts.jsonl")
    fp32 = model.encode(texts)
    int8 = int8_model.encode(texts)
    cosines = row_cosines(int8, fp32)
    assert cosines.mean() >= 0.99, cosines.mean()
    assert cosines.min() >= 0.97, cosines.min()

    def top10(vectors):
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        scores = unit @ unit.T
        np.fill_diagonal(scores, -np.inf)
        return np.argpartition(-scores, 10, axis=1)[:, :10]

    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top10(int8), top10(fp32), strict=True)])
    assert overlap >= 0.9, overlap


def test_int8_backend_on_short_texts_stays_close(int8_model, model):
    texts = read_jsonl_texts("short_texts.jsonl")[::5]
    cosines = row_cosines(int8_model.encode(texts), model.encode(texts))
    assert cosines.mean() >= 0.99 and cosines.min() >= 0.97, (cosines.mean(), cosines.min())


def test_built_graph_is_reused_from_the_cache(bundled_model_path, onnx_model, onnx_cache):
    graphs = sorted(onnx_cache.rglob("onnx.onnx"))
    assert len(graphs) == 1
    built_at = graphs[0].stat().st_mtime_ns
    again = SentenceTransformer(bundled_model_path, device="cpu", backend="onnx")
    assert again.transformer.runtime_encoder.path == str(graphs[0])
    assert graphs[0].stat().st_mtime_ns == built_at
    # No half-written build folders are left behind.
    assert not [p for p in onnx_cache.rglob(".build-*")]


def test_changed_weights_get_a_new_cache_key(onnx_model):
    auto_model = onnx_model.transformer.auto_model
    before = onnx_backend.model_key(auto_model, "rev")
    weight = auto_model.embeddings.word_embeddings.weight
    original = weight.data[0, 0].item()
    try:
        weight.data[0, 0] += 1.0
        assert onnx_backend.model_key(auto_model, "rev") != before
    finally:
        weight.data[0, 0] = original
    assert onnx_backend.model_key(auto_model, "rev") == before


def test_unknown_backend_is_refused_before_loading():
    with pytest.raises(ValueError, match="onnx-int8"):
        SentenceTransformer("/no/such/folder", backend="tensorrt")


def test_failed_export_falls_back_to_torch(bundled_model_path, reference, parity_texts, monkeypatch, caplog):
    def fail(*args, **kwargs):
        raise onnx_backend.OnnxBackendError("export failed on purpose")

    monkeypatch.setattr(onnx_backend, "load_onnx_encoder", fail)
    with caplog.at_level(logging.WARNING):
        model = SentenceTransformer(bundled_model_path, device="cpu", backend="onnx")
    assert model.backend == "torch"
    assert "export failed on purpose" in caplog.text
    texts = parity_texts[::20]
    assert_rows_match(model.encode(texts), reference.encode(texts))
