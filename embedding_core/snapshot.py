"""Pinned models: resolve a configured model to an immutable snapshot, load it (a small,
bounded cache per process), and encode with it in a session that owns the pool.

    >>> encoder = EncoderConfig("sentence-transformers/all-MiniLM-L6-v2")
    >>> snapshot = encoder.resolve()                  # pinned revision, dim, pooling, prompts
    >>> with encoder.session(snapshot, encoder.params(snapshot)) as session:
    ...     vectors = session.encode(["first text", "second text"])
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from embedding_core.backends import LOSSY_BACKENDS, resolve_backend
from embedding_core.chunking import Chunk, ChunkingParams, chunk_texts
from embedding_core.hub import folder_content_hash, resolve_model
from embedding_core.memory import map_large_blocks, release_free_heap
from embedding_core.model import SentenceTransformer
from embedding_core.store import EmbeddingParams, EmbeddingStore, ModelSnapshot
from embedding_core.truncation import TruncationReport, truncation_report

# Loaded models kept per process: the partitions of one run (and in-process test runs) share
# one load, and a long-lived process that meets many models keeps only the latest few.
MAX_LOADED_MODELS = 2
_loaded: OrderedDict[tuple[str, str, str | None, str], SentenceTransformer] = OrderedDict()


class SnapshotNotCurrentError(RuntimeError):
    """The store has no current snapshot of the configured model (and revision)."""


def require_current_snapshot(
    store: EmbeddingStore, model_key: str, revision: str | None = None, match_revision: bool = True
) -> ModelSnapshot:
    """The store's current snapshot of ``model_key``; with ``match_revision``, it must also
    have been resolved from ``revision``. Raises :class:`SnapshotNotCurrentError` saying
    what to materialize."""
    snapshot = store.current_model_snapshot(model_key)
    if snapshot is None:
        raise SnapshotNotCurrentError(f"no model snapshot of {model_key!r} in {store.catalog_label}; "
                                      "materialize model_snapshot first")
    if match_revision and (snapshot.requested_revision or None) != revision:
        raise SnapshotNotCurrentError(
            f"the current model_snapshot of {model_key!r} was resolved from revision "
            f"{snapshot.requested_revision!r}, but {revision!r} is configured; "
            "materialize model_snapshot first"
        )
    return snapshot


def load_snapshot_model(snapshot: ModelSnapshot, device: str | None = None, cache_folder: str | None = None,
                        local_files_only: bool = False, backend: str = "torch") -> SentenceTransformer:
    """The model of a snapshot: from its folder when this machine has it, else re-resolved at
    the same pinned revision (raises if that gives another). Not cached.

    ``backend`` is one of ``backends.PIPELINE_BACKENDS`` ("auto" resolved for ``device``);
    a lossy one that cannot run here raises instead of quietly encoding with another."""
    backend = resolve_backend(backend, device)
    path = snapshot.path
    if not os.path.isdir(path):
        resolved = resolve_model(snapshot.model, revision=snapshot.revision if snapshot.source == "hub" else None,
                                 cache_folder=cache_folder, local_files_only=local_files_only)
        if resolved.revision != snapshot.revision:
            raise RuntimeError(f"model snapshot {snapshot.model}@{snapshot.revision} is not available "
                               f"here (found {resolved.revision}); re-materialize model_snapshot")
        path = resolved.path
    half = {"torch-fp16": torch.float16, "torch-bf16": torch.bfloat16}.get(backend)
    model = SentenceTransformer(path, device=device, backend="torch" if half else backend)
    if half is not None:
        if model.device.type == "cpu":
            raise ValueError(f"backend {backend!r} runs on a GPU only; the model is on {model.device}")
        model.to(half)
    elif backend in LOSSY_BACKENDS and model.backend != backend:
        raise RuntimeError(f"backend {backend!r} could not run here (see the warning above); "
                           f"refusing to write its version with vectors from {model.backend!r}")
    return model


def configured_prompts(model: SentenceTransformer) -> dict[str, str]:
    """The prompts the model's folder configures: the empty ``query``/``document`` prompts every
    model has (as in sentence-transformers) change no vector, so a snapshot leaves them out and
    records the same prompts as before they existed."""
    return {name: prompt for name, prompt in model.prompts.items() if prompt}


@dataclass(frozen=True)
class EncoderConfig:
    """A configured model and how texts are encoded with it (what ``EncoderResource`` holds)."""

    model_name: str
    revision: str | None = None
    cache_folder: str | None = None
    local_files_only: bool = False
    device: str | None = None
    target_devices: tuple[str, ...] | None = None
    batch_size: int = 32
    precision: str = "float32"
    normalize_embeddings: bool = False
    prompt_name: str | None = None
    truncate_dim: int | None = None
    backend: str = "auto"
    chunk_tokens: int | None = None
    chunk_overlap: int = 0

    def __post_init__(self) -> None:
        resolve_backend(self.backend, "cpu")  # an unknown name fails here, naming the known ones
        _ = self.chunking  # an overlap not smaller than the window fails here, naming both

    @property
    def chunking(self) -> ChunkingParams | None:
        """The token windows texts are split into; None: cut at ``max_seq_length``, as encode does."""
        return None if self.chunk_tokens is None else ChunkingParams(self.chunk_tokens, self.chunk_overlap)

    @property
    def resolved_backend(self) -> str:
        """The backend in use: ``backend`` with ``"auto"`` resolved for ``device``."""
        return resolve_backend(self.backend, self.device)

    def resolve(self) -> ModelSnapshot:
        """Resolve the configured model to a pinned snapshot (loads it to read its shape)."""
        resolved = resolve_model(self.model_name, revision=self.revision, cache_folder=self.cache_folder,
                                 local_files_only=self.local_files_only)
        pinned = ModelSnapshot(
            model_key=self.model_name, model=resolved.name, revision=resolved.revision,
            source=resolved.source, path=resolved.path, dim=0, requested_revision=self.revision,
        )
        model = self.load(pinned)
        return replace(
            pinned, dim=int(model.get_sentence_embedding_dimension()),
            max_seq_length=model.max_seq_length,
            pooling=tuple(model.pooling_modes), prompts=configured_prompts(model),
            default_prompt_name=model.default_prompt_name,
            similarity_fn=model.similarity_fn_name,
            files_hash=folder_content_hash(resolved.path),
        )

    def params(self, snapshot: ModelSnapshot) -> EmbeddingParams:
        """The parameters that, with the snapshot's revision, decide the stored vectors; raises
        when a chunk window is longer than the snapshot's ``max_seq_length``."""
        chunking = self.chunking
        if chunking is not None:
            chunking.check_fits(snapshot.max_seq_length)
        prompt_name = self.prompt_name or snapshot.default_prompt_name
        if prompt_name is not None and prompt_name not in snapshot.prompts:
            raise ValueError(f"prompt_name {prompt_name!r} is not among the prompts of "
                             f"{snapshot.model}: {sorted(snapshot.prompts)}")
        return EmbeddingParams(
            precision=self.precision, normalize_embeddings=self.normalize_embeddings,
            prompt_name=prompt_name,
            prompt=snapshot.prompts.get(prompt_name) if prompt_name else None,
            truncate_dim=self.truncate_dim, max_seq_length=snapshot.max_seq_length,
            backend=backend if (backend := self.resolved_backend) in LOSSY_BACKENDS else None,
            **(chunking.as_params() if chunking is not None else {}),
        )

    def load(self, snapshot: ModelSnapshot) -> SentenceTransformer:
        """The model of a snapshot on the configured device, loaded once per process (the
        ``MAX_LOADED_MODELS`` most recently used stay loaded)."""
        backend = self.resolved_backend
        key = (snapshot.path, snapshot.revision, self.device, backend)
        if key not in _loaded:
            _loaded[key] = load_snapshot_model(snapshot, self.device, self.cache_folder, self.local_files_only,
                                               backend)
            while len(_loaded) > MAX_LOADED_MODELS:
                _loaded.popitem(last=False)
        _loaded.move_to_end(key)
        return _loaded[key]

    def session(self, snapshot: ModelSnapshot, params: EmbeddingParams,
                log: Callable[[str], None] | None = None) -> EncodingSession:
        """An :class:`EncodingSession` of this snapshot and parameters; use it in a ``with``."""
        return EncodingSession(self, snapshot, params, log)


