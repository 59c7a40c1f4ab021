"""What the store records: frozen dataclasses for models, corpus and embedding versions, and
the pure helpers that name and size them. No I/O here."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime

import numpy as np
import pyarrow as pa

# The public records, re-exported by `embedding_core.store`; CORPUS_SCHEMA, sha256_json and
# stored_dtype are for the store's own modules.
__all__ = [
    "CorpusVersion",
    "EmbeddingParams",
    "EmbeddingVersion",
    "EmbeddingWriteResult",
    "IndexBuild",
    "IndexRecord",
    "LakeSnapshot",
    "LandingRecord",
    "MaintenanceReport",
    "ModelSnapshot",
    "Promotion",
    "SearchHit",
    "StoredRows",
    "VersionSet",
    "corpus_table",
    "text_sha256",
    "vector_width",
    "version_key",
]

CORPUS_SCHEMA = pa.schema(
    [("id", pa.string()), ("text", pa.string()), ("text_sha256", pa.string())]
)
# precision -> (stored NumPy dtype name, values per vector given the embedding dimension)
_PRECISIONS: dict[str, tuple[str, Callable[[int], int]]] = {
    "float32": ("float32", lambda dim: dim),
    # Packed sign bits, the last byte zero-padded when dim is not a multiple of 8.
    "binary": ("int8", lambda dim: math.ceil(dim / 8)),
    "ubinary": ("uint8", lambda dim: math.ceil(dim / 8)),
}


def text_sha256(text: str) -> str:
    """Hex SHA-256 of a text's UTF-8 bytes: the key under which its vector is reused."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def corpus_table(ids: Sequence[str], texts: Sequence[str]) -> pa.Table:
    """A normalized corpus table (`id`, `text`, `text_sha256`) from parallel id and text lists."""
    if len(ids) != len(texts):
        raise ValueError(f"corpus_table got {len(ids)} ids but {len(texts)} texts")
    return pa.table(
        [pa.array(ids, pa.string()), pa.array(texts, pa.string()),
         pa.array([text_sha256(t) for t in texts], pa.string())],
        schema=CORPUS_SCHEMA,
    )


def vector_width(precision: str, dim: int) -> int:
    """Values per stored vector: `dim` floats for float32, ``ceil(dim / 8)`` bytes of packed
    bits for binary and ubinary."""
    if precision not in _PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {sorted(_PRECISIONS)}")
    return _PRECISIONS[precision][1](dim)


def stored_dtype(precision: str) -> str:
    """The NumPy dtype name a precision is stored as: float32, int8 or uint8."""
    return _PRECISIONS[precision][0]


def version_key(revision: str, params_hash: str) -> str:
    """The short key of a version set, what users type (``embedding-store promote KEY``): the
    first 8 characters of the model revision (after a ``sha256:`` prefix, which local
    folders' content revisions carry) and the first 8 of the params hash, joined by ``-``,
    e.g. ``1f0c5bb2-3e9d6a41``. Stable: the same revision and parameters always give it."""
    return f"{revision.removeprefix('sha256:')[:8]}-{params_hash[:8]}"


