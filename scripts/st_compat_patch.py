"""pytest plugin for ``st_compat.py``: sentence-transformers' public names, replaced by ours.

Loaded with ``pytest -p st_compat_patch``, before any test module is imported, it swaps
``sentence_transformers.SentenceTransformer`` for ``embedding_core.SentenceTransformer`` and
each function ``embedding_core.util`` provides for ours, in ``sentence_transformers.util``
and in the submodule that defines it (tests import from both).
"""

from __future__ import annotations

import importlib

import sentence_transformers
import sentence_transformers.sentence_transformer
import sentence_transformers.util

import embedding_core
import embedding_core.util


def _patch() -> None:
    sentence_transformers.SentenceTransformer = embedding_core.SentenceTransformer
    sentence_transformers.sentence_transformer.SentenceTransformer = embedding_core.SentenceTransformer
    for name in embedding_core.util.__all__:
        theirs = getattr(sentence_transformers.util, name, None)
        if theirs is None or name.startswith("_"):
            continue
        ours = getattr(embedding_core.util, name)
        defining = getattr(theirs, "__module__", None)
        if defining and defining.startswith("sentence_transformers.util."):
            setattr(importlib.import_module(defining), name, ours)
        setattr(sentence_transformers.util, name, ours)


_patch()
