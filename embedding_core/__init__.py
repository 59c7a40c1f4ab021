"""embedding_core: a fast, sentence-transformers-compatible sentence embedding library.

    >>> from embedding_core import SentenceTransformer
    >>> model = SentenceTransformer("all-MiniLM-L6-v2")
"""

__version__ = "0.1.0"

from embedding_core import util  # noqa: E402
from embedding_core.hub import DEFAULT_MODEL_NAME, ModelNotFoundError, ResolvedModel, resolve_model  # noqa: E402
from embedding_core.model import SentenceTransformer  # noqa: E402
from embedding_core.quantization import quantize_embeddings  # noqa: E402

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