def sha256_json(value: object) -> str:
    """Hex SHA-256 of a JSON value with sorted keys: a stable content hash."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class EmbeddingParams:
    """Everything besides the model revision that changes the vectors written for a text.

    `prompt` is the prompt text itself (resolved from `prompt_name`), so a changed prompt
    makes a new version even under the same name. `backend` names a lossy encoder backend
    (`openvino-int8`, `torch-fp16`, ...: `backends.LOSSY_BACKENDS`); exact backends leave it
    None, so their vectors (row cosine >= 0.99999 to PyTorch float32) share one version, and
    the hash and JSON of parameters without a backend are what they were before it existed.
    `chunk_tokens` / `chunk_overlap` (both or neither) store one row per token window of
    each text; unset, as before, a text is one row cut at `max_seq_length`.
    """

    precision: str = "float32"
    normalize_embeddings: bool = False
    prompt_name: str | None = None
    prompt: str | None = None
    truncate_dim: int | None = None
    max_seq_length: int | None = None
    backend: str | None = None
    chunk_tokens: int | None = None
    chunk_overlap: int | None = None

    def __post_init__(self) -> None:
        if (self.chunk_tokens is None) != (self.chunk_overlap is None):
            raise ValueError(f"chunk_tokens={self.chunk_tokens} and chunk_overlap={self.chunk_overlap}: "
                             "set both (chunking) or neither (truncation)")
        if self.backend is not None and (not isinstance(self.backend, str) or not self.backend):
            raise ValueError(f"backend {self.backend!r} must be a backend name or None (exact)")
        if self.precision not in _PRECISIONS:
            raise ValueError(
                f"precision {self.precision!r} is not storable; choose one of "
                f"{sorted(_PRECISIONS)} (int8/uint8 calibrate per call, so vectors from "
                "different shards would not be comparable)"
            )

    def _fields(self) -> dict:
        fields = asdict(self)
        # Exact backend, no chunking: the same hash as before either was recorded.
        for name in ("backend", "chunk_tokens", "chunk_overlap"):
            if fields[name] is None:
                del fields[name]
        return fields

    @property
    def chunked(self) -> bool:
        """Whether texts are split into token windows (`embedding_core.chunking`), one row
        per window, instead of being cut at `max_seq_length`."""
        return self.chunk_tokens is not None

    @property
    def params_hash(self) -> str:
        return sha256_json(self._fields())[:16]

    def to_json(self) -> str:
        return json.dumps(self._fields(), sort_keys=True)


@dataclass(frozen=True)
class ModelSnapshot:
    """An immutable, pinned model: what `model_snapshot` records and `embeddings` loads.

    `model_key` is the model name as configured (what a pipeline looks its snapshot up
    by); `model` is the canonical name and `revision` the immutable revision.
    """

    model_key: str
    model: str
    revision: str
    source: str
    path: str
    dim: int
    max_seq_length: int | None = None
    requested_revision: str | None = None
    pooling: tuple[str, ...] = ()
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    similarity_fn: str = "cosine"
    files_hash: str | None = None


@dataclass(frozen=True)
class LandingRecord:
    """The latest record of one landing file (`EmbeddingStore.landing_records`): its path,
    fingerprint (size and modification time) and content version when last ingested, and
    its state (``stored``, ``deleted``: gone from the folder, rows kept, or ``retired``).
    `snapshot_id` is the lake snapshot that recorded it."""

    partition: str
    relative_path: str
    fingerprint: str | None
    corpus_version: str | None
    state: str
    detail: str | None
    run_id: str | None
    snapshot_id: int


@dataclass(frozen=True)
class CorpusVersion:
    """One stored, normalized corpus shard.

    `snapshot_id` is the lake snapshot that first committed it; `write_id` keys its rows.
    """

    partition: str
    corpus_version: str
    rows: int
    rejected_rows: int
    bytes: int
    source_uri: str | None
    run_id: str | None
    write_id: str
    snapshot_id: int
    created_at: datetime


@dataclass(frozen=True)
class EmbeddingVersion:
    """One stored, immutable set of vectors: a partition's corpus version embedded with one
    model revision and parameter set.

    `bytes` is the in-memory size of its rows; `snapshot_id` is the lake snapshot that
    first committed it (open the store as of then with ``store.connect(snapshot=...)``).
    """

    version_id: str
    partition: str
    model: str
    revision: str
    params_hash: str
    params: dict
    corpus_version: str
    rows: int
    reused_rows: int
    dim: int
    dtype: str
    bytes: int
    run_id: str | None
    write_id: str
    snapshot_id: int
    created_at: datetime

    @property
    def chunked(self) -> bool:
        """Whether its rows are chunks (`EmbeddingParams.chunked`): a row per token window."""
        return self.params.get("chunk_tokens") is not None


@dataclass(frozen=True)
class EmbeddingWriteResult:
    """What `write_embeddings` did: the version, and whether it was new or already stored.

    With ``read_back=True``, a version this call stored comes with `stored`: its rows as the
    lake holds them after the commit (`StoredRows`), read in the commit's own connection."""

    version: EmbeddingVersion
    created: bool
    encoded_rows: int
    reused_rows: int
    encode_seconds: float
    stored: StoredRows | None = None


