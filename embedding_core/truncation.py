"""What ``encode`` cuts: texts longer than the model's ``max_seq_length`` and the share of
their tokens that never reach the model.

``encode`` keeps sentence-transformers' behaviour: a text longer than ``max_seq_length``
tokens is truncated to its first ``max_seq_length`` tokens, silently. This counts what
that drops, with the model's own tokenizer and the same length test (prompt prepended,
lower-cased when the model does, special tokens included), tokenizing in batches with no
truncation and no padding::

    report = truncation_report(model, texts)
    print(f"{report.truncated_texts} of {report.texts} texts are longer than "
          f"{report.max_seq_length} tokens; {report.dropped_token_share:.1%} of tokens dropped")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from embedding_core.chain import ModuleChain


@dataclass(frozen=True)
class TruncationReport:
    """How many of ``texts`` are longer than ``max_seq_length`` tokens (``truncated_texts``),
    and how many of their ``tokens`` in all are cut off (``dropped_tokens``)."""

    max_seq_length: int | None
    texts: int
    truncated_texts: int
    tokens: int
    dropped_tokens: int

    @classmethod
    def of_lengths(cls, lengths: Sequence[int] | np.ndarray, max_seq_length: int | None) -> TruncationReport:
        """The report of texts of these untruncated token lengths; no limit cuts nothing.

        >>> TruncationReport.of_lengths([256, 257, 300], 256).dropped_tokens
        45
        """
        lengths = np.asarray(lengths, dtype=np.int64)
        dropped = np.zeros_like(lengths) if max_seq_length is None else np.maximum(lengths - max_seq_length, 0)
        return cls(max_seq_length=max_seq_length, texts=len(lengths), truncated_texts=int((dropped > 0).sum()),
                   tokens=int(lengths.sum()), dropped_tokens=int(dropped.sum()))

    @property
    def truncated_share(self) -> float:
        """The share of texts that are cut (0 for no texts)."""
        return self.truncated_texts / self.texts if self.texts else 0.0

    @property
    def dropped_token_share(self) -> float:
        """The share of all tokens that never reach the model (0 for no tokens)."""
        return self.dropped_tokens / self.tokens if self.tokens else 0.0


def truncation_report(model: ModuleChain, texts: Sequence[str], prompt: str | None = None) -> TruncationReport:
    """What ``model.encode(texts, prompt=prompt)`` cuts at the model's current ``max_seq_length``.

    ``model`` is a ``SentenceTransformer``; the texts are tokenized (not encoded), which
    costs a small fraction of encoding them.
    """
    return TruncationReport.of_lengths(model.token_lengths(texts, prompt), model.max_seq_length)