class EncodingSession:
    """Texts -> vectors for the store, with one snapshot and one parameter set.

    The model loads when something is encoded or its truncation counted, and the pool
    starts (with ``target_devices``) only when something is actually encoded; ``close()`` (or leaving the ``with`` block) stops the pool. ``log``
    hears about each batch of work (an asset passes ``context.log.info``).
    """

    def __init__(self, config: EncoderConfig, snapshot: ModelSnapshot, params: EmbeddingParams,
                 log: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.snapshot = snapshot
        self.params = params
        self.log = log
        self.model: SentenceTransformer | None = None
        self.pool: Any = None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self.log is not None:
            self.log(f"encoding {len(texts)} texts with {self.snapshot.model}@{self.snapshot.revision[:19]}")
        map_large_blocks()  # per-batch buffers outside the heap (`embedding_core.memory`)
        model = self._model()
        if self.config.target_devices and self.pool is None:
            self.pool = model.start_multi_process_pool(list(self.config.target_devices))
        vectors = model.encode(
            list(texts), batch_size=self.config.batch_size, precision=self.params.precision,
            normalize_embeddings=self.params.normalize_embeddings, prompt=self.params.prompt,
            truncate_dim=self.params.truncate_dim, pool=self.pool, show_progress_bar=False,
        )
        # The call's tokens, padded batches and hidden states are freed now: hand their pages
        # back before the caller writes the vectors (`embedding_core.memory`).
        release_free_heap()
        return vectors

    def chunk(self, texts: Sequence[str]) -> list[Chunk]:
        """The chunks the parameters' token windows split ``texts`` into (the store's chunker:
        ``write_embeddings(..., chunker=session.chunk)``); tokenized, not encoded."""
        if not self.params.chunked:
            raise ValueError("these embedding params do not chunk (chunk_tokens is not set)")
        params = ChunkingParams(self.params.chunk_tokens, self.params.chunk_overlap)
        return chunk_texts(self._model(), texts, params, self.params.prompt) if texts else []

    def truncation(self, texts: Sequence[str]) -> TruncationReport:
        """What ``encode`` cuts of ``texts``: how many are longer than ``max_seq_length``
        tokens and the share of tokens dropped (they are tokenized, not encoded)."""
        if not texts:  # nothing to tokenize: the model is not loaded for it
            return TruncationReport.of_lengths([], self.params.max_seq_length)
        return truncation_report(self._model(), texts, self.params.prompt)

    def _model(self) -> SentenceTransformer:
        """The snapshot's model (loaded on first use), with the parameters' ``max_seq_length``."""
        if self.model is None:
            self.model = self.config.load(self.snapshot)
        if self.params.max_seq_length is not None:
            self.model.max_seq_length = self.params.max_seq_length
        return self.model

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def __enter__(self) -> EncodingSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
