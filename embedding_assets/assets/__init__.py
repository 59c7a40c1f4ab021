"""The three assets of the lineage graph (`corpus` and `embeddings` are the two specs of the
one step `landing_buckets`), and the store's maintenance."""

from embedding_assets.assets.buckets import landing_buckets
from embedding_assets.assets.model_snapshot import model_snapshot
from embedding_assets.assets.store_maintenance import store_maintenance, weekly_store_maintenance

__all__ = ["landing_buckets", "model_snapshot", "store_maintenance", "weekly_store_maintenance"]
