"""The Transformer module: tokenizer + Hugging Face encoder producing token embeddings."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch

from embedding_core.backends import Runtime, load_runtime
from embedding_core.backends.common import quiet_transformers
from embedding_core.modules.base import Module, register

logger = logging.getLogger(__name__)

SENTENCE_BERT_CONFIG = "sentence_bert_config.json"


class RemoteCodeRequiredError(ValueError):
    """The model's configuration needs custom code and ``trust_remote_code`` is off."""


def _needs_remote_code(model_path: str) -> bool:
    config_path = os.path.join(model_path, "config.json")
    if not os.path.exists(config_path):
        return False
    with open(config_path, encoding="utf-8") as fh:
        config = json.load(fh)
    return bool(config.get("auto_map"))


@register
class Transformer(Module):
    """Tokenizes text and runs a Hugging Face ``AutoModel`` to get ``token_embeddings``.

    ``max_seq_length`` comes from ``sentence_bert_config.json`` when present, else from the
    tokenizer, and is never above what the model's position embeddings support.
    ``backend`` other than ``"torch"`` hands CPU inputs to another :class:`Runtime`
    (see ``embedding_core.backends``); ``revision`` labels its cached build.
    """

    config_keys = ("max_seq_length", "do_lower_case")
    config_file = SENTENCE_BERT_CONFIG

    def __init__(
        self,
        model_path: str,
        max_seq_length: int | None = None,
        do_lower_case: bool = False,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        backend: str = "torch",
        revision: str | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        if not trust_remote_code and _needs_remote_code(model_path):
            raise RemoteCodeRequiredError(
                f"The model at {model_path} needs custom code from its repository (config.json has "
                "'auto_map'). Pass trust_remote_code=True only if you trust that code."
            )
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        with quiet_transformers():  # no weight-loading progress bar on every load
            self.auto_model = AutoModel.from_pretrained(
                model_path, config=config, trust_remote_code=trust_remote_code, **(model_kwargs or {})
            )
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.do_lower_case = do_lower_case
        self._model_limit = self._position_limit()
        if max_seq_length is None:
            tokenizer_limit = getattr(self.tokenizer, "model_max_length", None)
            if tokenizer_limit is not None and tokenizer_limit < 1_000_000:
                max_seq_length = int(tokenizer_limit)
        self._max_seq_length = self._capped(max_seq_length)
        self.auto_model.eval()
        self.runtime: Runtime | None = None
        self.backend = "torch"
        self.set_backend(backend, revision)

    def set_backend(self, backend: str, revision: str | None = None) -> str:
        """Run CPU inputs through ``backend``'s runtime; returns the backend in effect
        (``"torch"`` when the runtime cannot be used here, with a warning saying why)."""
        self.runtime, self.backend = load_runtime(self, backend, revision)
        return self.backend

    def _position_limit(self) -> int | None:
        config = self.auto_model.config
        limit = getattr(config, "max_position_embeddings", None)
        if limit is None:
            return None
        # RoBERTa-style models reserve padding_idx + 1 positions.
        if getattr(config, "model_type", "") in {"roberta", "xlm-roberta", "camembert", "mpnet"}:
            limit -= (getattr(config, "pad_token_id", 1) or 1) + 1
        return int(limit)

    def _capped(self, value: int | None) -> int | None:
        if value is None:
            return self._model_limit
        if self._model_limit is not None and value > self._model_limit:
            logger.warning(
                "max_seq_length %d is above what the model supports; using %d.", value, self._model_limit
            )
            return self._model_limit
        return int(value)

    @property
    def max_seq_length(self) -> int | None:
        return self._max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int | None) -> None:
        if value is not None and value <= 0:
            raise ValueError(f"max_seq_length must be a positive integer, got {value}.")
        self._max_seq_length = self._capped(value)

    def get_word_embedding_dimension(self) -> int:
        return int(self.auto_model.config.hidden_size)

    def output_dimension(self, input_dimension: int | None) -> int:
        return self.get_word_embedding_dimension()

    def tokenize_to_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text (special tokens added, truncated to ``max_seq_length``), unpadded."""
        if self.do_lower_case:
            texts = [text.lower() for text in texts]
        encoded = self.tokenizer(
            texts,
            add_special_tokens=True,
            truncation=self._max_seq_length is not None,
            max_length=self._max_seq_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return encoded["input_ids"]

    def prompt_length(self, prompt: str) -> int:
        """Tokens the prompt takes at the start of a text, leading special tokens included."""
        ids = self.tokenize_to_ids([prompt])[0]
        if ids and ids[-1] in set(self.tokenizer.all_special_ids):
            return len(ids) - 1
        return len(ids)

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return 0 if pad is None else int(pad)

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # An ONNX Runtime / OpenVINO encoder (SentenceTransformer(backend=...)) runs CPU
        # inputs; anything else (another device, token_type_ids) goes through PyTorch.
        if (
            self.runtime is not None
            and features["input_ids"].device.type == "cpu"
            and "token_type_ids" not in features
        ):
            features["token_embeddings"] = self.runtime(features["input_ids"], features["attention_mask"])
            return features
        model_inputs = {"input_ids": features["input_ids"], "attention_mask": features["attention_mask"]}
        if "token_type_ids" in features:
            model_inputs["token_type_ids"] = features["token_type_ids"]
        output = self.auto_model(**model_inputs, return_dict=True)
        features["token_embeddings"] = output.last_hidden_state
        return features

    def save(self, output_path: str) -> None:
        self.auto_model.save_pretrained(output_path)
        self.tokenizer.save_pretrained(output_path)
        self.save_config(output_path)

    @classmethod
    def load(
        cls,
        input_path: str,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        backend: str = "torch",
        revision: str | None = None,
        **context: Any,
    ) -> Transformer:
        config = cls.load_config(input_path)
        return cls(
            input_path,
            max_seq_length=config.get("max_seq_length"),
            do_lower_case=bool(config.get("do_lower_case", False)),
            trust_remote_code=trust_remote_code,
            model_kwargs=model_kwargs or None,
            backend=backend,
            revision=revision,
        )
