"""The torch modules a sentence-transformers model folder chains, one file each."""

from embedding_core.modules.dense import Dense
from embedding_core.modules.normalize import Normalize
from embedding_core.modules.pooling import Pooling
from embedding_core.modules.transformer import Transformer

# modules.json names classes by dotted path (``sentence_transformers.models.Pooling``, or
# ``sentence_transformers.sentence_transformer.modules.pooling.Pooling`` in newer releases):
# the class name alone picks ours.
MODULE_CLASSES = {cls.__name__: cls for cls in (Transformer, Pooling, Normalize, Dense)}

# What we write in modules.json: the spelling every sentence-transformers release reads.
SAVED_TYPE_NAMES = {name: f"sentence_transformers.models.{name}" for name in MODULE_CLASSES}

__all__ = ["Dense", "Normalize", "Pooling", "Transformer", "MODULE_CLASSES", "SAVED_TYPE_NAMES"]
