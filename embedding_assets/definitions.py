"""The one Definitions object: assets, checks, resources, sensors and the schedule.

Configuration comes from environment variables, read when the code location loads (the
run workers of a deployment must see the same values):

=============================  =====================================================
EMBEDDING_STORE_ROOT           store folder or URI (default ``./store``)
EMBEDDING_CATALOG_PATH         local DuckDB catalog (default ``<root>/catalog.duckdb``)
EMBEDDING_LANDING_DIR          corpus landing folder (default: the bundled sample corpus)
EMBEDDING_MODEL                model name or folder (default all-MiniLM-L6-v2, bundled)
EMBEDDING_MODEL_REVISION       branch, tag or commit (default: the hub's main)
EMBEDDING_DEVICE               cpu, cuda, cuda:1 (default: best available)
EMBEDDING_TARGET_DEVICES       comma list for the multi-process pool (``cuda:0,cuda:1``)
EMBEDDING_BATCH_SIZE           default 32
EMBEDDING_PRECISION            float32 (default), binary or ubinary
EMBEDDING_NORMALIZE            1 to store unit-length vectors
=============================  =====================================================
"""

from __future__ import annotations

import os
from pathlib import Path

from dagster import Definitions

from embedding_assets.assets import corpus, embeddings, model_snapshot
from embedding_assets.checks import embeddings_match_model
from embedding_assets.resources import CorpusSourceResource, EmbeddingStoreResource, EncoderResource
from embedding_assets.schedules import refresh_stale_embeddings
from embedding_assets.sensors import corpus_landing_sensor, model_revision_sensor
from embedding_core.fs import absolute_location
from embedding_core.hub import DEFAULT_MODEL_NAME

SAMPLE_CORPUS_DIR = str(Path(__file__).parent / "sample_corpus")


def build_definitions(
    store_root: str, landing_dir: str = SAMPLE_CORPUS_DIR, catalog_path: str | None = None,
    encoder: EncoderResource | None = None,
) -> Definitions:
    """Definitions over a given store and landing folder (tests and scripts build their own)."""
    return Definitions(
        assets=[corpus, model_snapshot, embeddings],
        asset_checks=[embeddings_match_model],
        sensors=[corpus_landing_sensor, model_revision_sensor],
        schedules=[refresh_stale_embeddings],
        resources={
            "embedding_store": EmbeddingStoreResource(root=store_root, catalog_path=catalog_path),
            "corpus_source": CorpusSourceResource(landing_dir=landing_dir),
            "encoder": encoder or EncoderResource(model_name=DEFAULT_MODEL_NAME),
        },
    )


def definitions_from_env(environ: os._Environ | dict = os.environ) -> Definitions:
    """Definitions configured by the EMBEDDING_* environment variables (see module doc)."""
    target_devices = environ.get("EMBEDDING_TARGET_DEVICES")
    return build_definitions(
        store_root=absolute_location(environ.get("EMBEDDING_STORE_ROOT") or "store"),
        landing_dir=absolute_location(environ.get("EMBEDDING_LANDING_DIR") or SAMPLE_CORPUS_DIR),
        catalog_path=environ.get("EMBEDDING_CATALOG_PATH") or None,
        encoder=EncoderResource(
            model_name=environ.get("EMBEDDING_MODEL") or DEFAULT_MODEL_NAME,
            revision=environ.get("EMBEDDING_MODEL_REVISION") or None,
            device=environ.get("EMBEDDING_DEVICE") or None,
            target_devices=target_devices.split(",") if target_devices else None,
            batch_size=int(environ.get("EMBEDDING_BATCH_SIZE") or 32),
            precision=environ.get("EMBEDDING_PRECISION") or "float32",
            normalize_embeddings=(environ.get("EMBEDDING_NORMALIZE") or "0").lower() in {"1", "true", "yes"},
        ),
    )


defs = definitions_from_env()
