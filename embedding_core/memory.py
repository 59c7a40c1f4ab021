"""Giving freed heap memory back to the operating system between shards.

A shard's temporaries (token arrays, padded batches, hidden states, the vectors and their
copies for the write, the read-back) are all freed when the shard is done, but glibc's
``malloc`` keeps freed chunks inside its arenas, and it returns to the system only the free
space at the top of a heap. What lies between chunks still in use stays resident: over a
200k-text backfill (8 shards of 25,000 texts in one process) this free-but-resident memory
grew to ~300-400 MB (``mallinfo2().fordblks``), a sixth of the peak RSS
(docs/performance.md, Memory). ``malloc_trim(0)`` hands those pages back (``madvise``)
in a few milliseconds; calling it once per shard keeps RSS at what is actually in use.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache

__all__ = ["release_free_heap"]


@cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None (another C library, another OS)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim  # glibc only (musl has none)
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_heap() -> bool:
    """Return the C heap's free pages to the system (glibc ``malloc_trim(0)``); whether
    anything was released. A no-op returning False where glibc is not the allocator."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
