"""ConfigurableResources wrapping embedding_core: the store, the corpus landing folder, the encoder.

Each is built only from its config fields (defaults read from environment variables in
`definitions.py`), so a run can be rebuilt in another process or on another machine.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import pyarrow.fs as pafs
from dagster import ConfigurableResource
from pydantic import Field

from embedding_assets.partitions import PartitionKeyCollisionError, partition_key_for_file
from embedding_core.corpus import SUPPORTED_SUFFIXES, CorpusShard, read_corpus_file
from embedding_core.store import EmbeddingParams, EmbeddingStore, ModelSnapshot

__all__ = ["CorpusSourceResource", "EmbeddingStoreResource", "EncoderResource", "LandingFile"]


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


@dataclass(frozen=True)
class LandingFile:
    """A corpus file in the landing folder: its path relative to the folder, the partition
    key that path maps to, and a fingerprint (size and modification time) of its content."""

    partition_key: str
    relative_path: str
    fingerprint: str


class CorpusSourceResource(ConfigurableResource):
    """The landing folder whose files are the corpus shards: one partition per file.

    A partition key is the file's path relative to the folder, made safe by
    `partition_key_for_file` (``python_docs.jsonl`` stays, ``2024/My Notes.csv`` becomes
    ``2024__My_Notes.csv``); a key is mapped back to its file by scanning the folder.
    """

    landing_dir: str = Field(description="Local folder or pyarrow filesystem URI.")
    id_field: str = "id"
    text_field: str = "text"

    def _filesystem(self) -> tuple[pafs.FileSystem, str]:
        if "://" in self.landing_dir:
            filesystem, root = pafs.FileSystem.from_uri(self.landing_dir)
            return filesystem, root.rstrip("/")
        return pafs.LocalFileSystem(), os.path.abspath(self.landing_dir)

    def _files_by_key(self) -> dict[str, list[LandingFile]]:
        filesystem, root = self._filesystem()
        selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
        files: dict[str, list[LandingFile]] = {}
        for info in filesystem.get_file_info(selector):
            relative_path = info.path[len(root) + 1:]
            hidden = any(part.startswith(".") for part in relative_path.split("/"))
            if (info.type == pafs.FileType.File and not hidden
                    and relative_path.lower().endswith(SUPPORTED_SUFFIXES)):
                key = partition_key_for_file(relative_path)
                files.setdefault(key, []).append(
                    LandingFile(key, relative_path, f"{info.size}:{info.mtime_ns}"))
        return {key: sorted(same_key, key=lambda file: file.relative_path)
                for key, same_key in sorted(files.items())}

    def _collision_error(self, collisions: dict[str, list[LandingFile]]) -> PartitionKeyCollisionError:
        lines = [
            " and ".join(repr(file.relative_path) for file in files)
            + f" map to the same partition key {key!r}"
            for key, files in collisions.items()
        ]
        return PartitionKeyCollisionError(
            f"landing files in {self.landing_dir} collide: " + "; ".join(lines)
            + ". Rename one file of each group."
        )

    def landing_files(self) -> dict[str, LandingFile]:
        """Every corpus file of the landing folder by partition key, sorted by key.

        Raises `PartitionKeyCollisionError` naming the files when two names map to one key.
        """
        files = self._files_by_key()
        collisions = {key: same_key for key, same_key in files.items() if len(same_key) > 1}
        if collisions:
            raise self._collision_error(collisions)
        return {key: same_key[0] for key, same_key in files.items()}

    def list_files(self) -> dict[str, str]:
        """Partition key -> fingerprint (size and modification time) of every corpus file."""
        return {key: file.fingerprint for key, file in self.landing_files().items()}

    def landing_file(self, partition_key: str) -> LandingFile:
        """The file behind a partition key (raises when there is none, or several)."""
        same_key = self._files_by_key().get(partition_key, [])
        if not same_key:
            raise FileNotFoundError(
                f"corpus partition {partition_key!r} has no file in {self.landing_dir}"
            )
        if len(same_key) > 1:
            raise self._collision_error({partition_key: same_key})
        return same_key[0]

    def uri(self, partition_key: str) -> str:
        """Where the file behind a partition key is: a local path or a filesystem URI."""
        filesystem, root = self._filesystem()
        path = f"{root}/{self.landing_file(partition_key).relative_path}"
        return path if isinstance(filesystem, pafs.LocalFileSystem) else f"{self.landing_dir.split('://')[0]}://{path}"

    def read(self, partition_key: str) -> CorpusShard:
        """Read and normalize the file behind a partition key."""
        filesystem, root = self._filesystem()
        return read_corpus_file(f"{root}/{self.landing_file(partition_key).relative_path}",
                                filesystem=filesystem, id_field=self.id_field,
                                text_field=self.text_field)


# Loaded models, kept per process: partitions of one run (and in-process test runs)
# share one load.
_loaded_models: dict[tuple[str, str, str | None], object] = {}


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

    def resolve_snapshot(self) -> ModelSnapshot:
        """Resolve the configured model to a pinned snapshot (loads it to read its shape)."""
        from embedding_core.hub import folder_content_hash, resolve_model

        resolved = resolve_model(self.model_name, revision=self.revision,
                                 cache_folder=self.cache_folder,
                                 local_files_only=self.local_files_only)
        pinned = ModelSnapshot(
            model_key=self.model_name, model=resolved.name, revision=resolved.revision,
            source=resolved.source, path=resolved.path, dim=0, requested_revision=self.revision,
        )
        model = self.load_snapshot(pinned)
        return replace(
            pinned, dim=int(model.get_sentence_embedding_dimension()),
            max_seq_length=model.max_seq_length,
            pooling=tuple(model.pooling_modes), prompts=dict(model.prompts),
            default_prompt_name=model.default_prompt_name,
            similarity_fn=model.similarity_fn_name,
            files_hash=folder_content_hash(resolved.path),
        )

    def params(self, snapshot: ModelSnapshot) -> EmbeddingParams:
        """The parameters that, with the snapshot's revision, decide the stored vectors."""
        prompt_name = self.prompt_name or snapshot.default_prompt_name
        if prompt_name is not None and prompt_name not in snapshot.prompts:
            raise ValueError(f"prompt_name {prompt_name!r} is not among the prompts of "
                             f"{snapshot.model}: {sorted(snapshot.prompts)}")
        return EmbeddingParams(
            precision=self.precision, normalize_embeddings=self.normalize_embeddings,
            prompt_name=prompt_name,
            prompt=snapshot.prompts.get(prompt_name) if prompt_name else None,
            truncate_dim=self.truncate_dim, max_seq_length=snapshot.max_seq_length,
        )

    def load_snapshot(self, snapshot: ModelSnapshot):
        """The model of a recorded snapshot, loaded once per process and device."""
        key = (snapshot.path, snapshot.revision, self.device)
        if key not in _loaded_models:
            _loaded_models[key] = snapshot.load(device=self.device, cache_folder=self.cache_folder,
                                                local_files_only=self.local_files_only)
        return _loaded_models[key]

    @contextmanager
    def encoder(
        self, snapshot: ModelSnapshot, params: EmbeddingParams,
        log: Callable[[str], None] | None = None,
    ) -> Iterator[Callable[[list[str]], np.ndarray]]:
        """A text-list -> vectors function for the store; the model loads, and the pool starts,
        only when something is actually encoded, and the pool stops on exit. `log` hears
        about each batch of work (the asset passes `context.log.info`)."""
        state: dict[str, object] = {}

        def encode(texts: list[str]) -> np.ndarray:
            if log is not None:
                log(f"encoding {len(texts)} texts with {snapshot.model}@{snapshot.revision[:19]}")
            if "model" not in state:
                state["model"] = model = self.load_snapshot(snapshot)
                if self.target_devices:
                    state["pool"] = model.start_multi_process_pool(list(self.target_devices))
            model = state["model"]
            if params.max_seq_length is not None:
                model.max_seq_length = params.max_seq_length
            return model.encode(
                texts, batch_size=self.batch_size, precision=params.precision,
                normalize_embeddings=params.normalize_embeddings, prompt=params.prompt,
                truncate_dim=params.truncate_dim, pool=state.get("pool"), show_progress_bar=False,
            )

        try:
            yield encode
        finally:
            if "pool" in state:
                state["model"].stop_multi_process_pool(state["pool"])
