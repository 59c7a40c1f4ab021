"""Loading, encode semantics, bad input, save/load and similarity of SentenceTransformer."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from embedding_core import SentenceTransformer
from embedding_core.modules import Dense, Normalize, Pooling, Transformer
from embedding_core.modules.transformer import RemoteCodeRequiredError
from tests.core.conftest import assert_rows_match, write_json

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


def test_plain_transformers_folder_gets_mean_pooling(tmp_path, tiny_bert_dir, caplog):
    from sentence_transformers import SentenceTransformer as ReferenceModel

    plain = tmp_path / "plain"
    shutil.copytree(tiny_bert_dir, plain)
    for name in ("modules.json", "sentence_bert_config.json"):
        (plain / name).unlink()
    shutil.rmtree(plain / "1_Pooling")
    with caplog.at_level(logging.WARNING, logger="embedding_core.model"):
        ours = SentenceTransformer(str(plain), device="cpu")
    assert "no modules.json" in caplog.text and "mean pooling" in caplog.text
    assert [type(m) for m in ours] == [Transformer, Pooling] and ours.pooling_modes == ["mean"]
    texts = ["A plain transformers checkpoint.", "Mean pooling is the fallback."]
    assert_rows_match(ours.encode(texts), ReferenceModel(str(plain), device="cpu").encode(texts))


def test_model_needing_remote_code_fails_clearly(tmp_path, tiny_bert_dir):
    folder = tmp_path / "remote"
    shutil.copytree(tiny_bert_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(RemoteCodeRequiredError, match="trust_remote_code=True"):
        SentenceTransformer(str(folder), device="cpu")


def test_unknown_module_type_is_named(tmp_path, tiny_bert_dir):
    folder = tmp_path / "odd"
    shutil.copytree(tiny_bert_dir, folder)
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_LSTM", "type": "sentence_transformers.models.LSTM"})
    write_json(folder / "modules.json", modules)
    with pytest.raises(ValueError, match="sentence_transformers.models.LSTM"):
        SentenceTransformer(str(folder), device="cpu")


def test_device_none_picks_cpu_without_accelerators(tiny_bert_dir):
    assert SentenceTransformer(str(tiny_bert_dir)).device.type == "cpu"
    with pytest.raises(RuntimeError):
        SentenceTransformer(str(tiny_bert_dir), device="tpu")


def test_max_seq_length_truncates_and_is_capped(tiny_bert_dir, caplog):
    tiny = SentenceTransformer(str(tiny_bert_dir), device="cpu")
    assert tiny.max_seq_length == 64
    tiny.max_seq_length = 10
    tokens = tiny.encode("one two three four five six seven eight nine ten eleven", output_value="token_embeddings")
    assert tokens.shape == (10, 32)
    with caplog.at_level(logging.WARNING):
        tiny.max_seq_length = 4096
    assert tiny.max_seq_length == 128  # the tiny model's max_position_embeddings
    with pytest.raises(ValueError):
        tiny.max_seq_length = 0


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
    with pytest.raises(ValueError, match=r"'summary'.*\['doc', 'query'\]"):
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


# ---------------------------------------------------------------- save / load
def test_save_reloads_identically_here_and_in_reference(tmp_path, bundled_model_path):
    from sentence_transformers import SentenceTransformer as ReferenceModel

    original = SentenceTransformer(
        bundled_model_path, device="cpu", prompts={"query": "query: ", "doc": "passage: "}, default_prompt_name="query"
    )
    original.similarity_fn_name = "dot"
    original.save(str(tmp_path / "saved"))
    ours = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    theirs = ReferenceModel(str(tmp_path / "saved"), device="cpu")
    assert ours.prompts == {"query": "query: ", "doc": "passage: "} and ours.default_prompt_name == "query"
    assert theirs.prompts["query"] == "query: " and theirs.default_prompt_name == "query"
    assert ours.similarity_fn_name == "dot" and ours.max_seq_length == 256
    expected = original.encode(SENTENCES)
    np.testing.assert_array_equal(ours.encode(SENTENCES), expected)
    assert_rows_match(theirs.encode(SENTENCES), expected)


def test_save_pretrained_keeps_pooling_dense_and_truncate_dim(tmp_path, tiny_bert_dir):
    from sentence_transformers import SentenceTransformer as ReferenceModel

    torch.manual_seed(3)
    transformer = Transformer.load(str(tiny_bert_dir))
    built = SentenceTransformer(
        modules=[transformer, Pooling(32, ["max", "cls"], include_prompt=False), Dense(64, 16), Normalize()],
        device="cpu",
        truncate_dim=8,
    )
    assert built.model_source == "modules" and built.revision is None
    built.save_pretrained(str(tmp_path / "built"))
    reloaded = SentenceTransformer(str(tmp_path / "built"), device="cpu")
    assert reloaded.pooling_modes == ["max", "cls"] and reloaded.pooling.include_prompt is False
    assert reloaded.truncate_dim == 8 and reloaded.get_sentence_embedding_dimension() == 8
    np.testing.assert_allclose(reloaded.encode(SENTENCES), built.encode(SENTENCES), atol=1e-6)
    reference = ReferenceModel(str(tmp_path / "built"), device="cpu")
    assert_rows_match(reference.encode(SENTENCES)[:, :8], built.encode(SENTENCES))


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
