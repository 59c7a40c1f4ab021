"""Dagster definitions over embedding_core: corpus -> model_snapshot -> embeddings.

Load them with ``dagster dev`` (workspace.yaml) or ``from embedding_assets.definitions import defs``.
"""
