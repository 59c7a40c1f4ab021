"""Hub names, revisions, caches and offline behaviour, against a hub cache laid out here."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from embedding_core import SentenceTransformer
from embedding_core.hub import (
    DEFAULT_MODEL_NAME,
    ModelNotFoundError,
    canonical_model_name,
    folder_content_hash,
    resolve_model,
)

COMMIT_V1 = "1111111111111111111111111111111111111111"
COMMIT_V2 = "2222222222222222222222222222222222222222"


def lay_out_hub_repo(cache: Path, repo_id: str, snapshots: dict[str, Path], refs: dict[str, str]) -> None:
    """Write ``models--org--name/{refs,snapshots}`` the way huggingface_hub's cache stores a repo."""
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    for commit, source in snapshots.items():
        shutil.copytree(source, repo_dir / "snapshots" / commit, symlinks=False)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    for ref, commit in refs.items():
        (repo_dir / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / ref).write_text(commit)


@pytest.fixture()
def hub_cache(tmp_path, tiny_bert_dir) -> Path:
    """A cache with ``acme/tiny-bert`` at two commits (``main`` -> v2, tag ``v1.0`` -> v1)."""
    import torch
    from transformers import BertModel

    second = tmp_path / "second"
    shutil.copytree(tiny_bert_dir, second)
    changed = BertModel.from_pretrained(second)
    with torch.no_grad():
        changed.embeddings.word_embeddings.weight.mul_(-1.0)
    changed.save_pretrained(second)
    cache = tmp_path / "hub"
    lay_out_hub_repo(
        cache,
        "acme/tiny-bert",
        {COMMIT_V1: tiny_bert_dir, COMMIT_V2: second},
        {"main": COMMIT_V2, "v1.0": COMMIT_V1},
    )
    lay_out_hub_repo(cache, "sentence-transformers/tiny-bert", {COMMIT_V1: tiny_bert_dir}, {"main": COMMIT_V1})
    return cache


def test_branch_is_pinned_to_its_commit(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    resolved = resolve_model("acme/tiny-bert", cache_folder=str(hub_cache))
    assert resolved.source == "hub"
    assert resolved.revision == COMMIT_V2
    assert Path(resolved.path).name == COMMIT_V2
    assert resolve_model("acme/tiny-bert", revision="main", cache_folder=str(hub_cache)).revision == COMMIT_V2


def test_tag_and_commit_revisions_load_their_snapshot(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    by_tag = SentenceTransformer("acme/tiny-bert", revision="v1.0", cache_folder=str(hub_cache), device="cpu")
    by_sha = SentenceTransformer("acme/tiny-bert", revision=COMMIT_V1, cache_folder=str(hub_cache), device="cpu")
    latest = SentenceTransformer("acme/tiny-bert", cache_folder=str(hub_cache), device="cpu")
    assert by_tag.revision == by_sha.revision == COMMIT_V1
    assert latest.revision == COMMIT_V2 and latest.model_source == "hub"
    text = ["A revision is an immutable snapshot."]
    np.testing.assert_array_equal(by_tag.encode(text), by_sha.encode(text))
    assert not np.allclose(by_tag.encode(text), latest.encode(text))


def test_name_without_organisation_means_sentence_transformers(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert canonical_model_name("tiny-bert") == "sentence-transformers/tiny-bert"
    resolved = resolve_model("tiny-bert", cache_folder=str(hub_cache))
    assert resolved.name == "sentence-transformers/tiny-bert" and resolved.revision == COMMIT_V1


def test_sentence_transformers_home_is_the_default_cache(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SENTENCE_TRANSFORMERS_HOME", str(hub_cache))
    assert resolve_model("acme/tiny-bert").revision == COMMIT_V2


def test_hf_cache_is_used_without_cache_folder(hub_cache, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("SENTENCE_TRANSFORMERS_HOME", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))
    assert resolve_model("acme/tiny-bert", revision="v1.0", token="hf_unused_offline").revision == COMMIT_V1


def test_local_files_only_works_without_the_env_variable(hub_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    resolved = resolve_model("acme/tiny-bert", cache_folder=str(hub_cache), local_files_only=True)
    assert resolved.revision == COMMIT_V2


def test_missing_model_offline_names_model_revision_and_prefetch(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as error:
        SentenceTransformer("acme/not-cached", revision="v3", cache_folder=str(hub_cache))
    message = str(error.value)
    assert "acme/not-cached" in message and "'v3'" in message
    assert "hf download acme/not-cached --revision v3" in message


def test_missing_revision_of_cached_model_fails_clearly(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="acme/tiny-bert.*'v9.9'"):
        resolve_model("acme/tiny-bert", revision="v9.9", cache_folder=str(hub_cache))


def test_default_model_falls_back_to_bundled_copy_offline(tmp_path, monkeypatch, bundled_model_path, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level("INFO", logger="embedding_core.hub"):
        resolved = resolve_model("all-MiniLM-L6-v2", cache_folder=str(tmp_path / "empty"))
    assert resolved.source == "bundled" and resolved.name == DEFAULT_MODEL_NAME
    assert resolved.path == bundled_model_path
    assert resolved.revision == folder_content_hash(bundled_model_path)
    assert "bundled copy" in caplog.text
    assert resolve_model(None, cache_folder=str(tmp_path / "empty")).revision == resolved.revision


def test_cached_default_model_wins_over_bundled_copy(tmp_path, monkeypatch, bundled_model_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lay_out_hub_repo(tmp_path, DEFAULT_MODEL_NAME, {COMMIT_V1: Path(bundled_model_path)}, {"main": COMMIT_V1})
    resolved = resolve_model("all-MiniLM-L6-v2", cache_folder=str(tmp_path))
    assert (resolved.source, resolved.revision) == ("hub", COMMIT_V1)


def test_local_folder_revision_is_a_content_hash(tiny_bert_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bert_dir, copy)
    resolved = resolve_model(str(copy))
    assert resolved.source == "local" and resolved.revision.startswith("sha256:")
    assert resolved.revision == folder_content_hash(tiny_bert_dir)
    (copy / "sentence_bert_config.json").write_text('{"max_seq_length": 32}')
    assert resolve_model(str(copy)).revision != resolved.revision


def test_nonexistent_local_path_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(ModelNotFoundError, match="neither an existing folder"):
        resolve_model(str(tmp_path / "no" / "such" / "model"))
