"""embedding_core: a fast, sentence-transformers-compatible sentence embedding library.

    >>> from embedding_core import SentenceTransformer
    >>> model = SentenceTransformer("all-MiniLM-L6-v2")

The encoder's names load on first use, so a process that only reads or writes the store
(`embedding_core.store`, a writer, `embedding-store`) does not import torch.
"""

from importlib import import_module

from embedding_core._version import __version__
from embedding_core.hub import DEFAULT_MODEL_NAME, ModelNotFoundError, ResolvedModel, resolve_model

# name -> the module that defines it, imported when the name is first used
_ENCODER_NAMES = {
    "SentenceTransformer": "embedding_core.model",
    "quantize_embeddings": "embedding_core.quantization",
    "util": "embedding_core.util",
}

__all__ = [
    "DEFAULT_MODEL_NAME",
    "ModelNotFoundError",
    "ResolvedModel",
    "SentenceTransformer",
    "quantize_embeddings",
    "resolve_model",
    "util",
    "__version__",
]


def __getattr__(name: str):
    if name not in _ENCODER_NAMES:
        raise AttributeError(f"module 'embedding_core' has no attribute {name!r}")
    module = import_module(_ENCODER_NAMES[name])
    value = module if name == "util" else getattr(module, name)
    globals()[name] = value
    return value
