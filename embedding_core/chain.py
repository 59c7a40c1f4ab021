"""The module chain and what it does with tokens: tokenize once, then order by length,
batch, forward and pool, post-process, and restore the order.

:class:`ModuleChain` is the part of a ``SentenceTransformer`` that a pool worker uses: the
parent ``prepare``s the tokens of a whole call, each worker runs ``forward_tokens`` on its
chunk, and the one scatter-back (``batching.Gather``) puts the results in order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from embedding_core.batching import (
    CPU_TOKENS_PER_BATCH,
    EncodeOptions,
    Gather,
    PaddedBatch,
    TextPair,
    TokenizedTexts,
    length_order,
    pad_batch,
    plan_batches,
)
from embedding_core.modules import Pooling, Transformer

# Texts are tokenized this many at a time and kept as flat int32 arrays, so a call over
# hundreds of thousands of texts never holds them as Python lists.
_TOKENIZE_CHUNK = 4096


def _prompted_chunks(texts: Sequence[str] | Sequence[TextPair], prompt: str | None) -> Iterator[list[Any]]:
    """``texts`` in chunks of ``_TOKENIZE_CHUNK``, the prompt prepended to each (to the first
    text of a pair)."""
    for start in range(0, len(texts), _TOKENIZE_CHUNK):
        chunk = texts[start : start + _TOKENIZE_CHUNK]
        if not prompt:
            yield list(chunk)
        elif chunk and isinstance(chunk[0], tuple):
            yield [(prompt + first, second) for first, second in chunk]
        else:
            yield [prompt + text for text in chunk]


def default_device() -> str:
    """``cuda`` if available, else ``mps``, else ``cpu``."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


