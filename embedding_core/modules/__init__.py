"""The torch modules a sentence-transformers model folder chains, one file each, on a small
base (``modules.base``) with config keys, config load/save and the registry the loader uses."""

from embedding_core.modules.base import REGISTRY, Module, module_class, register, saved_type_name
from embedding_core.modules.dense import Dense
from embedding_core.modules.normalize import Normalize
from embedding_core.modules.pooling import Pooling
from embedding_core.modules.transformer import Transformer

__all__ = [
    "REGISTRY", "Dense", "Module", "Normalize", "Pooling", "Transformer",
    "module_class", "register", "saved_type_name",
]
