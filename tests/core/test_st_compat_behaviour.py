"""sentence-transformers 6 behaviour that ours must share (issue 28), each pinned against the
reference itself: the same call on both, the same answer.

``scripts/st_compat.py`` runs the reference's own test suite both ways; these are the cases it
found different, kept here so they stay fixed without a sentence-transformers checkout.
"""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import pytest
import torch

from embedding_core import SentenceTransformer
from embedding_core import util as our_util
from embedding_core.quantization import quantize_embeddings
from tests.core.conftest import assert_rows_match

TEXTS = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
PROMPTS = {"query": "query: ", "classification": "classify: "}


@pytest.fixture(scope="module")
def prompted(bundled_model_path):
    """Ours and the reference, both with a query prompt and a default prompt of another name."""
    from sentence_transformers import SentenceTransformer as ReferenceModel

    kwargs = {"device": "cpu", "prompts": PROMPTS, "default_prompt_name": "classification"}
    return SentenceTransformer(bundled_model_path, **kwargs), ReferenceModel(bundled_model_path, **kwargs)


@pytest.fixture(scope="module")
def pair(bundled_model_path):
    """A private pair to change (dtype, max_seq_length): the session fixtures stay untouched."""
    from sentence_transformers import SentenceTransformer as ReferenceModel

    return SentenceTransformer(bundled_model_path, device="cpu"), ReferenceModel(bundled_model_path, device="cpu")


# ---------------------------------------------------------------- prompts
def test_default_prompts_are_empty_query_and_document(model, reference):
    assert model.prompts == reference.prompts == {"query": "", "document": ""}


def test_saved_prompts_fill_only_the_names_the_caller_left_unset(prompted):
    ours, theirs = prompted
    assert ours.prompts == theirs.prompts == {"query": "query: ", "document": "", "classification": "classify: "}


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("encode_query", {}),
        ("encode_query", {"prompt": None}),
        ("encode_query", {"prompt_name": None}),
        ("encode_document", {}),
        ("encode_document", {"prompt": None, "prompt_name": None}),
        ("encode", {}),
        ("encode", {"prompt": ""}),
    ],
)
def test_query_document_and_default_prompts_resolve_as_in_the_reference(prompted, method, kwargs):
    # An explicit None is no prompt given: encode_query still applies "query: ", and the empty
    # "document" prompt keeps encode_document from falling back to the default "classify: ".
    ours, theirs = prompted
    assert_rows_match(getattr(ours, method)(TEXTS, **kwargs), getattr(theirs, method)(TEXTS, **kwargs))


def test_query_prompt_changes_the_vectors(prompted):
    ours, _ = prompted
    assert not np.allclose(ours.encode_query(TEXTS), ours.encode(TEXTS, prompt=""), atol=1e-3)


def test_prompt_and_prompt_name_together_warn_and_prompt_wins(prompted, caplog):
    ours, theirs = prompted
    with caplog.at_level(logging.WARNING):
        embeddings = ours.encode(TEXTS, prompt="query: ", prompt_name="classification")
    assert "prompt_name" in caplog.text
    assert_rows_match(embeddings, theirs.encode(TEXTS, prompt="query: ", prompt_name="classification"))


# ---------------------------------------------------------------- encode arguments
def test_truncate_dim_applies_to_output_value_none(model, reference):
    ours = model.encode(TEXTS[:2], output_value=None, truncate_dim=96)
    theirs = reference.encode(TEXTS[:2], output_value=None, truncate_dim=96)
    assert ours[0]["sentence_embedding"].shape == theirs[0]["sentence_embedding"].shape == (96,)
    assert_rows_match([row["sentence_embedding"].numpy() for row in ours],
                      [row["sentence_embedding"].numpy() for row in theirs])


def test_precision_none_means_float32(model, reference):
    ours, theirs = model.encode(TEXTS, precision=None), reference.encode(TEXTS, precision=None)
    assert ours.dtype == theirs.dtype == np.float32
    assert_rows_match(ours, theirs)


def test_unknown_encode_keyword_is_refused_with_the_reference_message(model, reference):
    messages = []
    for encoder in (model, reference):
        with pytest.raises(ValueError) as error:
            encoder.encode("Test sentence", normalize=True)
        messages.append(str(error.value))
    assert messages[0] == messages[1]
    assert model.get_model_kwargs() == reference.get_model_kwargs() == []


