"""What a loaded `SentenceTransformer` says about itself (revision, dimension, backend, dtype,
the Hugging Face model and config), its similarity functions, its multi-process pool and
how it saves: the parts of sentence-transformers' surface around ``encode``.

`SentenceTransformer` inherits them (`ModelSurface`); ``embedding_core.model`` keeps
loading, prompts and the ``encode`` pipeline.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from typing import Any

import numpy as np
import torch
from torch import nn

from embedding_core._version import __version__
from embedding_core.folder import save_folder
from embedding_core.hub import ResolvedModel
from embedding_core.model_card import ModelCardData, write_model_card
from embedding_core.modules import Pooling, Transformer
from embedding_core.pool import EncodePool
from embedding_core.util import SIMILARITY_ALIASES, SIMILARITY_FUNCTIONS, SimilarityFunction

__all__ = ["ModelSurface"]


class ModelSurface:
    """The accessors, similarity, pool and save methods of `SentenceTransformer`."""

    # Set by SentenceTransformer.__init__.
    resolved: ResolvedModel | None
    truncate_dim: int | None
    prompts: dict[str, str]
    default_prompt_name: str | None
    model_card_data: ModelCardData
    _similarity_fn_name: str | None

    # ------------------------------------------------------------------ identity
    @property
    def revision(self) -> str | None:
        """The immutable revision loaded: a hub commit sha, or ``sha256:<hex>`` of a folder's files."""
        return self.resolved.revision if self.resolved else None

    @property
    def model_source(self) -> str:
        """``"hub"``, ``"local"``, ``"bundled"``, or ``"modules"`` when built from module objects."""
        return self.resolved.source if self.resolved else "modules"

    @property
    def model_name(self) -> str | None:
        return self.resolved.name if self.resolved else None

    @property
    def snapshot_path(self) -> str | None:
        return self.resolved.path if self.resolved else None

    @property
    def similarity_fn_name(self) -> str:
        """``cosine`` (default), ``dot``, ``euclidean`` or ``manhattan``: what ``similarity`` computes."""
        return self._similarity_fn_name or "cosine"

    @similarity_fn_name.setter
    def similarity_fn_name(self, value: str | SimilarityFunction) -> None:
        # Any enum with these values: ours, or sentence-transformers' own SimilarityFunction.
        value = value.value if isinstance(value, Enum) else value
        name = SIMILARITY_ALIASES.get(value, value)
        if name not in SIMILARITY_FUNCTIONS:
            raise ValueError(f"Unknown similarity_fn_name {value!r}; expected one of {list(SIMILARITY_FUNCTIONS)}.")
        self._similarity_fn_name = name

    def get_embedding_dimension(self) -> int | None:
        """Width of ``encode``'s vectors, after ``truncate_dim`` if one is set."""
        dimension = self.pooled_dimension()
        if dimension is not None and self.truncate_dim is not None:
            return min(dimension, self.truncate_dim)
        return dimension

    def get_sentence_embedding_dimension(self) -> int | None:
        """Same as ``get_embedding_dimension`` (the name sentence-transformers 2-5 used)."""
        return self.get_embedding_dimension()

    def get_max_seq_length(self) -> int | None:
        return self.max_seq_length

    def get_backend(self) -> str:
        """The runtime in effect: ``"torch"``, ``"onnx"`` or ``"openvino"``."""
        return self.backend

    def get_model_kwargs(self) -> list[str]:
        """Extra keyword arguments ``encode`` passes to the modules: none for the modules
        embedding_core implements (sentence-transformers' ``task`` routing needs a Router)."""
        return []

    @property
    def modalities(self) -> list[str]:
        """What the model embeds: text."""
        return list(getattr(self[0], "modalities", ["text"]))

    def supports(self, modality: str | tuple[str, ...]) -> bool:
        """Whether the model embeds ``modality`` (``"text"``)."""
        return modality in self.modalities

    @property
    def dtype(self) -> torch.dtype | None:
        """The dtype of the model's parameters (``None`` for a model without any)."""
        return next((parameter.dtype for parameter in self.parameters()), None)

    @property
    def transformers_model(self) -> nn.Module | None:
        """The Hugging Face model inside the Transformer module, or ``None`` without one."""
        for module in self:
            if isinstance(module, Transformer):
                return module.auto_model
        return None

    @property
    def config(self) -> Any:
        """The Hugging Face config of ``transformers_model`` (``None`` without one)."""
        return getattr(self.transformers_model, "config", None)

    @config.setter
    def config(self, value: Any) -> None:
        if self.transformers_model is not None:
            self.transformers_model.config = value

    def set_pooling_include_prompt(self, include_prompt: bool) -> None:
        """Whether mean (and other) pooling counts the prompt's tokens; some instruction models
        leave them out."""
        for module in self:
            if isinstance(module, Pooling):
                module.include_prompt = include_prompt
                return

    def is_singular_input(self, inputs: Any) -> bool:
        """Whether ``inputs`` is one input (a string, a text pair given as a tuple is a batch)
        rather than a batch: lists, tuples and numpy string/object arrays are batches."""
        if isinstance(inputs, list | tuple):
            return False
        if isinstance(inputs, np.ndarray) and inputs.ndim >= 1 and inputs.dtype.kind in ("U", "O"):
            return False
        return True

    def preprocess(self, inputs: Sequence[str | tuple[str, str] | list[str]], prompt: str | None = None,
                   processing_kwargs: dict[str, dict[str, Any]] | None = None, **kwargs: Any) -> dict[str, Any]:
        """The features the model takes for a batch of texts or text pairs, as the tokenizer
        gives them (``input_ids``, ``attention_mask``, ``token_type_ids`` where the tokenizer has
        them), with ``modality`` and, when ``prompt`` is prepended, its ``prompt_length``.
        ``processing_kwargs`` overrides the tokenizer's arguments for this call (``"common"`` and
        ``"text"`` entries). An empty batch gives ``{}``."""
        if not len(inputs):
            return {}
        if isinstance(inputs, str):
            raise TypeError("preprocess takes a batch of inputs: wrap the single text in a list")
        pairs = [isinstance(item, tuple | list) for item in inputs]
        if any(pairs) and not all(pairs):
            raise ValueError("preprocess takes texts or text pairs, not both in one batch")
        first = [item[0] if is_pair else item for item, is_pair in zip(inputs, pairs)]
        second = [item[1] for item in inputs] if all(pairs) else None
        if prompt:
            first = [prompt + text for text in first]
        arguments: dict[str, Any] = {"padding": True, "truncation": "longest_first",
                                     "max_length": self.max_seq_length, "return_tensors": "pt"}
        for section in ("common", "text"):
            arguments.update((processing_kwargs or {}).get(section) or {})
        features = dict(self.tokenizer(first, second, **arguments))
        features["modality"] = "text"
        if prompt:
            features["prompt_length"] = self.transformer.prompt_length(prompt)
        return features

    # ------------------------------------------------------------------ queries and documents
    def encode_query(self, inputs: str | Sequence[str] | None = None, prompt_name: str | None = None,
                     prompt: str | None = None, **kwargs: Any) -> Any:
        """``encode`` with the model's ``query`` prompt unless ``prompt`` or ``prompt_name`` is given
        (an empty ``query`` prompt, the default, keeps ``default_prompt_name`` from applying)."""
        if prompt is None and prompt_name is None and "query" in self.prompts:
            prompt_name = "query"
        kwargs.pop("task", None)
        return self.encode(inputs, prompt_name=prompt_name, prompt=prompt, **kwargs)

    def encode_document(self, inputs: str | Sequence[str] | None = None, prompt_name: str | None = None,
                        prompt: str | None = None, **kwargs: Any) -> Any:
        """``encode`` with the model's ``document`` (else ``passage``, else ``corpus``) prompt
        unless ``prompt`` or ``prompt_name`` is given."""
        if prompt is None and prompt_name is None:
            prompt_name = next((name for name in ("document", "passage", "corpus") if name in self.prompts), None)
        kwargs.pop("task", None)
        return self.encode(inputs, prompt_name=prompt_name, prompt=prompt, **kwargs)

    # ------------------------------------------------------------------ similarity
    def similarity(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """Score matrix of every row of ``embeddings1`` against every row of ``embeddings2``."""
        return SIMILARITY_FUNCTIONS[self.similarity_fn_name][0](embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """Score of ``embeddings1[i]`` against ``embeddings2[i]`` for each ``i``."""
        return SIMILARITY_FUNCTIONS[self.similarity_fn_name][1](embeddings1, embeddings2)

    @contextmanager
    def truncate_sentence_embeddings(self, truncate_dim: int | None) -> Iterator[None]:
        """Within the block, ``encode`` truncates embeddings to ``truncate_dim``."""
        previous, self.truncate_dim = self.truncate_dim, truncate_dim
        try:
            yield
        finally:
            self.truncate_dim = previous

    # ------------------------------------------------------------------ pool
    def start_multi_process_pool(self, target_devices: list[str] | None = None,
                                 stall_timeout_s: float | None = None) -> EncodePool:
        """Start worker processes (one per GPU, or CPU workers splitting the cores) for ``encode``;
        a worker that holds work with no progress for ``stall_timeout_s`` fails the call (see
        ``EncodePool``)."""
        return EncodePool.start(self, target_devices, stall_timeout_s)

    @staticmethod
    def stop_multi_process_pool(pool: EncodePool) -> None:
        """Stop the pool's workers and wait for them to exit."""
        pool.close()

    def encode_multi_process(self, sentences: Sequence[str], pool: EncodePool, **kwargs: Any) -> Any:
        """``encode`` spread over the pool's workers."""
        return self.encode(sentences, pool=pool, **kwargs)

    # ------------------------------------------------------------------ save
    def save(
        self,
        path: str | os.PathLike | None,
        model_name: str | None = None,
        create_model_card: bool = True,
        safe_serialization: bool = True,
        **_: Any,
    ) -> None:
        """Write the sentence-transformers folder format: sentence-transformers reloads it too.

        ``model_name`` is the hub id the model card's usage snippet loads it by (else
        ``model_card_data.model_id``, else a placeholder). ``path=None`` writes nothing."""
        if path is None:
            return
        path = str(path)
        config: dict[str, Any] = {
            "__version__": {"embedding_core": __version__, "pytorch": torch.__version__},
            "prompts": self.prompts,
            "default_prompt_name": self.default_prompt_name,
            "similarity_fn_name": self.similarity_fn_name,
        }
        if self.truncate_dim is not None:
            config["truncate_dim"] = self.truncate_dim
        save_folder(path, list(self), config, safe_serialization=safe_serialization)
        if create_model_card:
            if model_name is not None:
                self.model_card_data.model_id = model_name
            write_model_card(path, self.model_card_data, {
                "embedding dimension": self.get_embedding_dimension(),
                "max_seq_length": self.max_seq_length,
                "pooling": ", ".join(self.pooling_modes),
                "similarity": self.similarity_fn_name,
            })

    def save_pretrained(self, path: str | os.PathLike, **kwargs: Any) -> None:
        """Same as ``save``."""
        self.save(path, **kwargs)
