"""The Normalize module: scales each sentence embedding to unit L2 norm."""

from __future__ import annotations

from typing import Any

import torch

from embedding_core.modules.base import Module, register


@register
class Normalize(Module):
    """L2-normalizes ``sentence_embedding``; it has no configuration and no weights."""

    def forward(self, features: dict[str, Any]) -> dict[str, Any]:
        features["sentence_embedding"] = torch.nn.functional.normalize(
            features["sentence_embedding"], p=2, dim=1
        )
        return features

    def save(self, output_path: str, safe_serialization: bool = True) -> None:
        """Nothing to write: the folder may be absent, and loading then uses the defaults."""

    @classmethod
    def load(cls, input_path: str, **context: Any) -> Normalize:
        return cls()
