"""Where vector index files live: under ``<root>/indexes/`` of a local or S3 store, beside
the lake (never under ``lake/``, whose unreferenced files maintenance deletes)."""

from __future__ import annotations

import os
import uuid
from datetime import datetime
from pathlib import Path

import pyarrow.fs as pafs

from embedding_core.fs import filesystem_and_root

__all__ = ["INDEX_DIR", "IndexFiles"]

INDEX_DIR = "indexes"


class IndexFiles:
    """Reading and writing index files under the store root, local or on S3. Readers of an
    S3 store copy each file once into a local cache (``EMBEDDING_INDEX_CACHE``, default
    ``~/.cache/embedding_core/indexes``): files are never rewritten, so a cached one stays right."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.filesystem, self.base = filesystem_and_root(root)
        self.is_local = isinstance(self.filesystem, pafs.LocalFileSystem)

    def local_path(self, relative: str) -> str:
        """A local file holding `relative`: itself for a local store, a cached copy for S3."""
        if self.is_local:
            return os.path.join(self.base, relative)
        cache = Path(os.environ.get("EMBEDDING_INDEX_CACHE") or Path.home() / ".cache" / "embedding_core" / "indexes")
        target = cache / relative.replace("/", "__")
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
            with self.filesystem.open_input_stream(f"{self.base}/{relative}") as source, open(partial, "wb") as sink:
                while chunk := source.read(16 << 20):
                    sink.write(chunk)
            os.replace(partial, target)
        return str(target)

    def size(self, relative: str) -> int | None:
        """The stored file's size in bytes (not a cached copy's), None when it is missing."""
        info = self.filesystem.get_file_info(f"{self.base}/{relative}")
        return info.size if info.type == pafs.FileType.File else None

    def fresh_copy(self, relative: str, directory: str) -> str:
        """A local file with the stored bytes of `relative` now: itself for a local store, a
        download into `directory` (not the cache) for S3."""
        if self.is_local:
            return os.path.join(self.base, relative)
        target = os.path.join(directory, relative.replace("/", "__"))
        pafs.copy_files(f"{self.base}/{relative}", target, source_filesystem=self.filesystem,
                        destination_filesystem=pafs.LocalFileSystem())
        return target

    def put(self, local: str, relative: str) -> int:
        """Store the local file `local` as `relative` (a new name: nothing is overwritten)."""
        if self.is_local:
            target = os.path.join(self.base, relative)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(local, target)
            return os.path.getsize(target)
        pafs.copy_files(local, f"{self.base}/{relative}", source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.filesystem)
        size = os.path.getsize(local)
        os.remove(local)
        return size

    def listing(self) -> list[tuple[str, datetime]]:
        """(root-relative path, modification time) of every file under ``indexes/``."""
        selector = pafs.FileSelector(f"{self.base}/{INDEX_DIR}", recursive=True, allow_not_found=True)
        return [(info.path[len(self.base) + 1:], info.mtime) for info in self.filesystem.get_file_info(selector)
                if info.type == pafs.FileType.File]

    def delete(self, relative: str) -> None:
        try:
            self.filesystem.delete_file(f"{self.base}/{relative}")
        except FileNotFoundError:
            pass
