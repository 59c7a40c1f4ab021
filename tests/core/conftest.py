"""Fixtures for the encoder tests: real texts, the reference oracle, model folders."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import read_jsonl_texts


@pytest.fixture(scope="session")
def parity_texts() -> list[str]:
    """A few hundred real texts: Python-doc paragraphs of every length plus package summaries."""
    mixed = read_jsonl_texts("mixed_texts.jsonl")
    short = read_jsonl_texts("short_texts.jsonl")
    by_length = sorted(mixed, key=len)
    # Every 12th paragraph by length spans the whole range, 10 to 900+ words.
    return by_length[::12] + short[::40]


@pytest.fixture(scope="session")
def reference_vectors(reference, parity_texts):
    """``reference_vectors(**options)``: sentence-transformers' vectors of ``parity_texts``
    with these encode options, encoded once per session for every test that compares with them."""
    encoded = {}

    def vectors(**options):
        key = tuple(sorted(options.items()))
        if key not in encoded:
            encoded[key] = reference.encode(parity_texts, **options)
            encoded[key].setflags(write=False)
        return encoded[key]

    return vectors


@pytest.fixture(scope="session")
def vectors() -> tuple[np.ndarray, np.ndarray]:
    """Random float32 queries (23 x 48) and corpus (1000 x 48)."""
    rng = np.random.default_rng(7)
    return rng.normal(size=(23, 48)).astype(np.float32), rng.normal(size=(1000, 48)).astype(np.float32)


@pytest.fixture(scope="session")
def model(bundled_model_path):
    from embedding_core import SentenceTransformer

    return SentenceTransformer(bundled_model_path, device="cpu")


def row_cosines(a, b) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def assert_rows_match(ours, theirs, min_cosine: float = 0.99999) -> None:
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape
    cosines = row_cosines(ours, theirs)
    worst = int(np.argmin(cosines))
    assert cosines[worst] >= min_cosine, f"row {worst} cosine {cosines[worst]:.7f} < {min_cosine}"


def runtime_cache(folder: Path):
    """Point ``EMBEDDING_CORE_CACHE`` at ``folder`` (built graphs never go to the user's cache)."""
    from embedding_core.backends.common import CACHE_ENV

    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous


@pytest.fixture(scope="session")
def backend_cache(tmp_path_factory):
    yield from runtime_cache(tmp_path_factory.mktemp("backend-cache"))


@pytest.fixture(scope="session")
def load_backend(bundled_model_path, backend_cache):
    """``load_backend(name)``: the bundled model on that backend, built once per session."""
    from embedding_core import SentenceTransformer

    loaded = {}

    def load(name: str):
        if name not in loaded:
            model = SentenceTransformer(bundled_model_path, device="cpu", backend=name)
            assert model.backend == name
            loaded[name] = model
        return loaded[name]

    return load


def top10_overlap(candidate, reference) -> float:
    """Mean share of each text's 10 nearest neighbours (cosine, self excluded) both agree on."""

    def top10(vectors):
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        scores = unit @ unit.T
        np.fill_diagonal(scores, -np.inf)
        return np.argpartition(-scores, 10, axis=1)[:, :10]

    pairs = zip(top10(np.asarray(candidate)), top10(np.asarray(reference)), strict=True)
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in pairs]))


def assert_fast_path_quality(fast, fp32, min_overlap: float | None = None) -> None:
    """The issue's bar for a lossy fast path: mean row cosine >= 0.99, min >= 0.97 (and top-10 overlap)."""
    cosines = row_cosines(fast, fp32)
    assert cosines.mean() >= 0.99, cosines.mean()
    assert cosines.min() >= 0.97, (cosines.min(), int(np.argmin(cosines)))
    if min_overlap is not None:
        overlap = top10_overlap(fast, fp32)
        assert overlap >= min_overlap, overlap


def linked_copy(source: str | Path, target: Path) -> Path:
    """A copy of a model folder whose large files are symlinks, so variants cost no disk."""
    source = Path(source)
    for path in source.rglob("*"):
        destination = target / path.relative_to(source)
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
        elif path.suffix in {".safetensors", ".bin"}:
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path, destination)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, destination)
    return target


def write_json(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2), encoding="utf-8")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, bundled_model_path) -> Path:
    """A randomly initialised 2-layer BERT with the real vocabulary, as a sentence-transformers folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(bundled_model_path).save_pretrained(folder)
    write_json(
        folder / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ],
    )
    write_json(folder / "sentence_bert_config.json", {"max_seq_length": 64, "do_lower_case": False})
    write_json(folder / "1_Pooling" / "config.json", {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True})
    return folder


def signal_when_working(pool, worker: int, signum: int, deadline_s: float = 120.0) -> threading.Thread:
    """A started thread that sends ``signum`` to the pool's ``worker`` once it holds a chunk,
    so the signal lands mid-call whatever the machine's speed (no race against a sleep)."""
    import time

    def send() -> None:
        deadline = time.monotonic() + deadline_s
        while pool.chunks_in_flight[worker] == 0:
            if time.monotonic() > deadline:
                return  # the call never gave it work: the caller's pytest.raises reports it
            time.sleep(0.01)
        os.kill(pool.pids[worker], signum)

    sender = threading.Thread(target=send)
    sender.start()
    return sender
