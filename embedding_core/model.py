"""SentenceTransformer: load a sentence-transformers model folder, encode, save, compare.

``encode`` is a short pipeline of named steps:

    resolve prompt -> tokenize once -> order by token length -> batch -> forward (+pool)
    -> post-process (truncate, normalize) -> restore order -> quantize -> convert
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from embedding_core.backends import attach_backend, check_backend
from embedding_core.batching import (
    CPU_TOKENS_PER_BATCH,
    PaddedBatch,
    length_order,
    pad_batch,
    plan_batches,
)
from embedding_core.hub import ResolvedModel, resolve_model
from embedding_core.modules import (
    MODULE_CLASSES,
    SAVED_TYPE_NAMES,
    Dense,
    Normalize,
    Pooling,
    Transformer,
)
from embedding_core.quantization import check_precision, quantize_embeddings
from embedding_core.util import SIMILARITY_ALIASES, SIMILARITY_FUNCTIONS

logger = logging.getLogger(__name__)

OutputValue = Literal["sentence_embedding", "token_embeddings"] | None
OUTPUT_VALUES = ("sentence_embedding", "token_embeddings", None)
MODEL_CONFIG_FILE = "config_sentence_transformers.json"
# Texts are tokenized this many at a time and kept as flat int32 arrays, so a call over
# hundreds of thousands of texts never holds them as Python lists.
_TOKENIZE_CHUNK = 4096


def default_device() -> str:
    """``cuda`` if available, else ``mps``, else ``cpu``."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


@dataclass
class TokenizedTexts:
    """Token ids of many texts, stored flat: text ``i`` is ``ids[offsets[i]:offsets[i + 1]]``."""

    ids: np.ndarray
    offsets: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def rows(self, indices: Iterable[int]) -> list[np.ndarray]:
        return [self.ids[self.offsets[i] : self.offsets[i + 1]] for i in indices]


def check_texts(sentences: Sequence[Any]) -> None:
    """Every item must be a ``str``; the first that is not is named by index and type."""
    for index, text in enumerate(sentences):
        if not isinstance(text, str):
            raise TypeError(
                f"encode() takes strings; item {index} is of type {type(text).__name__}: {text!r:.80}"
            )


