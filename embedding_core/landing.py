"""The landing folder: corpus files dropped into a folder (or a bucket prefix), one
partition each, named by a key derived from the file's path.

A key is the path relative to the folder, made safe by :func:`partition_key_for_file`
(``python_docs.jsonl`` stays, ``2024/My Notes.csv`` becomes ``2024__My_Notes.csv``). Every
call lists the folder once.

A symbolic link whose target lies outside the folder (a file, or a linked folder) is
refused: it is left out of the listing with a logged warning and kept in `refused`, and a
partition key naming one raises `OutsideLinkError`. ``allow_outside_links=True`` follows
such links. Links inside the folder are ordinary files.

    >>> landing = LandingFolder("landing")
    >>> for key, file in landing.files().items():
    ...     shard = landing.read(file)
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pyarrow.fs as pafs

from embedding_core.corpus import SUPPORTED_SUFFIXES, CorpusShard, read_corpus_file
from embedding_core.fs import filesystem_and_root, location_of

MAX_PARTITION_KEY_LENGTH = 100
SUBFOLDER_SEPARATOR = "__"
# A path that every rule of `partition_key_for_file` leaves as it is (but `/` -> `__`).
_SAFE_PATH = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")
_HAS_ALNUM = re.compile(r"[A-Za-z0-9]")

log = logging.getLogger(__name__)


class PartitionKeyCollisionError(ValueError):
    """Two or more landing files whose names map to the same partition key."""


class OutsideLinkError(PermissionError):
    """A landing file that is a symbolic link to a file outside the landing folder."""


def partition_key_for_file(relative_path: str) -> str:
    """The partition key of a landing file, from its path relative to the landing folder.

    Keys are safe in Dagster (UI, URLs, the ``a...b`` range syntax) and as a folder name:
    accents are dropped, every other run of characters outside ``[A-Za-z0-9._-]`` becomes
    ``_``, runs of dots become one, and subfolders are joined with ``__``. A key longer
    than 100 characters, or one whose name kept no letter or digit, is cut and gets an
    8-character hash of the path (the suffix stays last). Safe names stay as they are::

        >>> partition_key_for_file("python_docs.jsonl")
        'python_docs.jsonl'
        >>> partition_key_for_file("My Notes (v2).jsonl")
        'My_Notes_v2_.jsonl'
        >>> partition_key_for_file("sub dir/ünïcode.csv")
        'sub_dir__unicode.csv'
    """
    if _SAFE_PATH.fullmatch(relative_path) and ".." not in relative_path:
        key = relative_path.replace("/", SUBFOLDER_SEPARATOR)  # what the rules below give
        if len(key) <= MAX_PARTITION_KEY_LENGTH and _HAS_ALNUM.search(os.path.splitext(key)[0]):
            return key
    decomposed = unicodedata.normalize("NFKD", relative_path)
    without_accents = "".join(char for char in decomposed if not unicodedata.combining(char))
    segments = [re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "_", segment))
                for segment in without_accents.split("/") if segment]
    key = SUBFOLDER_SEPARATOR.join(segments)
    stem, suffix = os.path.splitext(key)
    if len(key) > MAX_PARTITION_KEY_LENGTH or not re.search(r"[A-Za-z0-9]", stem):
        digest = hashlib.sha256(relative_path.encode("utf-8")).hexdigest()[:8]
        key = f"{stem[: MAX_PARTITION_KEY_LENGTH - len(suffix) - 9]}-{digest}{suffix}"
    return key


def bucket_count() -> int:
    """How many landing buckets there are: ``EMBEDDING_LANDING_BUCKETS``, 16 by default."""
    return int(os.environ.get("EMBEDDING_LANDING_BUCKETS") or 16)


@functools.cache
def bucket_keys(count: int) -> tuple[str, ...]:
    """The names of `count` landing buckets: ``bucket-00``, ``bucket-01``, ..."""
    if not 1 <= count <= 1000:
        raise ValueError(f"landing buckets: {count} is not between 1 and 1000")
    width = max(2, len(str(count - 1)))
    return tuple(f"bucket-{index:0{width}d}" for index in range(count))


def bucket_of(partition_key: str, count: int) -> str:
    """The bucket of a landing file's partition key, one of `bucket_keys(count)`: a stable
    hash, so a file stays in its bucket for as long as its name and `count` stay.

        >>> bucket_of("python_docs.jsonl", 16)
        'bucket-04'
    """
    digest = int.from_bytes(hashlib.sha256(partition_key.encode("utf-8")).digest()[:8], "big")
    return bucket_keys(count)[digest % count]


def bucket_digests(listing: dict[str, list[LandingFile]], count: int) -> dict[str, str]:
    """Bucket -> a digest of the names and fingerprints of its files (only buckets that hold
    files): a bucket whose digest moved holds a new, changed, renamed or deleted file."""
    lines: dict[str, list[str]] = {}
    for key, files in listing.items():
        lines.setdefault(bucket_of(key, count), []).extend(
            f"{file.relative_path}\0{file.fingerprint}" for file in files)
    return {bucket: hashlib.sha256("\n".join(sorted(entries)).encode("utf-8")).hexdigest()[:16]
            for bucket, entries in sorted(lines.items())}


@dataclass(frozen=True)
class LandingFile:
    """A corpus file in the landing folder: the partition key its path maps to, the path
    relative to the folder, where it is (local path or URI), and a fingerprint (size and
    modification time) of its content."""

    partition_key: str
    relative_path: str
    uri: str
    fingerprint: str


class LandingFolder:
    """The corpus files of a landing folder (local path or filesystem URI), by partition key."""

    def __init__(self, location: str, id_field: str = "id", text_field: str = "text",
                 allow_outside_links: bool = False) -> None:
        self.location = location
        self.id_field = id_field
        self.text_field = text_field
        self.allow_outside_links = allow_outside_links
        self.filesystem, self.root = filesystem_and_root(location)
        # Relative path -> real path of each link to outside the folder, as of the last listing.
        self.refused: dict[str, str] = {}

    def files(self, partition_keys: Iterable[str] | None = None) -> dict[str, LandingFile]:
        """The files behind ``partition_keys`` (default: every corpus file), sorted by key.

        Raises ``FileNotFoundError`` for a key with no file,
        :class:`PartitionKeyCollisionError` naming the files when two names map to one of
        the keys asked for, and :class:`OutsideLinkError` for a key whose file is a link to
        outside the folder.
        """
        listing = self._list()
        wanted = sorted(listing) if partition_keys is None else list(partition_keys)
        refused = {partition_key_for_file(path): path for path in self.refused}
        for key in wanted:
            if key not in listing and key in refused:
                raise self._outside_link_error(refused[key])
        missing = [key for key in wanted if key not in listing]
        if missing:
            raise FileNotFoundError(f"corpus partition {missing[0]!r} has no file in {self.location}")
        collisions = {key: listing[key] for key in wanted if len(listing[key]) > 1}
        if collisions:
            raise self._collision_error(collisions)
        return {key: listing[key][0] for key in wanted}

    def listing(self) -> dict[str, list[LandingFile]]:
        """Every visible corpus file, grouped by partition key (several files under one key
        collide: `files` refuses such a key), in one listing of the folder."""
        return self._list()

    def fingerprints(self) -> dict[str, str]:
        """Partition key -> fingerprint (size and modification time) of every corpus file."""
        return {key: file.fingerprint for key, file in self.files().items()}

    def read(self, file: LandingFile) -> CorpusShard:
        """Read and normalize a landing file (checking again that it is not a link to
        outside the folder, which it may have become since the listing)."""
        if self._outside(f"{self.root}/{file.relative_path}"):
            raise self._outside_link_error(file.relative_path)
        return read_corpus_file(f"{self.root}/{file.relative_path}", filesystem=self.filesystem,
                                id_field=self.id_field, text_field=self.text_field)

    def _list(self) -> dict[str, list[LandingFile]]:
        """One listing of the folder: every visible corpus file, grouped by key."""
        self.refused = {}
        entries = (self._walk_local() if isinstance(self.filesystem, pafs.LocalFileSystem)
                   else self._walk_filesystem())
        files: dict[str, list[LandingFile]] = {}
        for relative_path, size, mtime_ns, outside_target in entries:
            if relative_path.startswith(".") or "/." in relative_path:
                continue
            if not relative_path.lower().endswith(SUPPORTED_SUFFIXES):
                continue
            if outside_target is not None:
                self.refused[relative_path] = outside_target
                log.warning("%s", self._outside_link_error(relative_path))
                continue
            key = partition_key_for_file(relative_path)
            files.setdefault(key, []).append(LandingFile(
                key, relative_path, location_of(self.location, f"{self.root}/{relative_path}"),
                f"{size}:{mtime_ns}"))
        return {key: same_key if len(same_key) == 1 else sorted(same_key, key=lambda file: file.relative_path)
                for key, same_key in sorted(files.items())}

    def _walk_filesystem(self) -> Iterator[tuple[str, int, int, None]]:
        """(relative path, size, mtime_ns, None) of every file under the root, by pyarrow."""
        selector = pafs.FileSelector(self.root, recursive=True, allow_not_found=True)
        for info in self.filesystem.get_file_info(selector):
            if info.type == pafs.FileType.File:
                yield info.path[len(self.root) + 1:], info.size, info.mtime_ns, None

    def _walk_local(self) -> Iterator[tuple[str, int, int, str | None]]:
        """(relative path, size, mtime_ns, real path when it lies outside the folder) of every
        local file under the root. ``os.scandir`` with one ``stat`` per file: a real path is
        resolved only for a symbolic link (or a file under a linked folder), so 100,000 files
        list in well under a second."""
        root = os.path.realpath(self.root)
        # (folder, its path relative to the root, real path when reached through a link)
        stack: list[tuple[str, str, str | None]] = [(self.root, "", None)]
        visited: set[str] = set()
        while stack:
            folder, relative, linked_real = stack.pop()
            try:
                iterator = os.scandir(folder)
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue
            with iterator:
                for entry in iterator:
                    relative_path = f"{relative}{entry.name}"
                    try:
                        is_link = entry.is_symlink()
                        if entry.is_dir():
                            real = (os.path.realpath(entry.path) if is_link
                                    else linked_real and os.path.join(linked_real, entry.name))
                            if real is not None:
                                if real in visited:  # a link cycle
                                    continue
                                visited.add(real)
                            stack.append((entry.path, relative_path + "/", real))
                            continue
                        if not entry.is_file():
                            continue
                        stat = entry.stat()
                    except OSError:  # gone since the folder was read, or a dangling link
                        continue
                    outside = None
                    if (is_link or linked_real is not None) and not self.allow_outside_links:
                        real = os.path.realpath(entry.path)
                        if not real.startswith(root.rstrip(os.sep) + os.sep):
                            outside = real
                    yield relative_path, stat.st_size, stat.st_mtime_ns, outside

    def _outside(self, path: str) -> str | None:
        """The real path of a local file reached through a link to outside the folder, else None."""
        if self.allow_outside_links or not isinstance(self.filesystem, pafs.LocalFileSystem):
            return None
        real, root = os.path.realpath(path), os.path.realpath(self.root)
        return None if real.startswith(root.rstrip(os.sep) + os.sep) else real

    def _outside_link_error(self, relative_path: str) -> OutsideLinkError:
        target = self.refused.get(relative_path) or self._outside(f"{self.root}/{relative_path}")
        return OutsideLinkError(
            f"{self.root}/{relative_path}: refused, it is a symbolic link to {target}, outside "
            f"the landing folder {self.location} (allow_outside_links=True follows such links)")

    def _collision_error(self, collisions: dict[str, list[LandingFile]]) -> PartitionKeyCollisionError:
        lines = [
            " and ".join(repr(file.relative_path) for file in files)
            + f" map to the same partition key {key!r}"
            for key, files in collisions.items()
        ]
        return PartitionKeyCollisionError(
            f"landing files in {self.location} collide: " + "; ".join(lines)
            + ". Rename one file of each group."
        )
