"""Loading, encode semantics, bad input, save/load and similarity of SentenceTransformer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedding_core import SentenceTransformer
from embedding_core.modules import Normalize, Pooling, Transformer
from tests.core.conftest import assert_rows_match

SENTENCES = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]


# ---------------------------------------------------------------- loading
def test_bundled_folder_loads_as_transformer_pooling_normalize(model, bundled_model_path):
    assert [type(m) for m in model] == [Transformer, Pooling, Normalize]
    assert not (bundled_model_path and __import__("os").path.exists(f"{bundled_model_path}/2_Normalize"))
    assert model.get_sentence_embedding_dimension() == 384
    assert model.max_seq_length == 256
    assert model.similarity_fn_name == "cosine"
    norms = np.linalg.norm(model.encode(SENTENCES), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_default_model_is_the_bundled_all_minilm(bundled_model_path):
    default = SentenceTransformer(device="cpu")
    assert default.model_source == "bundled" and default.snapshot_path == bundled_model_path
    assert default.revision.startswith("sha256:")


def test_device_none_picks_cpu_without_accelerators(tiny_bert_dir):
    assert SentenceTransformer(str(tiny_bert_dir)).device.type == "cpu"
    with pytest.raises(RuntimeError):
        SentenceTransformer(str(tiny_bert_dir), device="tpu")


def test_max_seq_length_change_matches_reference(model, reference):
    texts = ["word " * 300, "a much shorter text"]
    model.max_seq_length = reference.max_seq_length = 32
    try:
        assert_rows_match(model.encode(texts), reference.encode(texts))
    finally:
        model.max_seq_length = reference.max_seq_length = 256


# ---------------------------------------------------------------- encode semantics
def test_single_string_gives_one_vector_and_list_gives_matrix(model):
    assert model.encode("Hello world").shape == (384,)
    assert model.encode(["Hello world"]).shape == (1, 384)


def test_empty_input_gives_empty_result(model):
    assert model.encode([]).shape == (0, 384)
    assert model.encode([], convert_to_tensor=True).shape == (0, 384)
    assert model.encode([], output_value="token_embeddings") == []


def test_output_containers(model):
    tensor = model.encode(SENTENCES, convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (3, 384)
    as_list = model.encode(SENTENCES, convert_to_numpy=False)
    assert isinstance(as_list, list) and all(isinstance(t, torch.Tensor) and t.shape == (384,) for t in as_list)
    np.testing.assert_allclose(torch.stack(as_list).numpy(), tensor.numpy())
    quantized = model.encode(SENTENCES * 2, precision="ubinary", convert_to_tensor=True)
    assert quantized.dtype == torch.uint8 and quantized.shape == (6, 48)


def test_order_is_restored_whatever_the_lengths(model):
    texts = ["short", "a considerably longer sentence " * 20, "mid length sentence here"]
    together = model.encode(texts)
    alone = np.stack([model.encode(t) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_prompt_resolution_order(tiny_bert_dir):
    tiny = SentenceTransformer(
        str(tiny_bert_dir), device="cpu", prompts={"query": "query: ", "doc": "passage: "}, default_prompt_name="query"
    )
    text = "how do prompts work"
    by_default = tiny.encode(text)
    np.testing.assert_allclose(by_default, tiny.encode("query: " + text, prompt=""), atol=1e-6)
    np.testing.assert_allclose(tiny.encode(text, prompt_name="doc"), tiny.encode("passage: " + text, prompt=""), atol=1e-6)
    np.testing.assert_allclose(
        tiny.encode(text, prompt_name="doc", prompt="other: "), tiny.encode("other: " + text, prompt=""), atol=1e-6
    )
    np.testing.assert_allclose(tiny.encode_query(text), by_default, atol=1e-6)


def test_unknown_prompt_name_lists_known_names(tiny_bert_dir):
    tiny = SentenceTransformer(str(tiny_bert_dir), device="cpu", prompts={"query": "q: ", "doc": "d: "})
    with pytest.raises(ValueError, match=r"'summary'.*\['query', 'document', 'doc'\]"):
        tiny.encode("x", prompt_name="summary")
    with pytest.raises(ValueError, match="default_prompt_name 'missing'"):
        SentenceTransformer(str(tiny_bert_dir), device="cpu", prompts={"query": "q: "}, default_prompt_name="missing")


def test_non_string_item_is_named_by_index_and_type(model):
    with pytest.raises(TypeError, match=r"item 2 is of type int"):
        model.encode(["fine", "also fine", 42])
    with pytest.raises(TypeError, match=r"item 0 is of type NoneType"):
        model.encode([None])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": -3}, "batch_size"),
        ({"precision": "int4"}, "precision 'int4'"),
        ({"output_value": "pooled"}, "output_value 'pooled'"),
    ],
)
def test_bad_encode_options_raise_value_error(model, options, message):
    with pytest.raises(ValueError, match=message):
        model.encode(SENTENCES, **options)


def test_truncate_dim_on_model_and_call(model):
    full = model.encode(SENTENCES)
    with model.truncate_sentence_embeddings(32):
        assert model.get_sentence_embedding_dimension() == 32
        np.testing.assert_allclose(model.encode(SENTENCES), full[:, :32], atol=1e-6)
    truncated_normalized = model.encode(SENTENCES, truncate_dim=16, normalize_embeddings=True)
    expected = full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True)
    np.testing.assert_allclose(truncated_normalized, expected, atol=1e-6)


def test_progress_bar_counts_every_text(model, capsys):
    model.encode(SENTENCES * 5, batch_size=4, show_progress_bar=True)
    assert "15/15" in capsys.readouterr().err


def test_token_budget_batches_give_the_same_vectors(model):
    texts = ["tiny", "word " * 200, "a medium sized sentence for the budget test"] * 4
    np.testing.assert_allclose(
        model.encode(texts, max_tokens_per_batch=256), model.encode(texts, batch_size=2), atol=1e-5
    )


# ---------------------------------------------------------------- similarity
@pytest.mark.parametrize("name", ["cosine", "dot", "euclidean", "manhattan"])
def test_similarity_functions_match_reference(model, reference, name):
    embeddings = model.encode(SENTENCES)
    model.similarity_fn_name = name
    reference.similarity_fn_name = name
    try:
        torch.testing.assert_close(model.similarity(embeddings, embeddings), reference.similarity(embeddings, embeddings))
        torch.testing.assert_close(
            model.similarity_pairwise(embeddings, embeddings[::-1].copy()),
            reference.similarity_pairwise(embeddings, embeddings[::-1].copy()),
        )
    finally:
        model.similarity_fn_name = reference.similarity_fn_name = "cosine"
    with pytest.raises(ValueError, match="similarity_fn_name 'hamming'"):
        model.similarity_fn_name = "hamming"
