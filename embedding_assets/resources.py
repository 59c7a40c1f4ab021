"""ConfigurableResources: the store, the corpus landing folder, the encoder.

Each is configuration plus one factory method, as dagster-duckdb's `DuckDBResource` is:
it is built only from its config fields (defaults read from environment variables in
`definitions.py`), so a run can be rebuilt in another process or on another machine, and
what it hands out lives in `embedding_core`.
"""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from embedding_core.evaluation import (
    KNOWN_ITEM_QUERIES,
    QuerySet,
    load_beir,
    store_known_item_queries,
)
from embedding_core.landing import LandingFolder
from embedding_core.snapshot import EncoderConfig
from embedding_core.store import EmbeddingStore

__all__ = ["CorpusSourceResource", "EmbeddingStoreResource", "EncoderResource", "PromotionGateResource"]


class EmbeddingStoreResource(ConfigurableResource):
    """The versioned DuckLake store (`embedding_core.store.EmbeddingStore`): Parquet data files
    under `root`, the catalog in a DuckDB file or a Postgres database."""

    root: str = Field(description="Data path: a local folder or s3://bucket/prefix.")
    catalog: str | None = Field(
        default=None,
        description="DuckDB catalog file (default: under a local root), or "
        "'postgres:<libpq key=value string>' for many writers on many machines; required "
        "for an s3:// root.",
    )

    def open(self) -> EmbeddingStore:
        return EmbeddingStore(self.root, catalog=self.catalog)


class CorpusSourceResource(ConfigurableResource):
    """The landing folder whose files are the corpus shards: one partition per file
    (`embedding_core.landing`)."""

    landing_dir: str = Field(description="Local folder or pyarrow filesystem URI.")
    id_field: str = "id"
    text_field: str = "text"
    allow_outside_links: bool = Field(
        default=False, description="Follow symbolic links to files outside the landing folder "
        "(refused and reported by default).")
    on_delete: str = Field(
        default="keep", description="What a file deleted from the landing folder means: 'keep' "
        "its rows and vectors (landing folders are often cleaned after ingestion), or 'retire' "
        "them. A deleted file whose content is still in the folder under another name (a "
        "rename) is retired either way (embedding_core.landing_sync).")

    def open(self) -> LandingFolder:
        return LandingFolder(self.landing_dir, id_field=self.id_field, text_field=self.text_field,
                             allow_outside_links=self.allow_outside_links)


class EncoderResource(ConfigurableResource):
    """The embedding model and how texts are encoded with it."""

    model_name: str = Field(description="Hub id, local folder, or the bundled default's name.")
    revision: str | None = Field(
        default=None, description="Branch, tag or commit; pinned to a commit when resolved."
    )
    cache_folder: str | None = None
    local_files_only: bool = False
    device: str | None = Field(default=None, description="cpu, cuda, cuda:1; None = best available.")
    target_devices: list[str] | None = Field(
        default=None,
        description="Run the multi-process pool on these devices (['cuda:0', 'cuda:1'] or "
        "['cpu', 'cpu']); None encodes in the step's own process.",
    )
    batch_size: int = 32
    precision: str = "float32"
    normalize_embeddings: bool = False
    prompt_name: str | None = None
    truncate_dim: int | None = None
    chunk_tokens: int | None = Field(
        default=None, description="Split each text into windows of this many tokens (at most the "
        "model's max_seq_length), a row per window; None cuts texts at max_seq_length, as "
        "sentence-transformers does. Part of the embedding version.")
    chunk_overlap: int = Field(default=0, description="Tokens neighbouring windows share (fewer than "
                               "chunk_tokens).")
    backend: str = Field(
        default="auto",
        description="auto: the fastest exact backend (OpenVINO float32 on CPU when installed, "
        "PyTorch on CUDA); or torch, onnx, openvino (exact: same vectors, same version), or "
        "openvino-int8, openvino-bf16, onnx-int8, torch-fp16, torch-bf16 (lossy: their own version).",
    )

    def open(self) -> EncoderConfig:
        """The configured model and encoding (`embedding_core.snapshot.EncoderConfig`)."""
        return EncoderConfig(
            model_name=self.model_name, revision=self.revision, cache_folder=self.cache_folder,
            local_files_only=self.local_files_only, device=self.device,
            target_devices=tuple(self.target_devices) if self.target_devices else None,
            batch_size=self.batch_size, precision=self.precision,
            normalize_embeddings=self.normalize_embeddings, prompt_name=self.prompt_name,
            truncate_dim=self.truncate_dim, backend=self.backend, chunk_tokens=self.chunk_tokens,
            chunk_overlap=self.chunk_overlap,
        )


class PromotionGateResource(ConfigurableResource):
    """How a candidate version set is judged before it is promoted: the queries of the
    retrieval evaluation and how much worse than the serving version it may be
    (`embedding_core.evaluation`, `embedding_core.rollout`)."""

    tolerance: float = Field(
        default=0.01, ge=0.0, description="How much lower than the serving version's each metric "
        "(recall@10, MRR@10, nDCG@10; absolute, 0.01 = one point) may be on every query set.")
    known_item_queries: int = Field(
        default=KNOWN_ITEM_QUERIES, ge=1, description="Known-item queries made from the current corpus "
        "(a sentence of a document -> that document).")
    seed: int = Field(default=0, description="Which documents and sentences the known-item queries take.")
    beir_dir: str | None = Field(
        default=None, description="A BEIR-format folder (queries.jsonl, qrels/<split>.tsv, optional "
        "corpus.jsonl) evaluated too; its corpus ids are the store's document ids.")
    beir_split: str = Field(default="test", description="The qrels file of beir_dir: qrels/<split>.tsv.")

    def query_sets(self, store: EmbeddingStore) -> list[QuerySet]:
        """The known-item queries of `store`'s current corpus, and the BEIR set when configured
        (a malformed file fails here, naming its line)."""
        sets = [store_known_item_queries(store, self.known_item_queries, self.seed)]
        if self.beir_dir:
            sets.append(load_beir(self.beir_dir, self.beir_split))
        return sets