class SentenceTransformer(nn.Sequential):
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
    ) -> None:
        check_backend(backend)
        self.prompts: dict[str, str] = {}
        self.default_prompt_name: str | None = None
        self._similarity_fn_name: str | None = None
        self.truncate_dim = truncate_dim
        self.resolved: ResolvedModel | None = None
        file_config: dict[str, Any] = {}

        if modules is not None:
            loaded = list(modules)
        else:
            self.resolved = resolve_model(
                model_name_or_path,
                revision=revision,
                cache_folder=cache_folder,
                token=token,
                local_files_only=local_files_only,
            )
            loaded, file_config = _load_folder(self.resolved.path, trust_remote_code, model_kwargs or {})
        super().__init__(OrderedDict((str(i), module) for i, module in enumerate(loaded)))

        self.prompts = {**file_config.get("prompts", {}), **(prompts or {})}
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
        self.to(device or default_device())
        self.eval()
        # Any backend but "torch" swaps the Transformer's CPU encoder for another runtime (see backends).
        self.backend = "torch" if backend == "torch" else attach_backend(self.transformer, backend, self.revision)

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

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        for parameter in self.parameters():
            return parameter.device
        return torch.device("cpu")

    @property
    def transformer(self) -> Transformer:
        for module in self:
            if isinstance(module, Transformer):
                return module
        raise AttributeError("This model has no Transformer module.")

    @property
    def tokenizer(self) -> Any:
        return self.transformer.tokenizer

    @property
    def max_seq_length(self) -> int | None:
        """Longest input in tokens; longer texts are truncated. Capped at what the model supports."""
        return self.transformer.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int | None) -> None:
        self.transformer.max_seq_length = value

    @property
    def pooling(self) -> Pooling | None:
        return next((module for module in self if isinstance(module, Pooling)), None)

    @property
    def pooling_modes(self) -> list[str]:
        pooling = self.pooling
        return list(pooling.pooling_modes) if pooling else []

    @property
    def similarity_fn_name(self) -> str:
        """``cosine`` (default), ``dot``, ``euclidean`` or ``manhattan``: what ``similarity`` computes."""
        return self._similarity_fn_name or "cosine"

    @similarity_fn_name.setter
    def similarity_fn_name(self, value: str) -> None:
        name = SIMILARITY_ALIASES.get(value, value)
        if name not in SIMILARITY_FUNCTIONS:
            raise ValueError(f"Unknown similarity_fn_name {value!r}; expected one of {list(SIMILARITY_FUNCTIONS)}.")
        self._similarity_fn_name = name

    def get_sentence_embedding_dimension(self) -> int | None:
        """Width of ``encode``'s vectors, after ``truncate_dim`` if one is set."""
        dimension = None
        for module in self:
            if hasattr(module, "get_sentence_embedding_dimension"):
                dimension = module.get_sentence_embedding_dimension()
        if dimension is not None and self.truncate_dim is not None:
            return min(dimension, self.truncate_dim)
        return dimension

    def get_max_seq_length(self) -> int | None:
        return self.max_seq_length

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

    # ------------------------------------------------------------------ prompts
    def resolve_prompt(self, prompt: str | None = None, prompt_name: str | None = None) -> str | None:
        """``prompt`` wins over ``prompt_name``, which wins over ``default_prompt_name``."""
        if prompt is not None:
            return prompt
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                raise ValueError(
                    f"Prompt name {prompt_name!r} not found; known prompt names: {sorted(self.prompts)}."
                )
            return self.prompts[prompt_name]
        if self.default_prompt_name is not None:
            return self.prompts[self.default_prompt_name]
        return None

    # ------------------------------------------------------------------ tokenization
    def tokenize_texts(self, texts: Sequence[str], prompt: str | None = None) -> TokenizedTexts:
        """Tokenize every text once (prompt prepended), kept as flat int32 arrays."""
        pieces: list[np.ndarray] = []
        lengths: list[np.ndarray] = []
        for start in range(0, len(texts), _TOKENIZE_CHUNK):
            chunk = texts[start : start + _TOKENIZE_CHUNK]
            if prompt:
                chunk = [prompt + text for text in chunk]
            ids = self.transformer.tokenize_to_ids(list(chunk))
            lengths.append(np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids)))
            pieces.append(np.fromiter((t for row in ids for t in row), dtype=np.int32))
        flat = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        if lengths:
            np.cumsum(np.concatenate(lengths), out=offsets[1:])
        return TokenizedTexts(flat, offsets)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Padded ``input_ids`` and ``attention_mask`` for ``texts``, as the model takes them."""
        tokenized = self.tokenize_texts(list(texts))
        batch = pad_batch(tokenized.rows(range(len(tokenized))), self.transformer.pad_token_id)
        return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}

    def prompt_length(self, prompt: str | None) -> int | None:
        """Tokens a prompt occupies at the start of each text; ``None`` when pooling includes it."""
        pooling = self.pooling
        if not prompt or pooling is None or pooling.include_prompt:
            return None
        return self.transformer.prompt_length(prompt)

    # ------------------------------------------------------------------ encode
    def encode(
        self,
        sentences: str | Sequence[str],
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        output_value: OutputValue = "sentence_embedding",
        precision: Literal["float32", "int8", "uint8", "binary", "ubinary"] = "float32",
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: str | list[str] | None = None,
        normalize_embeddings: bool = False,
        truncate_dim: int | None = None,
        pool: Any = None,
        chunk_size: int | None = None,
        max_tokens_per_batch: int | None = None,
    ) -> np.ndarray | torch.Tensor | list[Any] | dict[str, Any]:
        """Embed one text or a list of texts.

        Returns a ``[n, dim]`` numpy array by default (one ``[dim]`` vector for a single
        string); a tensor with ``convert_to_tensor=True``; a list of tensors with
        ``convert_to_numpy=False``; per-text token embeddings with
        ``output_value="token_embeddings"``; every per-text feature with ``output_value=None``.

        ``precision`` other than float32 quantizes with buckets calibrated over the whole call.
        ``pool`` (from ``start_multi_process_pool``) or a list of devices spreads the work over
        processes. ``max_tokens_per_batch`` additionally caps each batch's padded tokens.
        """
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        check_precision(precision)
        if output_value not in OUTPUT_VALUES:
            raise ValueError(f"Unknown output_value {output_value!r}; expected one of {list(OUTPUT_VALUES)}.")
        if show_progress_bar is None:
            show_progress_bar = logger.getEffectiveLevel() <= logging.INFO
        if convert_to_tensor:
            convert_to_numpy = False
        if output_value != "sentence_embedding":
            convert_to_numpy = convert_to_tensor = False

        single = isinstance(sentences, str)
        texts: list[str] = [sentences] if single else list(sentences)
        check_texts(texts)
        resolved_prompt = self.resolve_prompt(prompt, prompt_name)
        truncate_dim = truncate_dim if truncate_dim is not None else self.truncate_dim
        compute_kwargs = dict(
            prompt=resolved_prompt,
            batch_size=batch_size,
            output_value=output_value,
            normalize_embeddings=normalize_embeddings,
            truncate_dim=truncate_dim,
            max_tokens_per_batch=max_tokens_per_batch,
        )

        if pool is not None or isinstance(device, list):
            from embedding_core.pool import encode_with_pool

            embeddings = encode_with_pool(
                self, texts, pool=pool, devices=device, chunk_size=chunk_size,
                show_progress_bar=show_progress_bar, **compute_kwargs,
            )
        else:
            embeddings = self.compute(
                texts, device=device, to_cpu=convert_to_numpy, show_progress_bar=show_progress_bar,
                **compute_kwargs,
            )
        return self._finish(embeddings, output_value, precision, convert_to_numpy, convert_to_tensor, single)

    def encode_query(self, sentences: str | Sequence[str], **kwargs: Any) -> Any:
        """``encode`` with the model's ``query`` prompt, if it has one."""
        if "query" in self.prompts and "prompt" not in kwargs and "prompt_name" not in kwargs:
            kwargs["prompt_name"] = "query"
        return self.encode(sentences, **kwargs)

    def encode_document(self, sentences: str | Sequence[str], **kwargs: Any) -> Any:
        """``encode`` with the model's ``document`` prompt, if it has one."""
        for name in ("document", "passage", "corpus"):
            if name in self.prompts and "prompt" not in kwargs and "prompt_name" not in kwargs:
                kwargs["prompt_name"] = name
                break
        return self.encode(sentences, **kwargs)

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
        if output_value != "sentence_embedding":
            return embeddings[0] if single else embeddings
        if precision != "float32":
            quantized = quantize_embeddings(embeddings.float().cpu().numpy(), precision=precision)
            embeddings = torch.from_numpy(quantized)
        if convert_to_tensor:
            result: Any = embeddings
        elif convert_to_numpy:
            result = embeddings.cpu().numpy() if isinstance(embeddings, torch.Tensor) else embeddings
        else:
            result = list(embeddings)
        return result[0] if single else result

    @torch.inference_mode()
    def compute(
        self,
        texts: Sequence[str],
        prompt: str | None = None,
        batch_size: int = 32,
        output_value: OutputValue = "sentence_embedding",
        normalize_embeddings: bool = False,
        truncate_dim: int | None = None,
        device: str | torch.device | None = None,
        to_cpu: bool = True,
        show_progress_bar: bool = False,
        max_tokens_per_batch: int | None = None,
        tokenized: TokenizedTexts | None = None,
    ) -> torch.Tensor | list[Any]:
        """Run the model over ``texts`` in the caller's order, float32, no quantization.

        Sentence embeddings come back as one ``[n, dim]`` tensor, token embeddings and
        ``output_value=None`` as a list with one entry per text. ``tokenized`` may carry the
        texts' tokens (prompt included) when the caller has them already.
        """
        if device is not None and torch.device(device) != self.device:
            self.to(device)
        target = self.device
        tokenized = tokenized if tokenized is not None else self.tokenize_texts(texts, prompt)
        prompt_length = self.prompt_length(prompt)
        order = length_order(tokenized.lengths)
        sorted_lengths = tokenized.lengths[order]
        token_budget = max_tokens_per_batch
        if token_budget is None and target.type == "cpu":
            token_budget = CPU_TOKENS_PER_BATCH
        batches = plan_batches(sorted_lengths, batch_size, token_budget)

        sentence_out: torch.Tensor | None = None
        per_text: list[Any] = [None] * len(texts)
        progress = tqdm(total=len(texts), desc="Encoding", unit="text", disable=not show_progress_bar)
        pad_id = self.transformer.pad_token_id

        def padded_batches() -> Iterator[tuple[np.ndarray, PaddedBatch, dict[str, Any]]]:
            for batch_slice in batches:
                indices = order[batch_slice]
                padded = pad_batch(tokenized.rows(indices), pad_id)
                features: dict[str, Any] = {
                    "input_ids": padded.input_ids.to(target, non_blocking=True),
                    "attention_mask": padded.attention_mask.to(target, non_blocking=True),
                }
                if prompt_length:
                    features["prompt_length"] = prompt_length
                yield indices, padded, features

        with progress:
            for indices, padded, features in self._forward_batches(padded_batches()):
                index_tensor = torch.from_numpy(indices)
                if output_value == "sentence_embedding":
                    embeddings = features["sentence_embedding"]
                    if truncate_dim is not None:
                        embeddings = embeddings[:, :truncate_dim]
                    if normalize_embeddings:
                        embeddings = torch.nn.functional.normalize(embeddings, p=2, dim=1)
                    if sentence_out is None:
                        out_device = "cpu" if to_cpu else target
                        sentence_out = torch.empty(
                            (len(texts), embeddings.shape[1]), dtype=embeddings.dtype, device=out_device
                        )
                    sentence_out[index_tensor.to(sentence_out.device)] = embeddings.to(sentence_out.device)
                elif output_value == "token_embeddings":
                    lengths = padded.attention_mask.sum(dim=1).tolist()
                    for row, text_index in enumerate(indices):
                        tokens = features["token_embeddings"][row, : lengths[row]]
                        per_text[text_index] = tokens.cpu() if to_cpu else tokens
                else:
                    batch_rows = len(indices)
                    for row, text_index in enumerate(indices):
                        per_text[text_index] = {
                            name: value[row]
                            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch_rows
                            else value
                            for name, value in features.items()
                        }
                progress.update(len(indices))

        if output_value == "sentence_embedding":
            if sentence_out is None:
                width = self.get_sentence_embedding_dimension() or 0
                if truncate_dim is not None:
                    width = min(width, truncate_dim)
                sentence_out = torch.zeros((0, width), dtype=torch.float32)
            return sentence_out.float() if sentence_out.dtype != torch.float32 else sentence_out
        return per_text

    def _forward_batches(
        self, items: Iterator[tuple[np.ndarray, PaddedBatch, dict[str, Any]]]
    ) -> Iterator[tuple[np.ndarray, PaddedBatch, dict[str, Any]]]:
        """Run every module over each batch, in order.

        A runtime encoder that can keep several batches in flight (OpenVINO's ``imap``)
        runs the Transformer step of all batches that way, the later modules (pooling,
        Dense, Normalize) following on each result; otherwise one batch at a time.
        """
        modules = list(self)
        encoder = getattr(modules[0], "runtime_encoder", None) if modules else None
        if not hasattr(encoder, "imap") or self.device.type != "cpu":
            for indices, padded, features in items:
                yield indices, padded, self(features)
            return
        requests = (
            ((indices, padded, features), features["input_ids"], features["attention_mask"])
            for indices, padded, features in items
        )
        for (indices, padded, features), hidden in encoder.imap(requests):
            features["token_embeddings"] = hidden
            for module in modules[1:]:
                features = module(features)
            yield indices, padded, features

    # ------------------------------------------------------------------ pool
    def start_multi_process_pool(self, target_devices: list[str] | None = None) -> Any:
        """Start worker processes (one per GPU, or CPU workers splitting the cores) for ``encode``."""
        from embedding_core.pool import EncodePool

        return EncodePool.start(self, target_devices)

    @staticmethod
    def stop_multi_process_pool(pool: Any) -> None:
        """Stop the pool's workers and wait for them to exit."""
        pool.close()

    def encode_multi_process(self, sentences: Sequence[str], pool: Any, **kwargs: Any) -> Any:
        """``encode`` spread over the pool's workers."""
        return self.encode(sentences, pool=pool, **kwargs)

    # ------------------------------------------------------------------ save
    def save(self, path: str | os.PathLike, model_name: str | None = None, create_model_card: bool = True, **_: Any) -> None:
        """Write the sentence-transformers folder format: sentence-transformers reloads it too."""
        path = str(path)
        os.makedirs(path, exist_ok=True)
        entries = []
        for index, module in enumerate(self):
            class_name = type(module).__name__
            if class_name not in SAVED_TYPE_NAMES:
                raise TypeError(f"Module {index} ({class_name}) cannot be saved in the sentence-transformers format.")
            folder = "" if index == 0 and isinstance(module, Transformer) else f"{index}_{class_name}"
            module_path = os.path.join(path, folder)
            os.makedirs(module_path, exist_ok=True)
            module.save(module_path)
            entries.append({"idx": index, "name": str(index), "path": folder, "type": SAVED_TYPE_NAMES[class_name]})
        with open(os.path.join(path, "modules.json"), "w", encoding="utf-8") as fh:
            json.dump(entries, fh, indent=2)
        config: dict[str, Any] = {
            "__version__": {"embedding_core": _package_version(), "pytorch": torch.__version__},
            "prompts": self.prompts,
            "default_prompt_name": self.default_prompt_name,
            "similarity_fn_name": self.similarity_fn_name,
        }
        if self.truncate_dim is not None:
            config["truncate_dim"] = self.truncate_dim
        with open(os.path.join(path, MODEL_CONFIG_FILE), "w", encoding="utf-8") as fh:
            json.dump(config, fh, indent=2)
        if create_model_card:
            _write_model_card(path, model_name or self.model_name or os.path.basename(path), self)

    def save_pretrained(self, path: str | os.PathLike, **kwargs: Any) -> None:
        """Same as ``save``."""
        self.save(path, **kwargs)


