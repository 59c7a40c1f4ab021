"""Locations: a local folder or a pyarrow filesystem URI (``s3://bucket/prefix``, ``gs://...``,
``file:///abs/path``), and the filesystem that reads it. The one place that tells them apart."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pyarrow.fs as pafs


def is_uri(location: str) -> bool:
    """Whether ``location`` is a filesystem URI rather than a local path."""
    return "://" in location


def absolute_location(location: str) -> str:
    """A local path made absolute; a URI as it is."""
    return location if is_uri(location) else os.path.abspath(location)


def project_dir(start: str | os.PathLike | None = None) -> Path:
    """The project folder ``start`` (default: the working directory) lies in: the nearest
    folder from ``start`` up that holds both a ``workspace.yaml`` and a ``pyproject.toml``, or
    ``start`` itself when none does.

    `make dev` runs the Dagster UI inside ``.dagster_home`` while `make demo`, a plain
    `dagster dev` and the commands run in the project root: all of them find the same folder,
    so a default location relative to it is one place for all of them."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "workspace.yaml").is_file() and (folder / "pyproject.toml").is_file():
            return folder
    return here


def default_store_root(environ: Mapping[str, str] = os.environ) -> str:
    """``$EMBEDDING_STORE_ROOT`` (a relative path made absolute), else ``store`` in the
    project folder (`project_dir`)."""
    return absolute_location(environ.get("EMBEDDING_STORE_ROOT") or str(project_dir() / "store"))


def filesystem_and_root(location: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of ``location`` and the root path inside it (no trailing slash)."""
    if is_uri(location):
        filesystem, root = pafs.FileSystem.from_uri(location)
        return filesystem, root.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(location)


def location_of(location: str, path: str) -> str:
    """Where ``path`` (a path inside ``location``'s filesystem) is, spelled like ``location``:
    a local path, or a URI with ``location``'s scheme."""
    return f"{location.split('://', 1)[0]}://{path}" if is_uri(location) else path


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """An ``OSError`` raised while writing ``path`` that names no file (``No space left on
    device`` from a ``write``) is raised again naming ``path``, with the same errno."""
    try:
        yield
    except OSError as error:
        if error.filename is not None:
            raise
        reason = error.strerror or str(error) or type(error).__name__
        raise OSError(error.errno, reason, os.fspath(path)) from error
