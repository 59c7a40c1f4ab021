"""Built-graph cache entries that concurrent processes build once and that heal when damaged.

An entry is a folder holding ``model.xml`` / ``model.bin`` (or any files its builder writes)
and a ``manifest.json`` listing every file's size, written last. An entry is *intact* when
its manifest exists and every listed file has the listed size; anything else (a folder left
by a killed build, a truncated file, a missing manifest) is discarded and rebuilt.

Builds take an exclusive ``flock`` on ``<entry>.lock`` next to the entry, so pool workers or
Celery workers that start together build an entry once: the first builds, the others wait
and then find it intact.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from embedding_core.fs import writing

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def intact(folder: Path) -> bool:
    """Whether ``folder`` is a complete entry: a manifest whose every file has its size."""
    try:
        listed = json.loads((folder / MANIFEST).read_text())["files"]
        return bool(listed) and all((folder / name).stat().st_size == size for name, size in listed.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """An exclusive inter-process lock on ``folder``'s entry (``<folder>.lock``)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def discard(folder: Path) -> None:
    """Remove ``folder``'s entry (a reader that has it open keeps its files until it closes them)."""
    with locked(folder):
        shutil.rmtree(folder, ignore_errors=True)


def ensure(folder: Path, build: Callable[[Path], None], what: str) -> bool:
    """Make ``folder`` an intact entry, calling ``build(scratch_folder)`` when it is not.

    Returns whether this call built it. Holds the entry's lock while checking and building,
    so concurrent callers build once; a damaged entry is removed (with a warning) and rebuilt.
    """
    if intact(folder):
        return False
    with locked(folder):
        if intact(folder):  # another process built it while we waited
            return False
        if folder.exists():
            logger.warning("The cached %s at %s is incomplete or damaged; rebuilding it.", what, folder)
            shutil.rmtree(folder)
        with writing(folder):
            with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".build-") as scratch:
                built = Path(scratch) / "entry"
                built.mkdir()
                build(built)
                sizes = {p.name: p.stat().st_size for p in sorted(built.iterdir()) if p.is_file()}
                (built / MANIFEST).write_text(json.dumps({"files": sizes}))
                # Same filesystem, so the rename is atomic: readers see no folder or a whole one.
                os.replace(built, folder)
    logger.info("Built the %s at %s", what, folder)
    return True
