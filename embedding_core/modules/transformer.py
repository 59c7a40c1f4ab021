"""The Transformer module: tokenizer + Hugging Face encoder producing token embeddings."""

from __future__ import annotations

import inspect
import json
import logging
import os
import threading
from typing import Any

import torch
from torch import nn

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
        from transformers import AutoConfig, AutoTokenizer

        if not trust_remote_code and _needs_remote_code(model_path):
            raise RemoteCodeRequiredError(
                f"The model at {model_path} needs custom code from its repository (config.json has "
                "'auto_map'). Pass trust_remote_code=True only if you trust that code."
            )
        self.auto_config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.model_path = model_path
        self.trust_remote_code = trust_remote_code
        self.model_kwargs = dict(model_kwargs or {})
        # Conversions (``.to()``, ``.half()``, ...) applied before the PyTorch model is loaded,
        # replayed on it when it loads.
        self._deferred: list[Any] = []
        self._load_lock = threading.Lock()
        self.training = False  # inference: the model loads in eval mode (``train()`` changes it)
        if not backend.startswith("openvino"):
            self._load_auto_model()
        # else: an OpenVINO graph cached for this revision serves without PyTorch; the model
        # loads on first use of ``auto_model`` (a build, a GPU, saving, a PyTorch forward).
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.do_lower_case = do_lower_case
        self._model_limit = self._position_limit()
        if max_seq_length is None:
            tokenizer_limit = getattr(self.tokenizer, "model_max_length", None)
            if tokenizer_limit is not None and tokenizer_limit < 1_000_000:
                max_seq_length = int(tokenizer_limit)
        self._max_seq_length = self._capped(max_seq_length)
        self.runtime: Runtime | None = None
        self.backend = "torch"
        self.set_backend(backend, revision)

    @property
    def auto_model(self) -> nn.Module:
        """The Hugging Face model in PyTorch, loaded on first use when an OpenVINO graph
        serves without it."""
        model = self._modules.get("auto_model")
        if model is None:
            model = self._load_auto_model()
        return model

    @property
    def torch_loaded(self) -> bool:
        """Whether the PyTorch model is loaded (``auto_model`` loads it)."""
        return "auto_model" in self._modules

    def _load_auto_model(self) -> nn.Module:
        with self._load_lock:
            model = self._modules.get("auto_model")
            if model is not None:
                return model
            from transformers import AutoModel

            with quiet_transformers():  # no weight-loading progress bar on every load
                model = AutoModel.from_pretrained(
                    self.model_path, config=self.auto_config, trust_remote_code=self.trust_remote_code,
                    **self.model_kwargs,
                )
            for convert in self._deferred:
                model._apply(convert)
            self._deferred.clear()
            model.train(self.training)
            # Registered directly: ``add_module``'s hasattr check would call this property.
            self._modules["auto_model"] = model
            return model

    def __getstate__(self) -> dict[str, Any]:  # copy.deepcopy, pickle: a lock does not copy
        state = super().__getstate__()
        state.pop("_load_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._load_lock = threading.Lock()

    def _apply(self, fn: Any, recurse: bool = True) -> Transformer:
        if recurse and not self.torch_loaded:
            self._deferred.append(fn)
        return super()._apply(fn, recurse)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """With the PyTorch model's weights (loading it)."""
        self.auto_model  # noqa: B018 - loads it
        return super().state_dict(*args, **kwargs)

    @property
    def device(self) -> torch.device:
        """Where the PyTorch model is (CPU until it loads: only CPU models defer it)."""
        if not self.torch_loaded:
            return torch.device("cpu")
        return next(self.auto_model.parameters()).device

    def set_backend(self, backend: str, revision: str | None = None) -> str:
        """Run CPU inputs through ``backend``'s runtime; returns the backend in effect
        (``"torch"`` when the runtime cannot be used here, with a warning saying why)."""
        self.runtime, self.backend = load_runtime(self, backend, revision)
        return self.backend

    def _position_limit(self) -> int | None:
        config = self.auto_config
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
        """Kept as given, as sentence-transformers does (the tokenizer's ``model_max_length``
        follows); a value past the model's position embeddings is warned about, since texts
        that long fail in the model."""
        if value is not None and value <= 0:
            raise ValueError(f"max_seq_length must be a positive integer, got {value}.")
        if value is not None and self._model_limit is not None and value > self._model_limit:
            logger.warning("max_seq_length %d is above the %d positions the model supports: longer texts will "
                           "fail.", value, self._model_limit)
        self._max_seq_length = self._model_limit if value is None else int(value)
        if self._max_seq_length is not None:
            self.tokenizer.model_max_length = self._max_seq_length

    def get_word_embedding_dimension(self) -> int:
        return int(self.auto_config.hidden_size)

    def output_dimension(self, input_dimension: int | None) -> int:
        return self.get_word_embedding_dimension()

    def tokenize_to_ids(self, texts: list[str], truncate: bool = True) -> list[list[int]]:
        """Token ids of each text (special tokens added, truncated to ``max_seq_length``), unpadded.

        With ``truncate=False`` each text keeps all its tokens: what the model would have
        been given without the cut (``embedding_core.truncation`` counts what is dropped).
        """
        if self.do_lower_case:
            texts = [text.lower() for text in texts]
        cut = truncate and self._max_seq_length is not None
        encoded = self.tokenizer(
            texts,
            add_special_tokens=True,
            truncation=cut,
            max_length=self._max_seq_length if cut else None,
            return_attention_mask=False,
            return_token_type_ids=False,
            # Uncut on purpose: no "longer than the specified maximum sequence length" warning.
            verbose=truncate,
        )
        return encoded["input_ids"]

    def tokenize_pairs_to_ids(self, pairs: list[tuple[str, str]]) -> tuple[list[list[int]], list[int]]:
        """Token ids of each text pair as one input (``[CLS] a [SEP] b [SEP]`` for BERT), cut
        to ``max_seq_length`` longest text first, and where each pair's second segment starts;
        for a model without token types every start is past the end (all type 0)."""
        firsts, seconds = [first for first, _ in pairs], [second for _, second in pairs]
        if self.do_lower_case:
            firsts, seconds = [t.lower() for t in firsts], [t.lower() for t in seconds]
        cut = self._max_seq_length is not None
        encoded = self.tokenizer(
            firsts, seconds, add_special_tokens=True, truncation="longest_first" if cut else False,
            max_length=self._max_seq_length if cut else None, return_attention_mask=False,
            return_token_type_ids=True,
        )
        ids = encoded["input_ids"]
        if "token_type_ids" not in self.tokenizer.model_input_names:
            return ids, [len(row) for row in ids]
        return ids, [len(types) - sum(types) for types in encoded["token_type_ids"]]

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

    def save(self, output_path: str, safe_serialization: bool = True) -> None:
        """Model, tokenizer and config. transformers 5 always writes safetensors; older releases
        take ``safe_serialization``."""
        if "safe_serialization" in inspect.signature(self.auto_model.save_pretrained).parameters:
            self.auto_model.save_pretrained(output_path, safe_serialization=safe_serialization)
        else:
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
