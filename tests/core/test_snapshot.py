"""snapshot: pinning a configured model, the bounded load cache, the encoding session that
owns the pool, and "the current snapshot or a clear error"."""

from __future__ import annotations

import dataclasses

import pytest

from embedding_core import snapshot as snapshot_module
from embedding_core.hub import DEFAULT_MODEL_NAME
from embedding_core.snapshot import EncoderConfig, SnapshotNotCurrentError, require_current_snapshot
from embedding_core.store import EmbeddingStore, ModelSnapshot


def pinned(name: str = "org/model", **fields) -> ModelSnapshot:
    values = dict(model_key=name, model=name, revision="a" * 40, source="hub", path=f"/nowhere/{name}", dim=8,
                  prompts={"query": "query: "})
    return ModelSnapshot(**{**values, **fields})


class FakeModel:
    def __init__(self, snapshot):
        self.snapshot = snapshot
        self.max_seq_length = 256
        self.calls = []
        self.pools = []

    def encode(self, texts, **options):
        self.calls.append((list(texts), options))
        return [[0.0] * 8 for _ in texts]

    def start_multi_process_pool(self, devices):
        pool = type("Pool", (), {"devices": devices, "closed": False, "close": lambda self: setattr(self, "closed", True)})()
        self.pools.append(pool)
        return pool


@pytest.fixture
def fake_loads(monkeypatch):
    loads = []

    def load(snapshot, device=None, cache_folder=None, local_files_only=False, backend="torch"):
        loads.append(snapshot.model)
        return FakeModel(snapshot)

    monkeypatch.setattr(snapshot_module, "load_snapshot_model", load)
    monkeypatch.setattr(snapshot_module, "_loaded", type(snapshot_module._loaded)())
    return loads


def test_the_current_snapshot_or_an_error_that_names_the_step(tmp_path):
    store = EmbeddingStore(str(tmp_path / "store"))
    with pytest.raises(SnapshotNotCurrentError, match="no model snapshot of 'org/model'.*materialize model_snapshot first"):
        require_current_snapshot(store, "org/model")
    store.record_model_snapshot(pinned())
    assert require_current_snapshot(store, "org/model").revision == "a" * 40
    with pytest.raises(SnapshotNotCurrentError, match=r"resolved from revision None, but 'v2' is configured"):
        require_current_snapshot(store, "org/model", "v2")
    assert require_current_snapshot(store, "org/model", "v2", match_revision=False).model == "org/model"


def test_params_take_the_configured_or_default_prompt():
    assert EncoderConfig("org/model", prompt_name="query").params(pinned()).prompt == "query: "
    defaulted = EncoderConfig("org/model", precision="binary").params(pinned(default_prompt_name="query"))
    assert (defaulted.prompt_name, defaulted.precision) == ("query", "binary")
    with pytest.raises(ValueError, match="prompt_name 'doc' is not among the prompts"):
        EncoderConfig("org/model", prompt_name="doc").params(pinned())


def test_loaded_models_are_shared_and_only_the_latest_few_are_kept(fake_loads):
    config = EncoderConfig("org/model")
    first = config.load(pinned("m1"))
    assert config.load(pinned("m1")) is first and fake_loads == ["m1"]
    for name in ("m2", "m3", "m4"):
        config.load(pinned(name))
    assert len(snapshot_module._loaded) == snapshot_module.MAX_LOADED_MODELS
    assert config.load(pinned("m1")) is not first and fake_loads == ["m1", "m2", "m3", "m4", "m1"]


def test_a_session_loads_and_starts_the_pool_only_when_it_encodes_and_stops_it(fake_loads):
    config = EncoderConfig("org/model", target_devices=("cpu", "cpu"), batch_size=4)
    snapshot = pinned()
    params = dataclasses.replace(config.params(snapshot), max_seq_length=32, normalize_embeddings=True)
    heard = []
    with config.session(snapshot, params, log=heard.append) as session:
        assert fake_loads == []
        session.encode(["a", "b"])
        session.encode(["c"])
        model, pool = session.model, session.pool
    assert fake_loads == ["org/model"] and len(model.pools) == 1 and pool.devices == ["cpu", "cpu"]
    assert pool.closed and session.pool is None and model.max_seq_length == 32
    texts, options = model.calls[0]
    assert texts == ["a", "b"] and options["pool"] is pool and options["batch_size"] == 4
    assert options["normalize_embeddings"] is True and options["prompt"] is None
    assert heard == [f"encoding 2 texts with org/model@{'a' * 19}", f"encoding 1 texts with org/model@{'a' * 19}"]


def test_resolving_the_bundled_model_pins_its_content_hash_and_shape():
    config = EncoderConfig(DEFAULT_MODEL_NAME)
    snapshot = config.resolve()
    assert snapshot.revision.startswith("sha256:") and snapshot.source == "bundled"
    assert (snapshot.dim, snapshot.max_seq_length, snapshot.pooling) == (384, 256, ("mean",))
    assert snapshot.files_hash and config.load(snapshot) is config.load(snapshot)
