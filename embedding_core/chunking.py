"""Token-window chunking of long texts: embed every part of a text instead of cutting it.

``encode`` keeps only a text's first ``max_seq_length`` tokens (see ``truncation``). Chunking
splits each text into windows of at most ``tokens`` word pieces of content, neighbouring
windows sharing about ``overlap`` tokens, each window ending at a sentence end where it can,
else between words, else (one word longer than the window) between word pieces. A chunk is
a span of its text, ``text[char_start:char_end]``, and never longer than what ``encode``
takes: its tokens, the special tokens and the prompt fit in ``max_seq_length``, counted by
the encoder's own length test (``model.token_lengths``)::

    params = ChunkingParams.from_env(os.environ, model.max_seq_length)  # None: truncate
    chunks = chunk_texts(model, texts, params)
    vectors = model.encode(chunk_strings(texts, chunks))

Texts are tokenized in batches with the model's fast tokenizer (offsets on); nothing runs the
model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from embedding_core.batching import encode_texts

if TYPE_CHECKING:
    from embedding_core.chain import ModuleChain

TOKENS_ENV = "EMBEDDING_CHUNK_TOKENS"
OVERLAP_ENV = "EMBEDDING_CHUNK_OVERLAP"

# Texts tokenized per tokenizer call: batched in Rust, bounded in memory.
_TOKENIZE_BATCH = 1024
# A sentence ends after . ! ? (and closing quotes or brackets) followed by a space or the end,
# and at the last character before a line break.
_SENTENCE_END = re.compile(r"[.!?\u2026\u3002\uff01\uff1f][\"'\u201d\u2019)\]]*(?=\s|$)|\S(?=[^\S\n]*\n)")


@dataclass(frozen=True)
class ChunkingParams:
    """Windows of ``tokens`` word pieces of content, neighbours sharing ``overlap`` of them.

    >>> ChunkingParams(tokens=128, overlap=16).as_params()
    {'chunk_tokens': 128, 'chunk_overlap': 16}
    """

    tokens: int
    overlap: int = 0

    def __post_init__(self) -> None:
        both = f"{TOKENS_ENV}={self.tokens}, {OVERLAP_ENV}={self.overlap}"
        for value in (self.tokens, self.overlap):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"chunk sizes are whole numbers of tokens: {both}")
        if self.tokens <= 0:
            raise ValueError(f"{TOKENS_ENV}={self.tokens} must be a positive number of tokens ({both})")
        if self.overlap < 0:
            raise ValueError(f"{OVERLAP_ENV}={self.overlap} must be 0 or more tokens ({both})")
        if self.overlap >= self.tokens:
            raise ValueError(f"{OVERLAP_ENV}={self.overlap} must be smaller than {TOKENS_ENV}={self.tokens}")

    def check_fits(self, max_seq_length: int | None) -> None:
        """Raise when a window is longer than the model takes (``max_seq_length`` tokens)."""
        if max_seq_length is not None and self.tokens > max_seq_length:
            raise ValueError(f"{TOKENS_ENV}={self.tokens} is larger than the model's max_seq_length "
                             f"{max_seq_length} ({OVERLAP_ENV}={self.overlap})")

    @classmethod
    def from_env(cls, environ: Mapping[str, str], max_seq_length: int | None) -> ChunkingParams | None:
        """The params ``EMBEDDING_CHUNK_TOKENS`` / ``EMBEDDING_CHUNK_OVERLAP`` (default 0) name,
        checked against the model's ``max_seq_length``; None when ``EMBEDDING_CHUNK_TOKENS``
        is unset or empty: texts are truncated, as before.

        >>> ChunkingParams.from_env({"EMBEDDING_CHUNK_TOKENS": "200", "EMBEDDING_CHUNK_OVERLAP": "20"}, 256)
        ChunkingParams(tokens=200, overlap=20)
        """
        raw_tokens = (environ.get(TOKENS_ENV) or "").strip()
        if not raw_tokens:
            return None
        raw_overlap = (environ.get(OVERLAP_ENV) or "").strip() or "0"
        both = f"{TOKENS_ENV}={raw_tokens!r}, {OVERLAP_ENV}={raw_overlap!r}"
        try:
            tokens, overlap = int(raw_tokens), int(raw_overlap)
        except ValueError:
            raise ValueError(f"chunk sizes must be whole numbers of tokens: {both}") from None
        params = cls(tokens=tokens, overlap=overlap)
        params.check_fits(max_seq_length)
        return params

    def as_params(self) -> dict[str, int]:
        """The settings that change the stored embeddings, for an embedding version's hash."""
        return {"chunk_tokens": self.tokens, "chunk_overlap": self.overlap}


