"""The examples of sentence-transformers' "Computing Sentence Embeddings" page, import line changed.

Each snippet runs as written on that page, offline. Models the page names that are not
installed here (intfloat/multilingual-e5-large, all-mpnet-base-v2) are replaced by the
bundled all-MiniLM-L6-v2; the multi-process examples live in test_pool.py.
"""

from __future__ import annotations

import contextlib
import io
import textwrap

import pytest

BASIC_USAGE = """
from embedding_core import SentenceTransformer

# 1. Load a pretrained Sentence Transformer model
model = SentenceTransformer("all-MiniLM-L6-v2")

# The sentences to encode
sentences = [
    "The weather is lovely today.",
    "It's so sunny outside!",
    "He drove to the stadium.",
]

# 2. Calculate embeddings by calling model.encode()
embeddings = model.encode(sentences)
print(embeddings.shape)
# [3, 384]

# 3. Calculate the embedding similarities
similarities = model.similarity(embeddings, embeddings)
print(similarities)
# tensor([[1.0000, 0.6660, 0.1046],
#         [0.6660, 1.0000, 0.1411],
#         [0.1046, 0.1411, 1.0000]])
"""

INITIALIZING = """
from embedding_core import SentenceTransformer

model = SentenceTransformer("all-MiniLM-L6-v2", device="cpu")
"""

PROMPT_TEMPLATES = """
from embedding_core import SentenceTransformer

model = SentenceTransformer(
    "all-MiniLM-L6-v2",
    prompts={
        "classification": "Classify the following text: ",
        "retrieval": "Retrieve semantically similar text: ",
        "clustering": "Identify the topic or theme based on the text: ",
    },
)
# or
model.prompts = {
    "classification": "Classify the following text: ",
    "retrieval": "Retrieve semantically similar text: ",
    "clustering": "Identify the topic or theme based on the text: ",
}

embeddings = model.encode("How to bake a strawberry cake", prompt_name="retrieval")
embeddings_by_prompt = model.encode("How to bake a strawberry cake", prompt="Retrieve semantically similar text: ")

model = SentenceTransformer(
    "all-MiniLM-L6-v2",
    prompts={
        "classification": "Classify the following text: ",
        "retrieval": "Retrieve semantically similar text: ",
        "clustering": "Identify the topic or theme based on the text: ",
    },
    default_prompt_name="retrieval",
)
# or
model.default_prompt_name = "retrieval"
embeddings_by_default = model.encode("How to bake a strawberry cake")
"""

SEQUENCE_LENGTH = """
from embedding_core import SentenceTransformer

model = SentenceTransformer("all-MiniLM-L6-v2")
print("Max Sequence Length:", model.max_seq_length)
# => Max Sequence Length: 256

# Change the length to 200
model.max_seq_length = 200

print("Max Sequence Length:", model.max_seq_length)
# => Max Sequence Length: 200
"""


def run_snippet(source: str) -> tuple[dict, str]:
    namespace: dict = {}
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        exec(compile(textwrap.dedent(source), "<example>", "exec"), namespace)
    return namespace, stdout.getvalue()


def test_basic_usage_prints_the_documented_shape_and_similarities():
    namespace, printed = run_snippet(BASIC_USAGE)
    assert printed.splitlines()[0] == "(3, 384)"
    similarities = namespace["similarities"]
    expected = [[1.0, 0.6660, 0.1046], [0.6660, 1.0, 0.1411], [0.1046, 0.1411, 1.0]]
    flat = [value for row in similarities.tolist() for value in row]
    assert flat == pytest.approx([value for row in expected for value in row], abs=6e-4)


def test_initializing_on_a_device():
    namespace, _ = run_snippet(INITIALIZING)
    assert str(namespace["model"].device) == "cpu"


def test_prompt_templates():
    namespace, _ = run_snippet(PROMPT_TEMPLATES)
    assert namespace["embeddings"].shape == (384,)
    assert namespace["embeddings"].tolist() == pytest.approx(namespace["embeddings_by_prompt"].tolist(), abs=1e-6)
    assert namespace["embeddings"].tolist() == pytest.approx(namespace["embeddings_by_default"].tolist(), abs=1e-6)


def test_input_sequence_length():
    _, printed = run_snippet(SEQUENCE_LENGTH)
    assert printed.splitlines() == ["Max Sequence Length: 256", "Max Sequence Length: 200"]