def test_inputs_task_and_processing_kwargs_are_taken(model, reference):
    text = "this sentence is much longer than four tokens for sure"
    cut = {"text": {"max_length": 4, "truncation": True}}
    ours = model.encode(inputs=[text], task="query", processing_kwargs=cut)
    theirs = reference.encode(inputs=[text], task="query", processing_kwargs=cut)
    assert_rows_match(ours, theirs)
    assert not np.allclose(ours, model.encode([text]), atol=1e-3)
    assert model.max_seq_length == 256  # the cut lasts one call


@pytest.mark.parametrize("prompt", [None, "query: "])
def test_output_value_none_has_the_features_the_reference_gives(model, reference, prompt):
    ours = model.encode(TEXTS[0], output_value=None, prompt=prompt)
    theirs = reference.encode(TEXTS[0], output_value=None, prompt=prompt)
    assert set(ours) == set(theirs)
    assert ours["token_type_ids"].tolist() == theirs["token_type_ids"].tolist()
    assert ours["input_ids"].tolist() == theirs["input_ids"].tolist()
    assert ours.get("prompt_length") == theirs.get("prompt_length")
    assert (prompt is None) == ("prompt_length" not in ours)


PAIRS = [
    ("Hello Word, a test sentence", "Second input for model"),
    ("My second tuple", "With two inputs"),
    ("A long first text", "and a second one that runs on " * 60),
]


@pytest.mark.parametrize(
    "inputs",
    [PAIRS, [list(pair) for pair in PAIRS], np.array(PAIRS), tuple(PAIRS)],
    ids=["tuples", "lists", "2d-array", "tuple-of-tuples"],
)
def test_text_pairs_encode_as_two_segments_like_the_reference(model, reference, inputs):
    ours, theirs = model.encode(inputs), reference.encode(inputs)
    assert ours.shape == theirs.shape == (3, 384)
    assert_rows_match(ours, theirs)
    # A pair is not its two texts run together: the second segment has token type 1.
    joined = model.encode([first + " " + second for first, second in PAIRS])
    assert not np.allclose(ours, joined, atol=1e-3)


def test_text_pairs_take_the_prompt_on_the_first_text(model, reference):
    assert_rows_match(model.encode(PAIRS, prompt="query: "), reference.encode(PAIRS, prompt="query: "))


# ---------------------------------------------------------------- dtypes and util
def test_half_precision_model_encodes_in_its_dtype_and_similarity_upcasts(pair):
    ours, theirs = pair
    ours.half()
    theirs.half()
    try:
        ours_tensor = ours.encode(TEXTS, convert_to_tensor=True)
        theirs_tensor = theirs.encode(TEXTS, convert_to_tensor=True)
        assert ours.dtype == theirs.dtype == torch.float16
        assert ours_tensor.dtype == theirs_tensor.dtype == torch.float16
        assert ours.encode(TEXTS).dtype == theirs.encode(TEXTS).dtype == np.float16
        ours_scores, theirs_scores = ours.similarity(ours_tensor, ours_tensor), theirs.similarity(theirs_tensor, theirs_tensor)
        assert ours_scores.dtype == theirs_scores.dtype == torch.float32
        torch.testing.assert_close(ours_scores, theirs_scores, atol=5e-3, rtol=0)
    finally:
        ours.float()
        theirs.float()