def _package_version() -> str:
    from embedding_core import __version__

    return __version__


def _write_model_card(path: str, name: str, model: SentenceTransformer) -> None:
    readme = os.path.join(path, "README.md")
    if os.path.exists(readme):
        return
    with open(readme, "w", encoding="utf-8") as fh:
        fh.write(
            f"# {name}\n\nA sentence embedding model saved by embedding_core in the sentence-transformers "
            f"folder format.\n\n- embedding dimension: {model.get_sentence_embedding_dimension()}\n"
            f"- max_seq_length: {model.max_seq_length}\n- pooling: {', '.join(model.pooling_modes)}\n"
            f"- similarity: {model.similarity_fn_name}\n"
        )


def _load_folder(
    path: str, trust_remote_code: bool, model_kwargs: dict[str, Any]
) -> tuple[list[nn.Module], dict[str, Any]]:
    """Build the module chain described by ``modules.json`` (or Transformer + mean pooling)."""
    config: dict[str, Any] = {}
    config_path = os.path.join(path, MODEL_CONFIG_FILE)
    if os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as fh:
            config = json.load(fh)

    modules_path = os.path.join(path, "modules.json")
    if not os.path.exists(modules_path):
        logger.warning(
            "%s has no modules.json: loading it as a plain transformers model with mean pooling.", path
        )
        transformer = Transformer.load(path, trust_remote_code=trust_remote_code, **model_kwargs)
        return [transformer, Pooling(transformer.get_word_embedding_dimension(), "mean")], config

    with open(modules_path, encoding="utf-8") as fh:
        entries = json.load(fh)
    modules: list[nn.Module] = []
    dimension: int | None = None
    for entry in sorted(entries, key=lambda item: item.get("idx", 0)):
        class_name = str(entry["type"]).rsplit(".", 1)[-1]
        cls = MODULE_CLASSES.get(class_name)
        if cls is None:
            raise ValueError(
                f"{modules_path}: module {entry.get('name', entry.get('idx'))} has type {entry['type']!r}, "
                f"which embedding_core does not implement (known: {sorted(MODULE_CLASSES)})."
            )
        module_path = os.path.join(path, entry.get("path", ""))
        if cls is Transformer:
            module: nn.Module = Transformer.load(module_path, trust_remote_code=trust_remote_code, **model_kwargs)
            dimension = module.get_word_embedding_dimension()
        elif cls is Pooling:
            module = Pooling.load(module_path, word_embedding_dimension=dimension)
            dimension = module.get_sentence_embedding_dimension()
        elif cls is Dense:
            module = Dense.load(module_path)
            dimension = module.get_sentence_embedding_dimension()
        else:
            module = Normalize.load(module_path)
        modules.append(module)
    return modules, config
