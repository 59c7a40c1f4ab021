"""The modules of the chain: their shared base (config keys, config load/save, registry)
and what each module does on its own."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from embedding_core import SentenceTransformer
from embedding_core.modules import (
    REGISTRY,
    Dense,
    Module,
    Normalize,
    Pooling,
    Transformer,
    module_class,
    saved_type_name,
)
from embedding_core.modules.transformer import RemoteCodeRequiredError


def test_the_registry_knows_each_module_by_its_class_name_in_any_spelling():
    assert set(REGISTRY) == {"Transformer", "Pooling", "Dense", "Normalize"}
    assert module_class("sentence_transformers.models.Pooling", "entry 1") is Pooling
    assert module_class("sentence_transformers.sentence_transformer.modules.dense.Dense", "entry 2") is Dense
    with pytest.raises(ValueError, match=r"entry 3 has type 'x.LSTM', which embedding_core does not implement"):
        module_class("x.LSTM", "entry 3")


def test_saved_type_names_are_what_every_sentence_transformers_release_reads():
    assert saved_type_name(Normalize()) == "sentence_transformers.models.Normalize"
    assert saved_type_name(torch.nn.ReLU()) is None


def test_pooling_config_round_trips_through_its_folder(tmp_path):
    Pooling(48, ["max", "cls"], include_prompt=False).save(str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config == {"word_embedding_dimension": 48, "pooling_mode": ["max", "cls"], "include_prompt": False}
    loaded = Pooling.load(str(tmp_path))
    assert (loaded.pooling_modes, loaded.include_prompt, loaded.get_sentence_embedding_dimension()) == (
        ["max", "cls"], False, 96)


def test_pooling_without_a_dimension_takes_the_transformers_width(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    assert Pooling.load(str(tmp_path), dimension=32).output_dimension(32) == 32
    with pytest.raises(ValueError, match="names no embedding dimension"):
        Pooling.load(str(tmp_path))


def test_dense_config_and_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    dense = Dense(8, 4, activation_function=torch.nn.Identity())
    dense.save(str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text())["activation_function"] == (
        "torch.nn.modules.linear.Identity")
    loaded = Dense.load(str(tmp_path))
    features = {"sentence_embedding": torch.randn(3, 8)}
    torch.testing.assert_close(loaded(dict(features))["sentence_embedding"], dense(dict(features))["sentence_embedding"])
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        Dense.load(str(tmp_path / "missing"))


def test_a_module_registered_in_its_own_file_loads_from_modules_json(tmp_path, tiny_bert_dir):
    class Halve(Module):
        config_keys = ("factor",)

        def __init__(self, factor: float = 0.5) -> None:
            super().__init__()
            self.factor = factor

        def forward(self, features):
            features["sentence_embedding"] = features["sentence_embedding"] * self.factor
            return features

        @classmethod
        def load(cls, input_path, **context):
            return cls(**cls.load_config(input_path))

    REGISTRY["Halve"] = Halve
    try:
        folder = tmp_path / "halved"
        shutil.copytree(tiny_bert_dir, folder)
        Halve(0.25).save(str(folder / "2_Halve"))
        entries = json.loads((folder / "modules.json").read_text())
        entries.append({"idx": 2, "name": "2", "path": "2_Halve", "type": "my_package.Halve"})
        (folder / "modules.json").write_text(json.dumps(entries))
        halved = SentenceTransformer(str(folder), device="cpu")
        plain = SentenceTransformer(str(tiny_bert_dir), device="cpu")
    finally:
        del REGISTRY["Halve"]
    assert type(halved[2]) is Halve and halved[2].factor == 0.25
    torch.testing.assert_close(torch.from_numpy(halved.encode(["a text"])), torch.from_numpy(plain.encode(["a text"])) * 0.25)


def test_transformer_config_keys_are_its_sentence_bert_config(tmp_path, tiny_bert_dir):
    transformer = Transformer.load(str(tiny_bert_dir))
    transformer.max_seq_length = 20
    transformer.save(str(tmp_path))
    assert json.loads((tmp_path / "sentence_bert_config.json").read_text()) == {
        "max_seq_length": 20, "do_lower_case": False}
    assert Transformer.load(str(tmp_path)).max_seq_length == 20
    assert transformer.backend == "torch" and transformer.runtime is None


def test_model_needing_remote_code_fails_clearly(tmp_path, tiny_bert_dir):
    folder = tmp_path / "remote"
    shutil.copytree(tiny_bert_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(RemoteCodeRequiredError, match="trust_remote_code=True"):
        SentenceTransformer(str(folder), device="cpu")


def test_max_seq_length_truncates_and_is_kept_past_the_model_limit_with_a_warning(tiny_bert_dir, caplog):
    tiny = SentenceTransformer(str(tiny_bert_dir), device="cpu")
    assert tiny.max_seq_length == 64
    tiny.max_seq_length = 10
    tokens = tiny.encode("one two three four five six seven eight nine ten eleven", output_value="token_embeddings")
    assert tokens.shape == (10, 32)
    assert tiny.tokenizer.model_max_length == 10
    # As in sentence-transformers: the value is kept (and the tokenizer follows), with a
    # warning naming the 128 positions the tiny model supports.
    with caplog.at_level(logging.WARNING):
        tiny.max_seq_length = 4096
    assert tiny.max_seq_length == tiny.tokenizer.model_max_length == 4096
    assert "128 positions" in caplog.text
    with pytest.raises(ValueError):
        tiny.max_seq_length = 0
