"""The sentence-transformers folder format: load the module chain, save it, reload it here
and in sentence-transformers."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from embedding_core import SentenceTransformer
from embedding_core.modules import Dense, Normalize, Pooling, Transformer
from tests.core.conftest import assert_rows_match, write_json

SENTENCES = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]


def test_plain_transformers_folder_gets_mean_pooling(tmp_path, tiny_bert_dir, caplog):
    from sentence_transformers import SentenceTransformer as ReferenceModel

    plain = tmp_path / "plain"
    shutil.copytree(tiny_bert_dir, plain)
    for name in ("modules.json", "sentence_bert_config.json"):
        (plain / name).unlink()
    shutil.rmtree(plain / "1_Pooling")
    with caplog.at_level(logging.WARNING, logger="embedding_core.folder"):
        ours = SentenceTransformer(str(plain), device="cpu")
    assert "no modules.json" in caplog.text and "mean pooling" in caplog.text
    assert [type(m) for m in ours] == [Transformer, Pooling] and ours.pooling_modes == ["mean"]
    texts = ["A plain transformers checkpoint.", "Mean pooling is the fallback."]
    assert_rows_match(ours.encode(texts), ReferenceModel(str(plain), device="cpu").encode(texts))


def test_unknown_module_type_is_named(tmp_path, tiny_bert_dir):
    folder = tmp_path / "odd"
    shutil.copytree(tiny_bert_dir, folder)
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_LSTM", "type": "sentence_transformers.models.LSTM"})
    write_json(folder / "modules.json", modules)
    with pytest.raises(ValueError, match="sentence_transformers.models.LSTM"):
        SentenceTransformer(str(folder), device="cpu")


def test_save_reloads_identically_here_and_in_reference(tmp_path, bundled_model_path):
    from sentence_transformers import SentenceTransformer as ReferenceModel

    original = SentenceTransformer(
        bundled_model_path, device="cpu", prompts={"query": "query: ", "doc": "passage: "}, default_prompt_name="query"
    )
    original.similarity_fn_name = "dot"
    original.save(str(tmp_path / "saved"))
    ours = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    theirs = ReferenceModel(str(tmp_path / "saved"), device="cpu")
    assert ours.prompts == theirs.prompts == {"query": "query: ", "document": "", "doc": "passage: "}
    assert ours.default_prompt_name == theirs.default_prompt_name == "query"
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
