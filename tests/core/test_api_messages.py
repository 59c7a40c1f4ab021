"""Issue 10, item 10: ``encode`` names the real problem with its input, token embeddings
honour ``precision`` like sentence-transformers, ``--top-k`` must be positive, and a failed
write names its path."""

from __future__ import annotations

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
    assert "--top-k" in capsys.readouterr().err


def test_search_top_k_parses_positive():
    from embedding_core.cli import positive_int

    assert positive_int("3") == 3
