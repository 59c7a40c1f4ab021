"""Stand-ins for a model: deterministic encoders and a pinned snapshot record."""

from __future__ import annotations

import hashlib

import numpy as np

from embedding_core.store import ModelSnapshot

DIM = 8
SNAPSHOT = ModelSnapshot(model_key="test/model", model="test/model", revision="a" * 40,
                         source="hub", path="/nonexistent", dim=DIM)


def bumped(snapshot: ModelSnapshot = SNAPSHOT, **changes) -> ModelSnapshot:
    """The snapshot with some fields changed (by default: the next revision)."""
    return ModelSnapshot(**{**snapshot.__dict__, "revision": "b" * 40, **changes})


class TextHashEncoder:
    """vector(text) = `dim` floats drawn from the text's SHA-256; records every call, so
    reuse and idempotence can be asserted exactly."""

    def __init__(self, dim: int = DIM, salt: str = "") -> None:
        self.dim, self.salt, self.calls = dim, salt, []

    def vector(self, text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256((self.salt + text).encode()).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([self.vector(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)