@dataclass(frozen=True)
class Chunk:
    """Chunk number ``chunk`` (0-based) of text ``document``: ``text[char_start:char_end]``,
    ``tokens`` word pieces of content as encode counts them (special tokens and prompt not
    counted)."""

    document: int
    chunk: int
    char_start: int
    char_end: int
    tokens: int


def chunk_strings(texts: Sequence[str], chunks: Sequence[Chunk]) -> list[str]:
    """The text of each chunk, in the chunks' order: what to ``encode``."""
    return [texts[c.document][c.char_start:c.char_end] for c in chunks]


def sentence_end_positions(text: str) -> np.ndarray:
    """Character positions where a sentence of ``text`` ends (sorted): after ``.``, ``!``, ``?``
    (and closing quotes or brackets) followed by a space, before a line break, and at the end.

    >>> sentence_end_positions("Hi there. Version 3.12 is out\\nok").tolist()
    [9, 29, 32]
    """
    positions = {match.end() for match in _SENTENCE_END.finditer(text)}
    positions.add(len(text.rstrip()))
    return np.array(sorted(positions), dtype=np.int64)


def content_budget(model: ModuleChain, params: ChunkingParams, prompt: str | None = None) -> int:
    """Word pieces of content a chunk may hold: ``params.tokens``, less what the special tokens
    and ``prompt`` take when the window would not otherwise fit in ``max_seq_length``."""
    params.check_fits(model.max_seq_length)
    if model.max_seq_length is None:
        return params.tokens
    added = _added_tokens(model, prompt)
    budget = min(params.tokens, model.max_seq_length - added)
    if budget <= params.overlap:
        raise ValueError(f"{OVERLAP_ENV}={params.overlap} leaves no room: a chunk holds {budget} tokens of "
                         f"content ({TOKENS_ENV}={params.tokens}, max_seq_length {model.max_seq_length}, "
                         f"{added} special and prompt tokens)")
    return budget


def _added_tokens(model: ModuleChain, prompt: str | None) -> int:
    """Tokens encode adds around every text: an empty text is only special tokens and prompt."""
    return int(model.token_lengths([""], prompt)[0])


