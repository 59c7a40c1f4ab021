"""The Pooling module: token embeddings -> one sentence embedding per text."""

from __future__ import annotations

from typing import Any

import torch

from embedding_core.modules.base import Module, register

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")

# Older configs name each mode with a boolean flag; the order is the concatenation order.
_LEGACY_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def _modes_from_config(config: dict[str, Any]) -> list[str]:
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        return [mode] if isinstance(mode, str) else list(mode)
    legacy = [mode for flag, mode in _LEGACY_FLAGS.items() if config.get(flag)]
    return legacy or ["mean"]


@register
class Pooling(Module):
    """Pools token embeddings with one or more modes; several modes are concatenated in order.

    With ``include_prompt=False`` the prompt's tokens are masked out of the pooling, so the
    prompt steers the encoder without being averaged into the result.
    """

    def __init__(
        self,
        word_embedding_dimension: int,
        pooling_mode: str | list[str] | tuple[str, ...] = "mean",
        include_prompt: bool = True,
    ) -> None:
        super().__init__()
        modes = [pooling_mode] if isinstance(pooling_mode, str) else list(pooling_mode)
        unknown = [mode for mode in modes if mode not in POOLING_MODES]
        if unknown or not modes:
            raise ValueError(f"Unknown pooling mode(s) {unknown}; valid modes are {list(POOLING_MODES)}.")
        self.word_embedding_dimension = word_embedding_dimension
        self.pooling_modes = modes
        self.include_prompt = include_prompt

    def get_sentence_embedding_dimension(self) -> int:
        return self.word_embedding_dimension * len(self.pooling_modes)

    def output_dimension(self, input_dimension: int | None) -> int:
        return self.get_sentence_embedding_dimension()

    def forward(self, features: dict[str, Any]) -> dict[str, Any]:
        tokens = features["token_embeddings"]
        mask = features["attention_mask"]
        prompt_length = features.get("prompt_length")
        if not self.include_prompt and prompt_length:
            mask = mask.clone()
            mask[:, :prompt_length] = 0
        pooled = [self._pool(mode, tokens, mask, features) for mode in self.pooling_modes]
        features["sentence_embedding"] = pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=-1)
        return features

    @staticmethod
    def _pool(mode: str, tokens: torch.Tensor, mask: torch.Tensor, features: dict[str, Any]) -> torch.Tensor:
        # Right padding is assumed: the batches built by embedding_core always pad on the right.
        weights = mask.unsqueeze(-1).to(tokens.dtype)
        if mode == "cls":
            first = mask.to(torch.int32).argmax(dim=1)
            return tokens[torch.arange(tokens.shape[0], device=tokens.device), first]
        if mode == "max":
            return tokens.masked_fill(weights == 0, float("-inf")).amax(dim=1)
        if mode in ("mean", "mean_sqrt_len_tokens"):
            summed = (tokens * weights).sum(dim=1)
            counts = weights.sum(dim=1).clamp(min=1e-9)
            return summed / (counts if mode == "mean" else counts.sqrt())
        if mode == "weightedmean":
            # Position weights 1..T counted from the first real token of the original mask.
            positions = torch.arange(1, tokens.shape[1] + 1, device=tokens.device, dtype=tokens.dtype)
            position_weights = weights * positions.view(1, -1, 1)
            summed = (tokens * position_weights).sum(dim=1)
            return summed / position_weights.sum(dim=1).clamp(min=1e-9)
        if mode == "lasttoken":
            full_mask = features["attention_mask"]
            last = full_mask.sum(dim=1).to(torch.long) - 1
            rows = torch.arange(tokens.shape[0], device=tokens.device)
            picked = tokens[rows, last.clamp(min=0)]
            # A row whose pooling mask is empty (prompt-only text) pools to zeros.
            return picked * (mask.sum(dim=1) > 0).unsqueeze(-1).to(tokens.dtype)
        raise ValueError(f"Unknown pooling mode {mode!r}")

    def get_config_dict(self) -> dict[str, Any]:
        config: dict[str, Any] = {"word_embedding_dimension": self.word_embedding_dimension}
        canonical_order = [mode for mode in POOLING_MODES if mode in self.pooling_modes]
        if canonical_order == self.pooling_modes:
            # Boolean flags are read by every sentence-transformers version.
            config.update({flag: name in self.pooling_modes for flag, name in _LEGACY_FLAGS.items()})
        else:
            # Flags cannot express a custom concatenation order.
            config["pooling_mode"] = self.pooling_modes
        config["include_prompt"] = self.include_prompt
        return config

    @classmethod
    def load(cls, input_path: str, dimension: int | None = None, **context: Any) -> Pooling:
        """``dimension`` (the Transformer's width) is used when the config names none."""
        config = cls.load_config(input_path)
        width = config.get("embedding_dimension", config.get("word_embedding_dimension"))
        if width is None:
            width = dimension
        if width is None:
            raise ValueError(
                f"{input_path}/{cls.config_file} names no embedding dimension and none could be inferred."
            )
        return cls(
            int(width),
            pooling_mode=_modes_from_config(config),
            include_prompt=bool(config.get("include_prompt", True)),
        )
