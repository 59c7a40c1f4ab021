"""The one Definitions object: assets, checks, resources, sensors and the schedule.

Configuration comes from environment variables, read when the code location loads (the
run workers of a deployment must see the same values):

=============================  =====================================================
EMBEDDING_STORE_ROOT           store data path: folder or ``s3://bucket/prefix`` (default ``./store``)
EMBEDDING_CATALOG              DuckDB catalog file (default: under a local root) or
                               ``postgres:<libpq key=value string>`` (required for s3://)
EMBEDDING_LANDING_DIR          corpus landing folder (default: the bundled sample corpus)
EMBEDDING_MODEL                model name or folder (default all-MiniLM-L6-v2, bundled)
EMBEDDING_MODEL_REVISION       branch, tag or commit (default: the hub's main)
EMBEDDING_DEVICE               cpu, cuda, cuda:1 (default: best available)
EMBEDDING_TARGET_DEVICES       comma list for the multi-process pool (``cuda:0,cuda:1``)
EMBEDDING_BATCH_SIZE           default 32
EMBEDDING_BACKEND              auto (default: OpenVINO float32 on CPU, PyTorch on CUDA), torch,
                               openvino, onnx, or a lossy one (own version): openvino-int8, ...
EMBEDDING_PRECISION            float32 (default), binary or ubinary
EMBEDDING_NORMALIZE            1 to store unit-length vectors
EMBEDDING_EXECUTOR             ``celery``: every step runs on a Celery worker (deploy/);
                               unset: Dagster's default (multiprocess) executor
EMBEDDING_CELERY_BROKER        the Celery broker URL (required for celery), ``redis://h:p/0``
EMBEDDING_CELERY_BACKEND       the Celery result backend (default: the broker)
=============================  =====================================================
"""

from __future__ import annotations

import os
from pathlib import Path

from dagster import Definitions, ExecutorDefinition

from embedding_assets.assets import (
    corpus,
    embeddings,
    model_snapshot,
    store_maintenance,
    weekly_store_maintenance,
)
from embedding_assets.checks import embeddings_match_model
from embedding_assets.resources import CorpusSourceResource, EmbeddingStoreResource, EncoderResource
from embedding_assets.schedules import refresh_stale_embeddings
from embedding_assets.sensors import corpus_landing_sensor, model_revision_sensor
from embedding_core.fs import absolute_location
from embedding_core.hub import DEFAULT_MODEL_NAME

SAMPLE_CORPUS_DIR = str(Path(__file__).parent / "sample_corpus")


def build_definitions(
    store_root: str, landing_dir: str = SAMPLE_CORPUS_DIR, catalog: str | None = None,
    encoder: EncoderResource | None = None, executor: ExecutorDefinition | None = None,
) -> Definitions:
    """Definitions over a given store and landing folder (tests and scripts build their own)."""
    return Definitions(
        executor=executor,
        assets=[corpus, model_snapshot, embeddings, store_maintenance],
        asset_checks=[embeddings_match_model],
        sensors=[corpus_landing_sensor, model_revision_sensor],
        schedules=[refresh_stale_embeddings, weekly_store_maintenance],
        resources={
            "embedding_store": EmbeddingStoreResource(root=store_root, catalog=catalog),
            "corpus_source": CorpusSourceResource(landing_dir=landing_dir),
            "encoder": encoder or EncoderResource(model_name=DEFAULT_MODEL_NAME),
        },
    )


def executor_from_env(environ: os._Environ | dict = os.environ) -> ExecutorDefinition | None:
    """The executor EMBEDDING_EXECUTOR names: None (Dagster's default) or ``celery``, which sends
    each step to the Celery workers listening on EMBEDDING_CELERY_BROKER (dagster-celery, in the
    ``distributed`` extra)."""
    name = (environ.get("EMBEDDING_EXECUTOR") or "").strip().lower()
    if name in {"", "default", "multiprocess"}:
        return None
    if name != "celery":
        raise ValueError(f"EMBEDDING_EXECUTOR={name!r}: expected 'celery' or unset")
    broker = environ.get("EMBEDDING_CELERY_BROKER")
    if not broker:
        raise ValueError("EMBEDDING_EXECUTOR=celery needs EMBEDDING_CELERY_BROKER (redis://host:port/0)")
    from dagster_celery import celery_executor

    return celery_executor.configured(
        {"broker": broker, "backend": environ.get("EMBEDDING_CELERY_BACKEND") or broker},
        name="celery",
    )


def definitions_from_env(environ: os._Environ | dict = os.environ) -> Definitions:
    """Definitions configured by the EMBEDDING_* environment variables (see module doc)."""
    target_devices = environ.get("EMBEDDING_TARGET_DEVICES")
    return build_definitions(
        store_root=absolute_location(environ.get("EMBEDDING_STORE_ROOT") or "store"),
        landing_dir=absolute_location(environ.get("EMBEDDING_LANDING_DIR") or SAMPLE_CORPUS_DIR),
        catalog=environ.get("EMBEDDING_CATALOG") or None,
        encoder=EncoderResource(
            model_name=environ.get("EMBEDDING_MODEL") or DEFAULT_MODEL_NAME,
            revision=environ.get("EMBEDDING_MODEL_REVISION") or None,
            device=environ.get("EMBEDDING_DEVICE") or None,
            target_devices=target_devices.split(",") if target_devices else None,
            batch_size=int(environ.get("EMBEDDING_BATCH_SIZE") or 32),
            precision=environ.get("EMBEDDING_PRECISION") or "float32",
            backend=environ.get("EMBEDDING_BACKEND") or "auto",
            normalize_embeddings=(environ.get("EMBEDDING_NORMALIZE") or "0").lower() in {"1", "true", "yes"},
        ),
        executor=executor_from_env(environ),
    )


defs = definitions_from_env()