class ModuleChain(nn.Sequential):
    """Modules run in order (Transformer, Pooling, Dense, Normalize) over a features dict."""

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
    def backend(self) -> str:
        """The runtime in effect for the Transformer: ``"torch"``, or one of ``backends.BACKENDS``."""
        return next((module.backend for module in self if isinstance(module, Transformer)), "torch")

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

    def pooled_dimension(self) -> int | None:
        """Width of the pooled (and Dense-projected) embeddings, before any truncation."""
        dimension = None
        for module in self:
            if hasattr(module, "get_sentence_embedding_dimension"):
                dimension = module.get_sentence_embedding_dimension()
        return dimension

    # ------------------------------------------------------------------ tokens
    def prepare(self, texts: Sequence[str] | Sequence[TextPair], prompt: str | None = None) -> TokenizedTexts:
        """Tokenize every text (or text pair) once (prompt prepended), kept as flat int32
        arrays, with the prompt's length when pooling leaves the prompt out."""
        pieces: list[np.ndarray] = []
        lengths: list[np.ndarray] = []
        second_starts: list[np.ndarray] | None = [] if texts and isinstance(texts[0], tuple) else None
        for chunk in _prompted_chunks(texts, prompt):
            if second_starts is None:
                ids = self.transformer.tokenize_to_ids(chunk)
            else:
                ids, starts = self.transformer.tokenize_pairs_to_ids(chunk)
                second_starts.append(np.asarray(starts, dtype=np.int64))
            lengths.append(np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids)))
            pieces.append(np.fromiter((t for row in ids for t in row), dtype=np.int32))
        flat = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        if lengths:
            np.cumsum(np.concatenate(lengths), out=offsets[1:])
        starts_array = np.concatenate(second_starts) if second_starts else None
        return TokenizedTexts(flat, offsets, self._prompt_length(prompt), starts_array)

    def token_lengths(self, texts: Sequence[str], prompt: str | None = None) -> np.ndarray:
        """Tokens each text takes before ``max_seq_length`` cuts it, counted as ``prepare``
        counts them (prompt prepended, special tokens included): a text longer than
        ``max_seq_length`` is truncated by ``encode``."""
        lengths = [np.fromiter((len(row) for row in self.transformer.tokenize_to_ids(chunk, truncate=False)),
                               dtype=np.int64, count=len(chunk))
                   for chunk in _prompted_chunks(texts, prompt)]
        return np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Padded ``input_ids`` and ``attention_mask`` for ``texts``, as the model takes them."""
        tokenized = self.prepare(list(texts))
        batch = pad_batch(tokenized.rows(range(len(tokenized))), self.transformer.pad_token_id)
        return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}

    def _prompt_length(self, prompt: str | None) -> int | None:
        """Tokens a prompt occupies at the start of each text; ``None`` when pooling includes it."""
        pooling = self.pooling
        if not prompt or pooling is None or pooling.include_prompt:
            return None
        return self.transformer.prompt_length(prompt)

    @torch.inference_mode()
    def forward_tokens(
        self,
        tokens: TokenizedTexts,
        options: EncodeOptions | None = None,
        to_cpu: bool = True,
        show_progress_bar: bool = False,
    ) -> torch.Tensor | list[Any]:
        """``compute`` from prepared tokens: order by length, batch, forward, post-process,
        restore the tokens' order. A pool worker runs this on its chunk."""
        options = options or EncodeOptions()
        target = self.device
        order = length_order(tokens.lengths)
        token_budget = options.max_tokens_per_batch
        if token_budget is None and target.type == "cpu":
            token_budget = CPU_TOKENS_PER_BATCH
        batches = plan_batches(tokens.lengths[order], options.batch_size, token_budget)
        gather = Gather(len(tokens), options.output_value, "cpu" if to_cpu else target)
        pad_id = self.transformer.pad_token_id

        def padded_batches() -> Iterator[tuple[np.ndarray, PaddedBatch, dict[str, Any]]]:
            for batch_slice in batches:
                indices = order[batch_slice]
                padded = pad_batch(tokens.rows(indices), pad_id)
                features: dict[str, Any] = {
                    "input_ids": padded.input_ids.to(target, non_blocking=True),
                    "attention_mask": padded.attention_mask.to(target, non_blocking=True),
                }
                if tokens.prompt_length:
                    features["prompt_length"] = tokens.prompt_length
                token_type_ids = tokens.token_type_ids(indices, padded.attention_mask)
                if token_type_ids is not None:
                    features["token_type_ids"] = token_type_ids.to(target, non_blocking=True)
                yield indices, padded, features

        with tqdm(total=len(tokens), desc="Encoding", unit="text", disable=not show_progress_bar) as progress:
            for indices, padded, features in self._forward_batches(padded_batches()):
                gather.add(indices, _batch_outputs(features, padded, options, to_cpu))
                progress.update(len(indices))
        width = self.pooled_dimension() or 0
        return gather.result(min(width, options.truncate_dim) if options.truncate_dim is not None else width)

    def _forward_batches(
        self, items: Iterator[tuple[np.ndarray, PaddedBatch, dict[str, Any]]]
    ) -> Iterator[tuple[np.ndarray, PaddedBatch, dict[str, Any]]]:
        """Run every module over each batch, in order.

        On CPU, a Transformer with another runtime (see ``backends.Runtime``) runs its step
        of all batches through the runtime's ``imap`` (OpenVINO keeps several in flight),
        the later modules (pooling, Dense, Normalize) following on each result; otherwise
        the whole chain runs one batch at a time.
        """
        modules = list(self)
        runtime = modules[0].runtime if modules and isinstance(modules[0], Transformer) else None
        if runtime is None or self.device.type != "cpu":
            for indices, padded, features in items:
                yield indices, padded, self(features)
            return
        requests = (
            ((indices, padded, features), features["input_ids"], features["attention_mask"])
            for indices, padded, features in items
        )
        for (indices, padded, features), hidden in runtime.imap(requests):
            features["token_embeddings"] = hidden
            for module in modules[1:]:
                features = module(features)
            yield indices, padded, features


def _batch_outputs(
    features: dict[str, Any], padded: PaddedBatch, options: EncodeOptions, to_cpu: bool
) -> torch.Tensor | list[Any]:
    """One batch's results, one per row: post-processed sentence embeddings, each text's
    token embeddings without padding, or every feature of each text."""
    if options.output_value == "sentence_embedding":
        embeddings = features["sentence_embedding"]
        if options.truncate_dim is not None:
            embeddings = embeddings[:, : options.truncate_dim]
        if options.normalize_embeddings:
            embeddings = torch.nn.functional.normalize(embeddings, p=2, dim=1)
        return embeddings
    if options.output_value == "token_embeddings":
        lengths = padded.attention_mask.sum(dim=1).tolist()
        rows = [features["token_embeddings"][row, :length] for row, length in enumerate(lengths)]
        return [tokens.cpu() if to_cpu else tokens for tokens in rows]
    batch_rows = padded.input_ids.shape[0]
    return [
        {
            name: value[row] if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch_rows
            else value
            for name, value in features.items()
        }
        for row in range(batch_rows)
    ]
