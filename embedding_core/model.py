"""SentenceTransformer: load a sentence-transformers model folder and encode (its accessors,
similarity, pool and save methods are in ``embedding_core.model_surface``).

``encode`` is a short pipeline of named steps:

    resolve prompt -> prepare (tokenize once) -> forward_tokens (order by token length ->
    batch -> forward + pool -> post-process -> restore order) -> quantize -> convert

``forward_tokens`` is also what a pool worker runs on its chunk of tokens, and
:class:`ModelRecipe` is how a worker rebuilds the model, so the pool never imports this module.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from embedding_core.backends import check_backend, runs_on
from embedding_core.batching import (
    OUTPUT_VALUES,
    EncodeOptions,
    OutputValue,
    TextPair,
    call_max_length,
    encode_inputs,
    take_inputs,
)
from embedding_core.chain import ModuleChain, default_device
from embedding_core.folder import load_folder
from embedding_core.hub import ResolvedModel, resolve_model
from embedding_core.model_card import ModelCardData
from embedding_core.model_surface import ModelSurface
from embedding_core.pool import encode_with_pool
from embedding_core.quantization import (
    check_precision,
    quantize_embeddings,
    quantize_token_embeddings,
)
from embedding_core.util import (
    truncate_embeddings,
)

# Prompt names every model has, empty unless set: ``encode_query``/``encode_document`` then
# apply "" rather than fall back to ``default_prompt_name``.
DEFAULT_PROMPT_NAMES = ("query", "document")

logger = logging.getLogger(__name__)


class SentenceTransformer(ModelSurface, ModuleChain):
    """A sentence embedding model: an ordered chain of Transformer, Pooling, Dense, Normalize.

    Loads a sentence-transformers model folder, a plain transformers folder (mean pooling)
    or a Hugging Face hub name. With no name, the bundled all-MiniLM-L6-v2 is used.

    Example::

        >>> from embedding_core import SentenceTransformer
        >>> model = SentenceTransformer("all-MiniLM-L6-v2")
        >>> embeddings = model.encode(["The weather is lovely today.", "It's so sunny outside!"])
        >>> embeddings.shape
        (2, 384)
        >>> model.similarity(embeddings, embeddings).shape
        torch.Size([2, 2])
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike | None = None,
        modules: Iterable[nn.Module] | None = None,
        device: str | None = None,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        similarity_fn_name: str | None = None,
        cache_folder: str | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        local_files_only: bool = False,
        token: bool | str | None = None,
        truncate_dim: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
        backend: str = "torch",
        use_auth_token: bool | str | None = None,
        model_card_data: ModelCardData | None = None,
    ) -> None:
        if use_auth_token is not None:
            warnings.warn("The `use_auth_token` argument is deprecated; use `token` instead.", FutureWarning,
                          stacklevel=2)
            if token is not None:
                raise ValueError("Both `token` and `use_auth_token` were given; pass only `token`.")
            token = use_auth_token
        if model_name_or_path is not None and os.path.isfile(model_name_or_path):
            raise NotADirectoryError(
                f"Path {model_name_or_path} is a file, not a directory: pass a model folder or a hub name."
            )
        if model_name_or_path is not None and modules is not None:
            logger.warning("Both `model_name_or_path` and `modules` were given: the modules are loaded from "
                           "`model_name_or_path`, and `modules` is ignored.")
            modules = None
        check_backend(backend)
        device = device or default_device()
        # The ONNX and OpenVINO runtimes serve CPU models only: elsewhere PyTorch stays.
        if not runs_on(backend, device):
            backend = "torch"
        self.prompts: dict[str, str] = {}
        self.default_prompt_name: str | None = None
        self.model_card_data = model_card_data or ModelCardData()
        self._similarity_fn_name: str | None = None
        self.truncate_dim = truncate_dim
        self.resolved: ResolvedModel | None = None
        file_config: dict[str, Any] = {}

        if modules is not None:
            loaded = list(modules.values() if isinstance(modules, dict) else modules)
            if not loaded:
                raise ValueError(
                    "An empty modules list was passed to SentenceTransformer: give at least one module, "
                    "e.g. a Transformer."
                )
        else:
            self.resolved = resolve_model(
                model_name_or_path,
                revision=revision,
                cache_folder=cache_folder,
                token=token,
                local_files_only=local_files_only,
            )
            loaded, file_config = load_folder(
                self.resolved.path, trust_remote_code=trust_remote_code, model_kwargs=model_kwargs or {},
                backend=backend, revision=self.resolved.revision,
            )
        super().__init__(OrderedDict((str(i), module) for i, module in enumerate(loaded)))

        # The caller's prompts win over the saved ones, which fill the names the caller left unset.
        merged: dict[str, str | None] = dict.fromkeys(DEFAULT_PROMPT_NAMES)
        merged.update(prompts or {})
        for name, text in file_config.get("prompts", {}).items():
            if merged.get(name) is None:
                merged[name] = text
        self.prompts = {name: "" if text is None else text for name, text in merged.items()}
        self.default_prompt_name = default_prompt_name or file_config.get("default_prompt_name")
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ValueError(
                f"default_prompt_name {self.default_prompt_name!r} is not among the prompts "
                f"{sorted(self.prompts)}."
            )
        if similarity_fn_name or file_config.get("similarity_fn_name"):
            self.similarity_fn_name = similarity_fn_name or file_config["similarity_fn_name"]
        if self.truncate_dim is None and file_config.get("truncate_dim") is not None:
            self.truncate_dim = int(file_config["truncate_dim"])
        self.to(device)
        self.eval()
        if self.model_card_data.model_id is None and self.resolved is not None and self.resolved.source == "hub":
            self.model_card_data.model_id = self.resolved.name
        if modules is not None and backend != "torch":
            self.transformer.set_backend(backend, self.revision)

    # ------------------------------------------------------------------ pool workers
    def recipe(self, path: str) -> ModelRecipe:
        """How a pool worker rebuilds this model from ``path`` (its folder, or a saved copy)."""
        # A model whose config needs remote code was loaded with trust_remote_code=True already.
        trust_remote_code = bool(getattr(self.transformer.auto_config, "auto_map", None))
        dtypes = {p.dtype for p in self.parameters() if p.is_floating_point()}
        dtype = str(dtypes.pop()).removeprefix("torch.") if len(dtypes) == 1 else None
        return ModelRecipe(path, trust_remote_code, dtype, self.backend)

    # ------------------------------------------------------------------ prompts
    def resolve_prompt(self, prompt: str | None = None, prompt_name: str | None = None) -> str | None:
        """``prompt`` wins over ``prompt_name``, which wins over ``default_prompt_name``."""
        if prompt is not None:
            if prompt_name is not None:
                logger.warning("Both `prompt` and `prompt_name` were given: `prompt` is used, `prompt_name` "
                               "ignored.")
            return prompt
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                raise ValueError(
                    f"Prompt name {prompt_name!r} not found in the configured prompts dictionary with keys "
                    f"{list(self.prompts)!r}."
                )
            return self.prompts[prompt_name]
        if self.default_prompt_name is not None:
            return self.prompts[self.default_prompt_name]
        return None

    # ------------------------------------------------------------------ encode
    def encode(
        self,
        inputs: str | Sequence[str] | Sequence[TextPair] | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        output_value: OutputValue = "sentence_embedding",
        precision: Literal["float32", "int8", "uint8", "binary", "ubinary"] | None = "float32",
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: str | list[str] | None = None,
        normalize_embeddings: bool = False,
        truncate_dim: int | None = None,
        pool: Any = None,
        chunk_size: int | None = None,
        max_tokens_per_batch: int | None = None,
        **kwargs: Any,
    ) -> np.ndarray | torch.Tensor | list[Any] | dict[str, Any]:
        """Embed one text or a list of texts.

        ``inputs`` may also be text pairs (``(text, text)`` tuples, or a 2-D numpy array of
        strings), each encoded as one input of two segments.

        Returns a ``[n, dim]`` numpy array by default (one ``[dim]`` vector for a single
        string), in the model's dtype (float32 unless it was loaded or cast to half
        precision); a tensor with ``convert_to_tensor=True``; a list of tensors with
        ``convert_to_numpy=False``; per-text token embeddings with
        ``output_value="token_embeddings"``; every per-text feature with ``output_value=None``.

        ``precision`` other than float32 (``None`` means float32) quantizes with buckets
        calibrated over the whole call. ``pool`` (from ``start_multi_process_pool``) or a list
        of devices spreads the work over processes. ``max_tokens_per_batch`` additionally caps
        each batch's padded tokens. ``processing_kwargs={"text": {"max_length": n}}`` cuts the
        texts of this call at ``n`` tokens; ``task`` is accepted and has no effect (it routes
        a sentence-transformers Router, which these models do not have). ``sentences`` is the
        older name of ``inputs``.
        """
        inputs = take_inputs(inputs, kwargs)
        max_length = call_max_length(kwargs.pop("processing_kwargs", None))
        kwargs.pop("task", None)
        if kwargs:
            raise ValueError(
                f"SentenceTransformer.encode() has been called with additional keyword arguments that this model "
                f"does not use: {list(kwargs)}. As per SentenceTransformer.get_model_kwargs(), this model does not "
                "accept any additional keyword arguments."
            )
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        precision = precision or "float32"
        check_precision(precision)
        if output_value not in OUTPUT_VALUES:
            raise ValueError(f"Unknown output_value {output_value!r}; expected one of {list(OUTPUT_VALUES)}.")
        if show_progress_bar is None:
            show_progress_bar = logger.getEffectiveLevel() <= logging.INFO
        if convert_to_tensor:
            convert_to_numpy = False
        if output_value != "sentence_embedding":
            convert_to_numpy = convert_to_tensor = False

        texts, single = encode_inputs(inputs)
        resolved_prompt = self.resolve_prompt(prompt, prompt_name)
        truncate_dim = truncate_dim if truncate_dim is not None else self.truncate_dim
        options = EncodeOptions(
            batch_size=batch_size,
            output_value=output_value,
            normalize_embeddings=normalize_embeddings,
            truncate_dim=truncate_dim,
            max_tokens_per_batch=max_tokens_per_batch,
        )
        with self._call_max_seq_length(max_length):
            if pool is not None or isinstance(device, list):
                embeddings = encode_with_pool(
                    self, texts, resolved_prompt, options, pool=pool, devices=device, chunk_size=chunk_size,
                    show_progress_bar=show_progress_bar,
                )
            else:
                embeddings = self.compute(
                    texts, resolved_prompt, options, device=device, to_cpu=convert_to_numpy,
                    show_progress_bar=show_progress_bar,
                )
        if output_value is None:
            self._complete_features(embeddings, resolved_prompt, truncate_dim)
        return self._finish(embeddings, output_value, precision, convert_to_numpy, convert_to_tensor, single)

    def _complete_features(self, rows: list[dict[str, Any]], prompt: str | None, truncate_dim: int | None) -> None:
        """``output_value=None`` rows as sentence-transformers gives them: sentence embeddings
        truncated to ``truncate_dim``, ``token_type_ids`` for a tokenizer that has them, the
        prompt's ``prompt_length`` whenever a prompt was applied, and ``modality``."""
        has_token_types = "token_type_ids" in getattr(self.tokenizer, "model_input_names", ())
        prompt_length = self.transformer.prompt_length(prompt) if prompt else None
        for features in rows:
            if truncate_dim is not None:
                features["sentence_embedding"] = truncate_embeddings(features["sentence_embedding"], truncate_dim)
            if has_token_types and "token_type_ids" not in features:
                features["token_type_ids"] = torch.zeros_like(features["input_ids"])
            if prompt_length is not None and "prompt_length" not in features:
                features["prompt_length"] = prompt_length
            features.setdefault("modality", "text")

    @contextmanager
    def _call_max_seq_length(self, max_length: int | None) -> Iterator[None]:
        """Within the block, texts are cut at ``max_length`` tokens (``None``: no change)."""
        if max_length is None:
            yield
            return
        transformer = self.transformer
        previous = transformer.max_seq_length
        transformer.max_seq_length = max_length
        try:
            yield
        finally:
            transformer.max_seq_length = previous

    def _finish(
        self,
        embeddings: torch.Tensor | list[Any],
        output_value: OutputValue,
        precision: str,
        convert_to_numpy: bool,
        convert_to_tensor: bool,
        single: bool,
    ) -> Any:
        """Quantize over the whole call, then convert to what the caller asked for."""
        if output_value == "token_embeddings" and precision != "float32":
            embeddings = quantize_token_embeddings(embeddings, precision)
        if output_value != "sentence_embedding":
            return embeddings[0] if single else embeddings
        if precision != "float32":
            quantized = quantize_embeddings(embeddings.float().cpu().numpy(), precision=precision)
            embeddings = torch.from_numpy(quantized)
        else:
            # Computed in float32 (see ``compute``); a half-precision model answers in its own dtype.
            dtype = self.dtype
            if dtype in (torch.float16, torch.bfloat16) and embeddings.dtype != dtype:
                embeddings = embeddings.to(dtype)
        if convert_to_tensor:
            result: Any = embeddings
        elif convert_to_numpy:
            # numpy has no bfloat16: it reads as float32.
            if embeddings.dtype == torch.bfloat16:
                embeddings = embeddings.float()
            result = embeddings.cpu().numpy()
        else:
            result = list(embeddings)
        return result[0] if single else result

    def compute(
        self,
        texts: Sequence[str],
        prompt: str | None = None,
        options: EncodeOptions | None = None,
        device: str | torch.device | None = None,
        to_cpu: bool = True,
        show_progress_bar: bool = False,
    ) -> torch.Tensor | list[Any]:
        """Run the model over ``texts`` in the caller's order, float32, no quantization.

        Sentence embeddings come back as one ``[n, dim]`` tensor, token embeddings and
        ``output_value=None`` as a list with one entry per text.
        """
        if device is not None and torch.device(device) != self.device:
            self.to(device)
        return self.forward_tokens(self.prepare(texts, prompt), options, to_cpu, show_progress_bar)



@dataclass(frozen=True)
class ModelRecipe:
    """What a pool worker needs to rebuild a model: a local folder and how to load it.

    It pickles by value and loads itself, so the pool sends it without importing this module.
    """

    path: str
    trust_remote_code: bool = False
    dtype: str | None = None
    backend: str = "torch"

    def load(self, device: str) -> SentenceTransformer:
        """The model, loaded from ``path`` on CPU, cast to ``dtype`` and moved to ``device``."""
        model = SentenceTransformer(
            self.path, device="cpu", local_files_only=True, trust_remote_code=self.trust_remote_code,
            backend=self.backend,
        )
        if self.dtype is not None:
            model.to(getattr(torch, self.dtype))
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        return model.to(device)
