"""Dagster definitions over embedding_core: corpus -> model_snapshot -> embeddings.

Load them with ``dg dev`` / ``dg check defs`` ([tool.dg] in pyproject.toml), ``dagster dev -w
workspace.yaml``, or ``from embedding_assets.definitions import defs``; the code location is
``embedding_pipeline``.
"""
