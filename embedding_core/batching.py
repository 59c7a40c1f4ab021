"""Tokens, options, length ordering, batch planning and the one scatter-back.

Texts are tokenized once per call, ordered longest first (so an out-of-memory error shows
up in the first batch, not the last), cut into batches, padded only to the longest text
of each batch, and the results are put back in the caller's order by :class:`Gather`,
whether a batch was computed here or a chunk came back from a pool worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch


class EncodeInputError(TypeError, ValueError):
    """``encode`` was given something that is not a text or an ordered sequence of texts.

    A ``TypeError`` (the type is wrong) and a ``ValueError`` (what sentence-transformers raises)."""


def encode_texts(sentences: Any) -> tuple[list[str], bool]:
    """The texts of an ``encode`` call and whether a single text was given.

    ``bytes`` must be decoded first, ``None`` is no text, and a ``set`` (or any unordered
    collection) would return embeddings in an arbitrary order, so each is refused by name.
    Every item must be a ``str``; the first that is not is named by index and type.
    """
    if isinstance(sentences, str):
        return [sentences], True
    if isinstance(sentences, (bytes, bytearray, memoryview)):
        raise EncodeInputError(
            f"encode() takes str, not {type(sentences).__name__}: decode the bytes first "
            f"(e.g. data.decode('utf-8')); got {bytes(sentences)!r:.80}"
        )
    if sentences is None:
        raise EncodeInputError("encode() takes a sentence (str) or a list of sentences, got None.")
    if isinstance(sentences, (set, frozenset, dict)):
        raise EncodeInputError(
            f"encode() takes an ordered sequence of sentences (list, tuple), not a "
            f"{type(sentences).__name__}: embeddings come back in input order, which a "
            f"{type(sentences).__name__} does not have; pass sorted(...) or list(...) of it."
        )
    if not isinstance(sentences, Iterable):
        raise EncodeInputError(
            f"encode() takes a sentence (str) or a list of sentences, not {type(sentences).__name__}."
        )
    texts = list(sentences)
    for index, text in enumerate(texts):
        if isinstance(text, (bytes, bytearray)):
            raise EncodeInputError(
                f"encode() takes strings; item {index} is bytes, decode it first: {bytes(text)!r:.80}"
            )
        if not isinstance(text, str):
            raise EncodeInputError(
                f"encode() takes strings; item {index} is of type {type(text).__name__}: {text!r:.80}"
            )
    return texts, False


TextPair = tuple[str, str]


def encode_inputs(inputs: Any) -> tuple[list[str] | list[TextPair], bool]:
    """``encode_texts``, or text pairs: a list whose items are ``(text, text)`` tuples or
    2-item lists, or a 2-D numpy array of strings (one pair per row), each pair encoded as
    one input the way a cross-attending model reads two segments."""
    if isinstance(inputs, np.ndarray) and inputs.ndim >= 1 and inputs.dtype.kind in ("U", "O"):
        inputs = inputs.tolist()
    if isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], (list, tuple)):
        pairs = []
        for index, item in enumerate(inputs):
            if not (isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(t, str) for t in item)):
                raise EncodeInputError(
                    f"encode() takes text pairs as (str, str); item {index} is {type(item).__name__}: {item!r:.80}"
                )
            pairs.append((item[0], item[1]))
        return pairs, False
    return encode_texts(inputs)


OutputValue = Literal["sentence_embedding", "token_embeddings"] | None
OUTPUT_VALUES = ("sentence_embedding", "token_embeddings", None)

# On CPU, batches of long texts are also capped at this many padded tokens: activations of
# a ~2k-token batch stay in cache, which measured ~15-25% faster than 32 texts of 256 tokens
# (see docs/performance.md). Short texts still travel ``batch_size`` at a time.
CPU_TOKENS_PER_BATCH = 2048


@dataclass(frozen=True)
class EncodeOptions:
    """What decides the numbers of one ``encode`` call, after the prompt is resolved.

    The same object drives a one-process call and travels to the pool's workers.
    """

    prompt: str | None = None
    batch_size: int = 32
    output_value: OutputValue = "sentence_embedding"
    normalize_embeddings: bool = False
    truncate_dim: int | None = None
    max_tokens_per_batch: int | None = None


@dataclass
class TokenizedTexts:
    """Token ids of many texts, stored flat: text ``i`` is ``ids[offsets[i]:offsets[i + 1]]``.

    ``prompt_length`` is the number of leading prompt tokens that pooling leaves out, or
    ``None`` when the prompt (if any) is pooled like the rest of the text. For text pairs,
    ``second_starts[i]`` is where text ``i``'s second segment starts (its token type 1).
    """

    ids: np.ndarray
    offsets: np.ndarray
    prompt_length: int | None = None
    second_starts: np.ndarray | None = None

    @classmethod
    def from_rows(cls, rows: Sequence[np.ndarray], prompt_length: int | None = None,
                  second_starts: np.ndarray | None = None) -> TokenizedTexts:
        """Pack token id rows (one array per text) into the flat layout."""
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(row) for row in rows], out=offsets[1:])
        ids = np.concatenate(rows) if len(rows) else np.zeros(0, dtype=np.int32)
        return cls(ids, offsets, prompt_length, second_starts)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def rows(self, indices: Iterable[int]) -> list[np.ndarray]:
        return [self.ids[self.offsets[i] : self.offsets[i + 1]] for i in indices]

    def subset(self, indices: Sequence[int]) -> TokenizedTexts:
        """The texts at ``indices``, in that order, compact (what a pool worker receives)."""
        starts = None if self.second_starts is None else self.second_starts[np.asarray(indices, dtype=np.int64)]
        return TokenizedTexts.from_rows(self.rows(indices), self.prompt_length, starts)

    def token_type_ids(self, indices: np.ndarray, attention_mask: torch.Tensor) -> torch.Tensor | None:
        """The padded token types of the texts at ``indices`` (1 from each second segment on),
        or ``None`` when these are not text pairs."""
        if self.second_starts is None:
            return None
        starts = torch.from_numpy(self.second_starts[indices]).unsqueeze(1)
        positions = torch.arange(attention_mask.shape[1]).unsqueeze(0)
        return ((positions >= starts) & attention_mask.bool()).long()


def length_order(lengths: Sequence[int]) -> np.ndarray:
    """Indices that sort ``lengths`` longest first; ties keep the input order (stable)."""
    return np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")


def plan_batches(
    sorted_lengths: Sequence[int], batch_size: int, max_tokens_per_batch: int | None = None
) -> list[slice]:
    """Cut length-sorted (longest first) texts into consecutive batches.

    Each batch holds at most ``batch_size`` texts and, when ``max_tokens_per_batch`` is set,
    at most that many padded tokens (rows x longest row), so short texts travel in large
    batches and long texts in small ones. A single text longer than the budget still gets a
    batch of its own.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
    if max_tokens_per_batch is not None and max_tokens_per_batch <= 0:
        raise ValueError(f"max_tokens_per_batch must be positive, got {max_tokens_per_batch}.")
    batches: list[slice] = []
    start = 0
    total = len(sorted_lengths)
    while start < total:
        end = min(start + batch_size, total)
        if max_tokens_per_batch is not None:
            # Longest first: the batch's padded width is the length of its first text.
            width = max(int(sorted_lengths[start]), 1)
            end = min(end, start + max(1, max_tokens_per_batch // width))
        batches.append(slice(start, end))
        start = end
    return batches


@dataclass
class PaddedBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


def pad_batch(token_ids: Sequence[Sequence[int]], pad_token_id: int) -> PaddedBatch:
    """Right-pad token id lists to the longest one, with the matching attention mask."""
    width = max((len(ids) for ids in token_ids), default=0)
    input_ids = np.full((len(token_ids), width), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((len(token_ids), width), dtype=np.int64)
    for row, ids in enumerate(token_ids):
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
    return PaddedBatch(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))


class Gather:
    """Puts results computed in length order back in the caller's order.

    Sentence embeddings fill one ``[count, dim]`` tensor (on ``device``, created with the
    first piece's width and dtype); token embeddings and ``output_value=None`` fill a list
    with one entry per text. :meth:`result` gives float32 sentence embeddings, or the list.
    """

    def __init__(self, count: int, output_value: OutputValue, device: str | torch.device = "cpu") -> None:
        self.output_value = output_value
        self.device = device
        self.sentences: torch.Tensor | None = None
        self.per_text: list[Any] = [None] * count
        self.count = count

    def add(self, indices: np.ndarray, values: torch.Tensor | Sequence[Any]) -> None:
        """Place ``values[i]`` at the caller's position ``indices[i]``."""
        if self.output_value != "sentence_embedding":
            for text_index, value in zip(indices, values, strict=True):
                self.per_text[text_index] = value
            return
        if self.sentences is None:
            self.sentences = torch.empty((self.count, values.shape[1]), dtype=values.dtype, device=self.device)
        index = torch.from_numpy(np.asarray(indices)).to(self.sentences.device)
        self.sentences[index] = values.to(self.sentences.device)

    def result(self, empty_width: int = 0) -> torch.Tensor | list[Any]:
        """Everything added, in the caller's order; ``empty_width`` shapes a call of no texts."""
        if self.output_value != "sentence_embedding":
            return self.per_text
        if self.sentences is None:
            return torch.zeros((0, empty_width), dtype=torch.float32)
        return self.sentences.float() if self.sentences.dtype != torch.float32 else self.sentences


def take_inputs(inputs: Any, kwargs: dict[str, Any]) -> Any:
    """``inputs``, or ``sentences=`` (its older name) from ``kwargs``."""
    if "sentences" in kwargs:
        if inputs is not None:
            raise ValueError("Both `inputs` and `sentences` were given; pass only `inputs`.")
        inputs = kwargs.pop("sentences")
    return inputs


def call_max_length(processing_kwargs: dict[str, Any] | None) -> int | None:
    """The token limit ``processing_kwargs={"text": {"max_length": n, "truncation": True}}`` asks for."""
    if not processing_kwargs:
        return None
    text = dict(processing_kwargs.get("text", {}))
    unsupported = sorted(set(processing_kwargs) - {"text"}) + sorted(set(text) - {"max_length", "truncation"})
    if unsupported or text.get("truncation", True) is False:
        raise ValueError(
            f"processing_kwargs supports {{'text': {{'max_length': n, 'truncation': True}}}} only; got "
            f"{processing_kwargs!r}."
        )
    return text.get("max_length")