def chunk_texts(model: ModuleChain, texts: Sequence[str], params: ChunkingParams,
                prompt: str | None = None) -> list[Chunk]:
    """Split every text into chunks that ``model.encode(..., prompt=prompt)`` takes whole.

    ``model`` is a ``SentenceTransformer`` with a fast tokenizer; ``prompt`` is the one encode
    will prepend (``model.resolve_prompt(...)``). Chunks come back in text order, then chunk
    order; a text of at most the window's tokens is one chunk spanning the whole text. A text
    that is empty or only whitespace is refused, as the corpus reader refuses it.
    """
    texts, _ = encode_texts(texts)
    for index, text in enumerate(texts):
        if not text.strip():
            raise ValueError(f"chunk_texts() takes non-empty texts; item {index} is empty_text "
                             f"(empty or only whitespace): {text!r:.80}")
    if not getattr(model.tokenizer, "is_fast", False):
        raise TypeError("chunk_texts() needs a fast tokenizer (character offsets of every token)")
    budget = content_budget(model, params, prompt)
    added = _added_tokens(model, prompt)
    spans = [_split(text, offsets, budget, params.overlap) for text, offsets in zip(texts, _offsets(model, texts))]
    content_tokens: list[list[int]] = [[] for _ in texts]
    windows = [budget] * len(texts)
    pending = list(range(len(texts)))
    # A span's word pieces can tokenize to a few more on their own (a word cut in two, a prompt
    # that merges): the encoder's own length test counts them, and a text with a chunk over
    # the budget is split again with a window smaller by the excess.
    while pending:
        owners = [document for document in pending for _ in spans[document]]
        strings = [texts[document][start:end] for document in pending for start, end in spans[document]]
        counted = (model.token_lengths(strings, prompt) - added).tolist()
        for document, tokens in zip(owners, counted):
            content_tokens[document].append(tokens)
        split_again = []
        for document in pending:
            excess = max(content_tokens[document]) - budget
            if excess > 0:
                windows[document] -= excess
                if windows[document] <= 0:
                    raise ValueError(f"text {document} does not split into chunks of {budget} tokens")
                spans[document] = _split(texts[document], _offsets(model, [texts[document]])[0],
                                         windows[document], min(params.overlap, windows[document] - 1))
                content_tokens[document] = []
                split_again.append(document)
        pending = split_again
    return [Chunk(document, number, start, end, tokens)
            for document, (document_spans, document_tokens) in enumerate(zip(spans, content_tokens))
            for number, ((start, end), tokens) in enumerate(zip(document_spans, document_tokens))]


def _offsets(model: ModuleChain, texts: Sequence[str]) -> list[np.ndarray]:
    """``[tokens, 2]`` character spans of each text's word pieces, no special tokens.

    The text is tokenized as written: a model that lower-cases (``do_lower_case``) lower-cases
    before its tokenizer, which can change where characters are; the length test runs as
    encode does."""
    result = []
    for start in range(0, len(texts), _TOKENIZE_BATCH):
        encoded: Any = model.tokenizer(list(texts[start:start + _TOKENIZE_BATCH]), add_special_tokens=False,
                                       return_offsets_mapping=True, return_attention_mask=False,
                                       return_token_type_ids=False, verbose=False)
        result += [np.asarray(row, dtype=np.int64).reshape(-1, 2) for row in encoded["offset_mapping"]]
    return result


def _split(text: str, offsets: np.ndarray, budget: int, overlap: int) -> list[tuple[int, int]]:
    """``(char_start, char_end)`` of each chunk of one text (see :func:`chunk_texts`)."""
    count = len(offsets)
    if count <= budget:
        return [(0, len(text))]
    starts, ends = offsets[:, 0], offsets[:, 1]
    # Token i ends a word when a space (dropped by the tokenizer) follows it.
    word_end = np.append(starts[1:] > ends[:-1], True)
    sentence_end = np.zeros(count, dtype=bool)
    positions = sentence_end_positions(text)
    at = np.clip(np.searchsorted(ends, positions), 0, count - 1)
    sentence_end[at[ends[at] == positions]] = True
    sentence_end &= word_end
    # A chunk ends no earlier than half a window in, and past the overlap, so each one adds text.
    shortest = max(budget // 2, overlap + 1)
    spans = []
    first = 0
    while first + budget < count:
        earliest, last = first + shortest - 1, first + budget - 1
        for marks in (sentence_end, word_end):
            found = np.flatnonzero(marks[earliest:last + 1])
            if len(found):
                last = earliest + int(found[-1])
                break
        spans.append((0 if first == 0 else int(starts[first]), int(ends[last])))
        first = _next_start(word_end, first, last, overlap)
    spans.append((0 if first == 0 else int(starts[first]), len(text)))
    return spans


def _next_start(word_end: np.ndarray, first: int, last: int, overlap: int) -> int:
    """The next chunk's first token: the start of a word nearest ``overlap`` tokens before the
    chunk's end, after ``first``; a token inside a word when no word starts there."""
    target = last + 1 - overlap
    if overlap == 0:
        return target
    candidates = np.arange(first + 1, last + 2)
    word_starts = candidates[word_end[candidates - 1]]
    if not len(word_starts):
        return max(target, first + 1)
    return int(word_starts[np.argmin(np.abs(word_starts - target))])