@dataclass(frozen=True)
class StoredRows:
    """A stored version read back: its `ids` and `vectors` in row order, and the ids of the
    corpus version it embeds, for checking one against the other. A chunked version has a
    row per chunk: its ids repeat, one after another, and `chunks` numbers them."""

    ids: list[str]
    text_sha256: list[str]
    vectors: np.ndarray
    corpus_ids: list[str]
    chunks: list[int] | None = None


@dataclass(frozen=True)
class SearchHit:
    """A found row: its document's `id` and `partition`, and the `text` that was embedded,
    the whole document's or (chunked) its chunk's, ``document[char_start:char_end]``."""

    score: float
    id: str
    partition: str
    text: str | None
    chunk: int = 0
    char_start: int | None = None
    char_end: int | None = None


@dataclass(frozen=True)
class LakeSnapshot:
    """One commit of the lake: what `store.connect(snapshot=snapshot_id)` opens."""

    snapshot_id: int
    time: datetime
    author: str | None
    message: str | None


@dataclass(frozen=True)
class MaintenanceReport:
    """What `EmbeddingStore.maintain` removed."""

    expired_embedding_versions: list[str]
    expired_corpus_versions: list[str]
    expired_snapshots: int
    deleted_files: int
    deleted_index_files: int = 0  # vector index files superseded before the cutoff


@dataclass(frozen=True)
class IndexRecord:
    """One stored index: its files (root-relative), what it covers and how it was built."""

    index_id: str
    model: str
    revision: str
    params_hash: str
    dim: int
    metric: str  # the similarity function: "cosine" or "dot"
    dtype: str
    lake_snapshot: int
    versions: tuple[str, ...]
    rows: int
    path: str
    rows_path: str
    bytes: int
    mode: str  # "full" or "update"
    build_seconds: float
    run_id: str | None
    created_at: datetime


@dataclass(frozen=True)
class IndexBuild:
    """What `build_index` did: the index now current, and the rows it added and removed
    (0 and 0, `unchanged`, when the current one already covered every current version)."""

    record: IndexRecord
    added_rows: int
    removed_rows: int
    unchanged: bool


@dataclass(frozen=True)
class VersionSet:
    """All vectors of one encoder configuration of a model: (model, revision, params hash),
    over every partition it was written for (`EmbeddingStore.version_sets`).

    Each model name has one *serving* version set, the one the `embeddings` and
    `document_embeddings` views, search and the vector index serve; every other one is a
    candidate (or one that served before). `key` is what users type (`version_key`).
    `partitions_covered` / `partitions_total`: current corpus partitions whose current
    corpus version it holds vectors of (an empty partition counts as covered), of all of
    them; `complete` when it covers every one. `previous`: it served before the serving
    one, so `rollback` restores it. `rows`: its rows over the partitions it covers.
    `snapshot_id` / `created_at`: when it was first stored.
    """

    key: str
    model: str
    revision: str
    params_hash: str
    params: dict
    dtype: str
    dim: int
    partitions_covered: int
    partitions_total: int
    complete: bool
    serving: bool
    previous: bool
    rows: int
    snapshot_id: int
    created_at: datetime

    @property
    def embedding_params(self) -> EmbeddingParams:
        """Its parameters as an `EmbeddingParams` (what a query is encoded with)."""
        return EmbeddingParams(**self.params)

    @property
    def chunked(self) -> bool:
        """Whether its rows are chunks (`EmbeddingParams.chunked`)."""
        return self.params.get("chunk_tokens") is not None


@dataclass(frozen=True)
class Promotion:
    """One record of the append-only promotion history of a model (`EmbeddingStore.promotions`):
    at `time` (committed by lake snapshot `snapshot_id`), version set `to_key` became the
    serving one of `model`, replacing `from_key` (None when nothing served it before, as for
    the version a store made by older code served). `metrics`: what the caller measured
    (e.g. recall@10 of candidate and serving); `reason`: why; `forced`: promoted although
    incomplete. A rollback is a promotion too, back to the previous version."""

    time: datetime
    run_id: str | None
    model: str
    from_key: str | None
    to_key: str
    metrics: dict
    reason: str
    forced: bool
    snapshot_id: int
