"""The five assets of the lineage graph (`corpus` and `embeddings` are the two specs of the
one step `landing_buckets`; `vector_index` searches them; `serving_version` promotes a
candidate past the blocking check `candidate_retrieval_quality`), and the store's maintenance."""

from embedding_assets.assets.buckets import landing_buckets
from embedding_assets.assets.model_snapshot import model_snapshot
from embedding_assets.assets.serving_version import candidate_retrieval_quality, serving_version
from embedding_assets.assets.store_maintenance import store_maintenance, weekly_store_maintenance
from embedding_assets.assets.vector_index import vector_index

__all__ = ["candidate_retrieval_quality", "landing_buckets", "model_snapshot", "serving_version",
           "store_maintenance", "vector_index", "weekly_store_maintenance"]
