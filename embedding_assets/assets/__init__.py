"""The three assets of the lineage graph."""

from embedding_assets.assets.corpus import corpus
from embedding_assets.assets.embeddings import embeddings
from embedding_assets.assets.model_snapshot import model_snapshot

__all__ = ["corpus", "embeddings", "model_snapshot"]
