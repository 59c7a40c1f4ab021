"""The three assets of the lineage graph, and the store's maintenance."""

from embedding_assets.assets.corpus import corpus
from embedding_assets.assets.embeddings import embeddings
from embedding_assets.assets.model_snapshot import model_snapshot
from embedding_assets.assets.store_maintenance import store_maintenance, weekly_store_maintenance

__all__ = ["corpus", "embeddings", "model_snapshot", "store_maintenance", "weekly_store_maintenance"]