@pytest.mark.parametrize("name", ["cos_sim", "dot_score", "pairwise_cos_sim", "pairwise_dot_score"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_scores_are_float32(name, dtype):
    from sentence_transformers import util as reference_util

    generator = torch.Generator().manual_seed(3)
    a, b = torch.randn(20, 64, generator=generator).to(dtype), torch.randn(20, 64, generator=generator).to(dtype)
    ours, theirs = getattr(our_util, name)(a, b), getattr(reference_util, name)(a, b)
    assert ours.dtype == theirs.dtype == torch.float32
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize(
    "name",
    ["cos_sim", "dot_score", "euclidean_sim", "manhattan_sim", "pairwise_cos_sim", "pairwise_dot_score",
     "pairwise_euclidean_sim", "pairwise_manhattan_sim"],
)
def test_sparse_inputs_score_as_the_reference_scores_them(name):
    from sentence_transformers import util as reference_util

    generator = torch.Generator().manual_seed(5)
    dense = torch.randn(6, 40, generator=generator) * (torch.rand(6, 40, generator=generator) < 0.2)
    other = torch.randn(6, 40, generator=generator) * (torch.rand(6, 40, generator=generator) < 0.2)
    sparse, other_sparse = dense.to_sparse(), other.to_sparse()
    ours = getattr(our_util, name)(sparse, other_sparse)
    theirs = getattr(reference_util, name)(sparse, other_sparse)
    assert not ours.is_sparse
    torch.testing.assert_close(ours, theirs.to_dense(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(getattr(our_util, name)(sparse, other), ours, atol=1e-5, rtol=1e-5)


def test_normalize_embeddings_keeps_a_sparse_input_sparse():
    from sentence_transformers import util as reference_util

    sparse = torch.tensor([[3.0, 0.0, 4.0], [0.0, 0.0, 0.0]]).to_sparse()
    ours, theirs = our_util.normalize_embeddings(sparse), reference_util.normalize_embeddings(sparse)
    assert ours.is_sparse and theirs.is_sparse
    torch.testing.assert_close(ours.to_dense(), theirs.to_dense())


def test_truncate_embeddings_and_similarity_enum_match_the_reference(model, reference):
    from sentence_transformers import util as reference_util
    from sentence_transformers.util.similarity import SimilarityFunction as ReferenceSimilarity

    embeddings = model.encode(TEXTS)
    assert our_util.truncate_embeddings(embeddings, 64).shape == reference_util.truncate_embeddings(embeddings, 64).shape
    model_copy = SentenceTransformer(modules=list(model), device="cpu")
    for member in (ReferenceSimilarity.DOT_PRODUCT, our_util.SimilarityFunction.MANHATTAN):
        model_copy.similarity_fn_name = member
        reference_name = ReferenceSimilarity(member.value).value
        assert model_copy.similarity_fn_name == reference_name
    assert our_util.SimilarityFunction.to_similarity_fn("cosine") is our_util.cos_sim


# ---------------------------------------------------------------- quantization
def test_quantize_empty_list_is_an_empty_list():
    from sentence_transformers.util import quantize_embeddings as reference_quantize

    for precision in ("int8", "uint8", "binary", "ubinary", "float32"):
        assert quantize_embeddings([], precision=precision) == reference_quantize([], precision=precision) == []


@pytest.mark.parametrize("precision", ["int8", "ubinary"])
def test_unequal_token_matrices_quantize_to_a_list_with_shared_buckets(precision):
    from sentence_transformers.util import quantize_embeddings as reference_quantize

    rng = np.random.default_rng(11)
    matrices = [rng.normal(size=(rows, 16)).astype(np.float32) for rows in (3, 70, 40)]
    ours, theirs = quantize_embeddings(matrices, precision), reference_quantize(matrices, precision=precision)
    assert [m.shape for m in ours] == [m.shape for m in theirs]
    for mine, reference in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(mine, reference)


# ---------------------------------------------------------------- model settings and names
def test_max_seq_length_setter_keeps_the_value_and_updates_the_tokenizer(pair):
    ours, theirs = pair
    try:
        for value in (100, 1000):
            ours.max_seq_length = theirs.max_seq_length = value
            assert ours.max_seq_length == theirs.max_seq_length == value
            assert ours.tokenizer.model_max_length == theirs.tokenizer.model_max_length == value
    finally:
        ours.max_seq_length = theirs.max_seq_length = 256


def test_names_and_properties_answer_as_the_reference(model, reference):
    assert model.get_embedding_dimension() == reference.get_embedding_dimension() == 384
    assert model.dtype == reference.dtype == torch.float32
    assert model.get_backend() == reference.get_backend() == "torch"
    assert model.modalities == reference.modalities == ["text"]
    assert model.supports("text") and not model.supports("image") and not reference.supports("image")
    assert type(model.transformers_model) is type(reference.transformers_model)
    for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size"):
        assert getattr(model.config, key) == getattr(reference.config, key)
    cases = ["one text", ["a", "b"], ("a", "b"), np.array(["a", "b"]), np.array(["a", "b"], dtype=object), 3]
    assert [model.is_singular_input(case) for case in cases] == [reference.is_singular_input(case) for case in cases]


def test_pooling_can_leave_the_prompt_out(bundled_model_path):
    from sentence_transformers import SentenceTransformer as ReferenceModel

    ours = SentenceTransformer(bundled_model_path, device="cpu")
    theirs = ReferenceModel(bundled_model_path, device="cpu")
    ours.set_pooling_include_prompt(False)
    theirs.set_pooling_include_prompt(False)
    assert_rows_match(ours.encode(TEXTS, prompt="query: "), theirs.encode(TEXTS, prompt="query: "))
    assert not np.allclose(ours.encode(TEXTS, prompt="query: "), ours.encode(TEXTS, prompt=""), atol=1e-3)


# ---------------------------------------------------------------- construction errors
def test_empty_modules_list_is_refused():
    from sentence_transformers import SentenceTransformer as ReferenceModel

    for cls in (SentenceTransformer, ReferenceModel):
        with pytest.raises(ValueError, match="An empty modules list was passed"):
            cls(modules=[])


def test_a_path_to_a_file_is_not_a_directory(tmp_path):
    from sentence_transformers import SentenceTransformer as ReferenceModel

    collision = tmp_path / "bert-base-uncased"
    collision.write_text("not a model")
    for cls in (SentenceTransformer, ReferenceModel):
        with pytest.raises(NotADirectoryError):
            cls(str(collision))


def test_a_path_wins_over_modules_with_a_warning(bundled_model_path, caplog):
    with caplog.at_level(logging.WARNING):
        ours = SentenceTransformer(bundled_model_path, modules=[torch.nn.Identity()], device="cpu")
    assert "`modules` is ignored" in caplog.text
    assert len(ours) == 3  # the folder's Transformer, Pooling, Normalize


def test_use_auth_token_warns_and_conflicts_with_token():
    from sentence_transformers import SentenceTransformer as ReferenceModel

    for cls in (SentenceTransformer, ReferenceModel):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cls(modules=[torch.nn.Linear(4, 4)], use_auth_token="unused", device="cpu")
        assert [w for w in caught if issubclass(w.category, FutureWarning) and "use_auth_token" in str(w.message)]
        with pytest.raises(ValueError, match="Both `token` and `use_auth_token`"):
            cls(modules=[torch.nn.Linear(4, 4)], token="a", use_auth_token="b", device="cpu")


# ---------------------------------------------------------------- saving
def test_unmet_requirements_fail_the_load_on_both(model, tmp_path):
    from sentence_transformers import SentenceTransformer as ReferenceModel

    model.save(str(tmp_path), safe_serialization=False)
    assert (tmp_path / "model.safetensors").exists()  # transformers 5 writes safetensors regardless
    config_path = tmp_path / "config_sentence_transformers.json"
    config = json.loads(config_path.read_text())
    config["requirements"] = {"transformers": ">=1.0"}
    config_path.write_text(json.dumps(config))
    assert len(SentenceTransformer(str(tmp_path), device="cpu")) == 3
    config["requirements"] = {"transformers": ">=999"}
    config_path.write_text(json.dumps(config))
    for cls in (SentenceTransformer, ReferenceModel):
        with pytest.raises(ImportError, match="transformers>=999"):
            cls(str(tmp_path), device="cpu")


def test_a_model_with_a_reference_module_saves_and_reloads_on_both(model, tmp_path):
    from sentence_transformers import SentenceTransformer as ReferenceModel
    from sentence_transformers.sentence_transformer.modules import Normalize as ReferenceNormalize

    mixed = SentenceTransformer(modules=[model[0], model[1], ReferenceNormalize()], device="cpu")
    mixed.save(str(tmp_path))
    expected = model.encode(TEXTS)
    assert_rows_match(SentenceTransformer(str(tmp_path), device="cpu").encode(TEXTS), expected)
    assert_rows_match(ReferenceModel(str(tmp_path), device="cpu").encode(TEXTS), expected)


def test_model_card_usage_snippet_names_the_model_id(model, tmp_path):
    model.save(str(tmp_path / "first"))
    assert 'model = SentenceTransformer("sentence_transformers_model_id")' in (tmp_path / "first" / "README.md").read_text()
    reloaded = SentenceTransformer(str(tmp_path / "first"), device="cpu")
    (tmp_path / "first" / "README.md").unlink()
    reloaded.save(str(tmp_path / "second"), model_name="test_user/test_model")
    assert 'model = SentenceTransformer("test_user/test_model")' in (tmp_path / "second" / "README.md").read_text()
    assert reloaded.model_card_data.model_id == "test_user/test_model"


@pytest.mark.parametrize("inputs, prompt", [
    (TEXTS, None), (TEXTS, "query: "), ([("A question?", "An answer."), ("Short", "a longer second text")], None),
    ([], None)])
def test_preprocess_gives_the_features_the_reference_gives(prompted, inputs, prompt):
    ours, reference = prompted
    expected = reference.preprocess(inputs, prompt=prompt)
    got = ours.preprocess(inputs, prompt=prompt)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value) if torch.is_tensor(value) else got[key] == value, key
    with pytest.raises(ValueError, match="not both"):
        ours.preprocess(["a text", ("a", "pair")])
