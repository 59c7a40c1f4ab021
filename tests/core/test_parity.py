"""Vectors equal to sentence-transformers' on real texts, for every option the issue names."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from embedding_core import SentenceTransformer
from tests.core.conftest import assert_rows_match, linked_copy, write_json


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"normalize_embeddings": True},
        {"truncate_dim": 128},
        {"truncate_dim": 64, "normalize_embeddings": True},
        {"prompt": "query: "},
        {"batch_size": 7},
    ],
    ids=["default", "normalize", "truncate", "truncate+normalize", "prompt", "batch7"],
)
def test_encode_matches_reference(model, reference_vectors, parity_texts, options):
    ours = model.encode(parity_texts, **options)
    theirs = reference_vectors(**options)
    assert ours.dtype == np.float32
    assert_rows_match(ours, theirs)


def test_parity_texts_span_short_and_long_inputs(model, parity_texts):
    lengths = model.prepare(parity_texts).lengths
    assert len(parity_texts) >= 200
    assert lengths.min() <= 10 and lengths.max() == model.max_seq_length == 256


def test_token_embeddings_match_reference(model, reference, parity_texts):
    texts = parity_texts[::4]
    ours = model.encode(texts, output_value="token_embeddings")
    theirs = reference.encode(texts, output_value="token_embeddings")
    assert len(ours) == len(theirs) == len(texts)
    for mine, ref in zip(ours, theirs):
        assert mine.shape == ref.shape
        assert_rows_match(mine.cpu().numpy(), ref.cpu().numpy())


def test_output_value_none_gives_every_feature_per_text(model, reference, parity_texts):
    texts = parity_texts[:5]
    ours = model.encode(texts, output_value=None)
    theirs = reference.encode(texts, output_value=None)
    for mine, ref in zip(ours, theirs):
        assert {"input_ids", "attention_mask", "token_embeddings", "sentence_embedding"} <= set(mine)
        assert_rows_match(mine["sentence_embedding"][None].numpy(), ref["sentence_embedding"][None].numpy())
        real_tokens = int(mine["attention_mask"].sum())
        assert torch.equal(mine["input_ids"][:real_tokens], ref["input_ids"][:real_tokens])


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_quantized_outputs_match_reference(model, reference, parity_texts, precision):
    ours = model.encode(parity_texts, precision=precision)
    theirs = reference.encode(parity_texts, precision=precision)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    if precision.endswith("binary"):
        assert ours.shape[1] == 384 // 8
        # A bit may only differ where the float value sits at zero within rounding noise.
        assert (ours != theirs).mean() < 1e-3
    else:
        assert np.abs(ours.astype(np.int16) - theirs.astype(np.int16)).max() <= 1


@pytest.fixture(scope="module")
def variant_folder(tmp_path_factory, bundled_model_path):
    """Build a copy of the bundled folder with a changed pooling config (and optional Dense)."""

    def build(pooling_config: dict, dense: bool = False) -> str:
        folder = linked_copy(bundled_model_path, tmp_path_factory.mktemp("variant"))
        write_json(folder / "1_Pooling" / "config.json", pooling_config)
        modules = json.loads((folder / "modules.json").read_text())
        if dense:
            from embedding_core.modules import Dense

            torch.manual_seed(1)
            width = 384 * sum(bool(v) for k, v in pooling_config.items() if k.startswith("pooling_mode"))
            Dense(width, 96, activation_function=torch.nn.Tanh()).save(str(folder / "3_Dense"))
            modules = [m for m in modules if not m["type"].endswith("Normalize")]
            modules.append({"idx": 2, "name": "2", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
        write_json(folder / "modules.json", modules)
        return str(folder)

    return build


MODE_FLAGS = {
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "mean": "pooling_mode_mean_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}


def pooling_config(modes: list[str], include_prompt: bool = True) -> dict:
    config = {"word_embedding_dimension": 384, "include_prompt": include_prompt}
    config.update({flag: mode in modes for mode, flag in MODE_FLAGS.items()})
    return config


@pytest.mark.parametrize(
    "modes", [["cls"], ["max"], ["mean_sqrt_len_tokens"], ["weightedmean"], ["lasttoken"], ["cls", "max", "mean"]]
)
def test_each_pooling_mode_matches_reference(variant_folder, parity_texts, modes):
    from sentence_transformers import SentenceTransformer as ReferenceModel

    folder = variant_folder(pooling_config(modes))
    texts = parity_texts[::3]
    ours = SentenceTransformer(folder, device="cpu")
    assert ours.pooling_modes == modes
    assert ours.get_sentence_embedding_dimension() == 384 * len(modes)
    assert_rows_match(ours.encode(texts), ReferenceModel(folder, device="cpu").encode(texts))


@pytest.mark.parametrize("modes", [["mean"], ["cls"], ["weightedmean"], ["lasttoken"]])
def test_prompt_excluded_from_pooling_matches_reference(variant_folder, parity_texts, modes):
    from sentence_transformers import SentenceTransformer as ReferenceModel

    folder = variant_folder(pooling_config(modes, include_prompt=False))
    texts = parity_texts[::3]
    ours = SentenceTransformer(folder, device="cpu", prompts={"query": "Represent this question for retrieval: "})
    reference = ReferenceModel(folder, device="cpu", prompts={"query": "Represent this question for retrieval: "})
    excluded = ours.encode(texts, prompt_name="query")
    assert_rows_match(excluded, reference.encode(texts, prompt_name="query"))
    if modes != ["lasttoken"]:
        # Masking the prompt out of the pooling changes the vectors; lasttoken never pools the prompt.
        included = SentenceTransformer(variant_folder(pooling_config(modes)), device="cpu")
        assert not np.allclose(excluded, included.encode(texts, prompt="Represent this question for retrieval: "))


def test_dense_module_matches_reference(variant_folder, parity_texts):
    from sentence_transformers import SentenceTransformer as ReferenceModel

    folder = variant_folder(pooling_config(["cls", "mean"]), dense=True)
    ours = SentenceTransformer(folder, device="cpu")
    assert ours.get_sentence_embedding_dimension() == 96
    texts = parity_texts[::3]
    assert_rows_match(ours.encode(texts), ReferenceModel(folder, device="cpu").encode(texts))
