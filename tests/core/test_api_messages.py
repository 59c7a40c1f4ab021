"""Issue 10, item 10: ``encode`` names the real problem with its input, token embeddings
honour ``precision`` like sentence-transformers, ``--top-k`` must be positive, and a failed
write names its path."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import torch

from embedding_core.batching import EncodeInputError

TEXTS = ["a short one", "a somewhat longer sentence with more tokens in it", "third"]


def test_bytes_are_refused_as_bytes_not_as_item_of_type_int(model):
    # Before: "encode() takes strings; item 0 is of type int: 98".
    with pytest.raises(TypeError, match=r"not bytes: decode the bytes first") as raised:
        model.encode(b"bytes")
    assert "item 0" not in str(raised.value)
    with pytest.raises(ValueError, match=r"item 1 is bytes, decode it first"):
        model.encode(["fine", b"raw"])


def test_none_is_refused_by_name(model):
    # Before: "'NoneType' object is not iterable".
    with pytest.raises(EncodeInputError, match=r"a sentence \(str\) or a list of sentences, got None"):
        model.encode(None)


@pytest.mark.parametrize("unordered", [{"b", "a"}, frozenset({"b", "a"}), {"a": 1, "b": 2}])
def test_unordered_collections_are_refused(model, unordered):
    # Before: a set was accepted and the rows came back in the set's arbitrary order.
    with pytest.raises(EncodeInputError, match=r"ordered sequence.*input order"):
        model.encode(unordered)


def test_other_ordered_iterables_still_work(model):
    expected = model.encode(TEXTS)
    np.testing.assert_allclose(model.encode(tuple(TEXTS)), expected, atol=1e-6)
    np.testing.assert_allclose(model.encode(iter(TEXTS)), expected, atol=1e-6)


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_token_embeddings_honour_precision_like_sentence_transformers(model, reference, precision):
    # Before: precision was ignored for token embeddings: float32 tensors came back.
    ours = model.encode(TEXTS, output_value="token_embeddings", precision=precision)
    theirs = reference.encode(TEXTS, output_value="token_embeddings", precision=precision)
    assert isinstance(ours, list) and len(ours) == len(theirs)
    for mine, other in zip(ours, theirs):
        assert isinstance(mine, np.ndarray) and isinstance(other, np.ndarray)
        assert mine.dtype == other.dtype and mine.shape == other.shape
        # Shared buckets over all tokens of the call; float rounding may move a value by one bucket.
        assert np.abs(mine.astype(np.int16) - other.astype(np.int16)).max() <= 1


def test_single_text_token_embeddings_int8(model, reference):
    ours = model.encode(TEXTS[1], output_value="token_embeddings", precision="int8")
    theirs = reference.encode(TEXTS[1], output_value="token_embeddings", precision="int8")
    assert ours.dtype == theirs.dtype == np.int8 and ours.shape == theirs.shape


def test_token_embeddings_float32_unchanged(model):
    ours = model.encode(TEXTS, output_value="token_embeddings")
    assert all(isinstance(matrix, torch.Tensor) and matrix.dtype == torch.float32 for matrix in ours)


@pytest.mark.parametrize("value", ["-1", "0", "many"])
def test_search_top_k_must_be_positive(value, tmp_path, capsys):
    # Before: --top-k -1 reached DuckDB and ended in a raw BinderException.
    from embedding_core.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["query", "--store", str(tmp_path), "--top-k", value])
    assert exited.value.code == 2
    assert "argument --top-k:" in capsys.readouterr().err  # refused before the store is opened


def test_search_top_k_parses_positive():
    from embedding_core.cli import positive_int

    assert positive_int("3") == 3


def _disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_save_names_the_module_folder_when_the_disk_is_full(model, tmp_path, monkeypatch):
    # Before: "OSError: [Errno 28] No space left on device", naming no path.
    from embedding_core.modules import Transformer

    monkeypatch.setattr(Transformer, "save", _disk_full)
    target = tmp_path / "saved"
    with pytest.raises(OSError) as raised:
        model.save(str(target))
    assert raised.value.errno == errno.ENOSPC
    assert str(target) in str(raised.value) and "No space left on device" in str(raised.value)


def test_save_names_modules_json_when_the_disk_is_full(model, tmp_path, monkeypatch):
    dump = json.dump

    def dump_or_fail(content, fh, **kwargs):
        if fh.name.endswith("modules.json"):
            _disk_full()
        dump(content, fh, **kwargs)

    monkeypatch.setattr(json, "dump", dump_or_fail)
    with pytest.raises(OSError, match=r"No space left on device.*modules\.json") as raised:
        model.save(str(tmp_path / "saved"))
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename == str(tmp_path / "saved" / "modules.json")


def test_onnx_cache_build_names_the_graph_path_when_the_disk_is_full(model, tmp_path, monkeypatch):
    from embedding_core.backends import onnx as onnx_backend

    monkeypatch.setattr(onnx_backend, "_export", _disk_full)
    with pytest.raises(onnx_backend.OnnxBackendError, match=r"No space left on device") as raised:
        onnx_backend.load_onnx_encoder(model[0].auto_model, "onnx", cache_folder=tmp_path)
    assert str(tmp_path) in str(raised.value) and "onnx.onnx" in str(raised.value)


def test_openvino_cache_build_names_the_model_folder_when_the_disk_is_full(model, tmp_path, monkeypatch):
    from embedding_core.backends import openvino as ov_backend

    monkeypatch.setattr(ov_backend, "_convert", _disk_full)
    with pytest.raises(ov_backend.OpenVinoBackendError, match=r"No space left on device") as raised:
        ov_backend.load_openvino_encoder(model[0], "openvino", cache_folder=tmp_path)
    assert str(tmp_path) in str(raised.value) and "fp32" in str(raised.value)


def test_writing_keeps_an_error_that_already_names_its_file(tmp_path):
    from embedding_core.fs import writing

    with pytest.raises(FileNotFoundError) as raised, writing(tmp_path / "outer"):
        open(tmp_path / "missing" / "file", encoding="utf-8")
    assert raised.value.filename == str(tmp_path / "missing" / "file")
