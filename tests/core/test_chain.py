"""The module chain's token-level steps: ``prepare`` once, ``forward_tokens`` on any subset
(what a pool worker does), and the recipe a worker rebuilds the model from."""

from __future__ import annotations

import pickle

import numpy as np

from embedding_core import SentenceTransformer
from embedding_core.batching import EncodeOptions
from embedding_core.modules import Pooling
from embedding_core.pool.worker import weights_fingerprint
from tests.core.conftest import assert_rows_match

TEXTS = ["A short one.", "A somewhat longer text about the weather today.", "Mid length text here."]


def test_prepare_records_the_prompt_length_only_when_pooling_leaves_the_prompt_out(model, tiny_bert_dir):
    assert model.prepare(TEXTS, "query: ").prompt_length is None  # all-MiniLM pools the prompt
    tiny = SentenceTransformer(str(tiny_bert_dir), device="cpu")
    tiny[1] = Pooling(32, "mean", include_prompt=False)
    with_prompt = tiny.prepare(TEXTS, "query: ")
    assert with_prompt.prompt_length == tiny.transformer.prompt_length("query: ") > 0
    assert (with_prompt.lengths > tiny.prepare(TEXTS).lengths).all()


def test_forward_tokens_of_a_subset_gives_those_rows_of_the_whole_call(model):
    tokens = model.prepare(TEXTS)
    options = EncodeOptions(normalize_embeddings=True, truncate_dim=64)
    whole = model.forward_tokens(tokens, options)
    part = model.forward_tokens(tokens.subset([2, 0]), options)
    assert whole.shape == (3, 64)
    assert_rows_match(part.numpy(), whole.numpy()[[2, 0]])
    np.testing.assert_array_equal(whole.numpy(), model.encode(TEXTS, normalize_embeddings=True, truncate_dim=64))


def test_the_recipe_pickles_and_rebuilds_the_same_weights(model, bundled_model_path):
    recipe = pickle.loads(pickle.dumps(model.recipe(bundled_model_path)))
    assert (recipe.path, recipe.dtype, recipe.backend) == (bundled_model_path, "float32", "torch")
    assert weights_fingerprint(recipe.load("cpu")) == weights_fingerprint(model)
