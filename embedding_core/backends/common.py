"""What the CPU runtimes share: the build cache, its keys, and the check against PyTorch."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

CACHE_ENV = "EMBEDDING_CORE_CACHE"


class BackendError(RuntimeError):
    """A runtime could not take over the encoder (missing package, failed build or check)."""


class Runtime(Protocol):
    """What stands in for the Transformer's PyTorch encoder on CPU: token ids and attention
    mask in, last hidden state (a float32 CPU tensor the caller owns) out."""

    path: str

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...

    def imap(self, items: Iterable[tuple[Any, torch.Tensor, torch.Tensor]]) -> Iterator[tuple[Any, torch.Tensor]]:
        """``(context, input_ids, attention_mask)`` -> ``(context, last hidden state)``, in order;
        a runtime may keep several batches in flight."""
        ...


class OneBatchAtATime:
    """``imap`` for a runtime that runs one batch at a time."""

    def imap(self, items: Iterable[tuple[Any, torch.Tensor, torch.Tensor]]) -> Iterator[tuple[Any, torch.Tensor]]:
        for context, input_ids, attention_mask in items:
            yield context, self(input_ids, attention_mask)


def cache_root() -> Path:
    """Where built graphs are kept: ``EMBEDDING_CORE_CACHE``, else ``~/.cache/embedding_core``."""
    root = os.environ.get(CACHE_ENV)
    return Path(root) if root else Path.home() / ".cache" / "embedding_core"


class EncoderOutput(nn.Module):
    """The Hugging Face model as a function of (input_ids, attention_mask) -> last hidden state."""

    def __init__(self, auto_model: nn.Module) -> None:
        super().__init__()
        self.auto_model = auto_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.auto_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def int64_feeds(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, np.ndarray]:
    """The encoder's inputs as the contiguous int64 numpy arrays both runtimes take."""
    return {
        "input_ids": np.ascontiguousarray(input_ids.detach().cpu().numpy(), dtype=np.int64),
        "attention_mask": np.ascontiguousarray(attention_mask.detach().cpu().numpy(), dtype=np.int64),
    }


def _digest(config: Any, toolchain: str, parts: Iterable[bytes] = ()) -> str:
    """Hash of a model config, the torch/transformers versions, ``toolchain`` and ``parts``."""
    import transformers

    digest = hashlib.sha256()
    digest.update(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    digest.update(f"{torch.__version__}|{transformers.__version__}|{toolchain}".encode())
    for part in parts:
        digest.update(part)
    return digest.hexdigest()[:16]


def _label(revision: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", revision)[:48]


def model_key(auto_model: nn.Module, revision: str | None, toolchain: str) -> str:
    """Folder name for a model's built graphs: readable revision prefix + hash of weights and tools.

    ``toolchain`` names the versions and build recipe of the runtime, so that a new
    exporter, runtime or recipe builds a new file and never reuses a stale one.
    """

    def weights() -> Iterator[bytes]:
        for name, tensor in auto_model.state_dict().items():
            yield name.encode()
            yield tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()

    return f"{_label(revision or 'weights')}-{_digest(auto_model.config, toolchain, weights())}"


def source_key(config: Any, model_kwargs: dict[str, Any] | None, revision: str, toolchain: str) -> str:
    """Folder name for the graphs of a model loaded from an immutable ``revision`` (a hub
    commit sha, or ``sha256:`` of a local or bundled folder's files), without its weights.

    Used before the PyTorch model is loaded: the revision stands for the weight files, and
    the config and the ``model_kwargs`` of the load (a dtype, say) for what was made of them.
    """
    kwargs = json.dumps(model_kwargs or {}, sort_keys=True, default=str)
    return f"{_label(revision)}-src-{_digest(config, toolchain, [kwargs.encode(), revision.encode()])}"


def probe_batch(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed, padded batch (3 rows of 40, 23 and 7 tokens) a built graph is checked on."""
    generator = torch.Generator().manual_seed(0)
    lengths = [40, 23, 7]
    input_ids = torch.randint(
        5, max(6, min(vocab_size, 5000)), (len(lengths), max(lengths)), generator=generator
    )
    attention_mask = torch.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        attention_mask[row, :length] = 1
    return input_ids, attention_mask


def probe_expected(auto_model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The probe batch and PyTorch's last hidden state for it."""
    input_ids, attention_mask = probe_batch(int(getattr(auto_model.config, "vocab_size", 1000)))
    with torch.no_grad():
        expected = auto_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return input_ids, attention_mask, expected


def probe_agreement(encoder, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    expected: torch.Tensor) -> float:
    """Mean cosine of ``encoder``'s token embeddings against ``expected`` on the probe batch.

    Non-finite outputs give ``nan``, which fails every threshold.
    """
    actual = encoder(input_ids, attention_mask)
    real = attention_mask.bool()
    cosine = torch.nn.functional.cosine_similarity(
        actual[real].double(), expected[real].double(), dim=-1
    )
    if not bool(torch.isfinite(cosine).all()):
        return float("nan")
    return float(cosine.mean())


def probe_cosine(encoder, auto_model: nn.Module) -> float:
    """Mean cosine of ``encoder``'s token embeddings against PyTorch's on a padded probe batch."""
    return probe_agreement(encoder, *probe_expected(auto_model))


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers without its weight-loading progress bar and info/warning chatter (restored after)."""
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
