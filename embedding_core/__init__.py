"""embedding_core: a fast, sentence-transformers-compatible sentence embedding library.

    >>> from embedding_core import SentenceTransformer
    >>> model = SentenceTransformer("all-MiniLM-L6-v2")
"""

from embedding_core import util
from embedding_core._version import __version__
from embedding_core.hub import DEFAULT_MODEL_NAME, ModelNotFoundError, ResolvedModel, resolve_model
from embedding_core.model import SentenceTransformer
from embedding_core.quantization import quantize_embeddings

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
