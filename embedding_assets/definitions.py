"""The one Definitions object: assets, checks, jobs, resources, sensors, schedules and
automation. `dg dev` / `dagster dev` load it as the code location `embedding_pipeline`.

Configuration comes from environment variables, read when the code location loads (the
run workers of a deployment must see the same values):

=============================  =====================================================
EMBEDDING_STORE_ROOT           store data path: folder or ``s3://bucket/prefix`` (default: ``store``
                               in the project folder, wherever the UI or a command starts)
EMBEDDING_CATALOG              DuckDB catalog file (default: under a local root) or
                               ``postgres:<libpq key=value string>`` (required for s3://)
EMBEDDING_LANDING_DIR          corpus landing folder (default: the bundled sample corpus)
EMBEDDING_LANDING_ON_DELETE    keep (default): a file deleted from the landing folder keeps its
                               vectors; retire: its rows are retired (a rename always retires)
EMBEDDING_LANDING_BUCKETS      how many partitions (buckets) the landing files are hashed into
                               (default 16)
EMBEDDING_MODEL                model name or folder (default all-MiniLM-L6-v2, bundled)
EMBEDDING_MODEL_REVISION       branch, tag or commit (default: the hub's main)
EMBEDDING_DEVICE               cpu, cuda, cuda:1 (default: best available)
EMBEDDING_TARGET_DEVICES       comma list for the multi-process pool (``cuda:0,cuda:1``)
EMBEDDING_BATCH_SIZE           default 32
EMBEDDING_BACKEND              auto (default: OpenVINO float32 on CPU, PyTorch on CUDA), torch,
                               openvino, onnx, or a lossy one (own version): openvino-int8, ...
EMBEDDING_PRECISION            float32 (default), binary or ubinary
EMBEDDING_NORMALIZE            1 to store unit-length vectors
EMBEDDING_CHUNK_TOKENS         split texts into windows of this many tokens (at most the model's
                               max_seq_length), a row per window; unset: cut at max_seq_length
EMBEDDING_CHUNK_OVERLAP        tokens neighbouring windows share (default 0, fewer than the window)
EMBEDDING_PROMOTION_TOLERANCE  how much lower than the serving version's each retrieval metric of a
                               candidate may be (recall@10, MRR@10, nDCG@10; absolute, default 0.01)
                               for ``serving_version`` to promote it (check candidate_retrieval_quality)
EMBEDDING_EVALUATION_QUERIES   known-item queries the evaluation makes from the corpus (default 300)
EMBEDDING_EVALUATION_BEIR_DIR  a BEIR-format folder (queries.jsonl, qrels/test.tsv) evaluated too;
                               its corpus ids are the store's document ids (unset: none)
EMBEDDING_EXECUTOR             ``celery``: every step runs on a Celery worker (deploy/);
                               unset: Dagster's default (multiprocess) executor
EMBEDDING_CELERY_BROKER        the Celery broker URL (required for celery), ``redis://h:p/0``
EMBEDDING_CELERY_BACKEND       the Celery result backend (default: the broker)
=============================  =====================================================
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from dagster import BetaWarning, Definitions, ExecutorDefinition, with_source_code_references

from embedding_assets.assets import (
    candidate_retrieval_quality,
    landing_buckets,
    model_snapshot,
    serving_version,
    store_maintenance,
    vector_index,
    weekly_store_maintenance,
)
from embedding_assets.assets.serving_version import promote_candidate
from embedding_assets.assets.store_maintenance import store_maintenance_job
from embedding_assets.assets.vector_index import index_vectors
from embedding_assets.jobs import embed_corpus, snapshot_model, verify_embeddings
from embedding_assets.resources import (
    CorpusSourceResource,
    EmbeddingStoreResource,
    EncoderResource,
    PromotionGateResource,
)
from embedding_assets.schedules import embeddings_automation, verify_embeddings_sweep
from embedding_assets.sensors import corpus_landing_sensor, model_revision_sensor
from embedding_core.chunking import ChunkingParams
from embedding_core.evaluation import KNOWN_ITEM_QUERIES
from embedding_core.fs import absolute_location, default_store_root
from embedding_core.hub import DEFAULT_MODEL_NAME
from embedding_core.store.records import sha256_json

SAMPLE_CORPUS_DIR = str(Path(__file__).parent / "sample_corpus")


def build_definitions(
    store_root: str, landing_dir: str = SAMPLE_CORPUS_DIR, catalog: str | None = None,
    encoder: EncoderResource | None = None, executor: ExecutorDefinition | None = None,
    on_delete: str = "keep", promotion_gate: PromotionGateResource | None = None,
) -> Definitions:
    """Definitions over a given store and landing folder (tests and scripts build their own)."""
    encoder = encoder or EncoderResource(model_name=DEFAULT_MODEL_NAME)
    promotion_gate = promotion_gate or PromotionGateResource()
    configured_buckets = landing_buckets.map_asset_specs(
        lambda spec: spec.replace_attributes(code_version=encoder_code_version(spec.code_version, encoder))
        if spec.key.to_user_string() == "embeddings" else spec)
    return Definitions(
        executor=executor,
        assets=code_references([configured_buckets, model_snapshot, vector_index, serving_version,
                                 store_maintenance]),
        asset_checks=[candidate_retrieval_quality],
        jobs=[embed_corpus, snapshot_model, verify_embeddings, index_vectors, promote_candidate,
              store_maintenance_job],
        sensors=[corpus_landing_sensor, model_revision_sensor, embeddings_automation],
        schedules=[verify_embeddings_sweep, weekly_store_maintenance],
        resources={
            "embedding_store": EmbeddingStoreResource(root=store_root, catalog=catalog),
            "corpus_source": CorpusSourceResource(landing_dir=landing_dir, on_delete=on_delete),
            "encoder": encoder,
            "promotion_gate": promotion_gate,
        },
    )


def code_references(assets: list) -> list:
    """The assets with a link to their source file and line (the UI's "Code" link); Dagster
    marks the helper as beta, which says nothing to act on for a user of this project."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)
        return with_source_code_references(assets)


# The encoder settings that change what embeddings stores; devices and batch size do not.
VERSIONED_ENCODER_FIELDS = ("model_name", "revision", "precision", "normalize_embeddings",
                            "prompt_name", "truncate_dim")


def encoder_code_version(code_version: str | None, encoder: EncoderResource) -> str:
    """The embeddings asset's code version with the encoder settings folded in, so changing
    one (EMBEDDING_PRECISION, EMBEDDING_NORMALIZE, EMBEDDING_CHUNK_TOKENS, ...) shows its
    partitions as stale in the UI and the automation condition re-embeds them."""
    settings = {name: getattr(encoder, name) for name in VERSIONED_ENCODER_FIELDS}
    if encoder.chunk_tokens is not None:  # chunking off: the code version it had before chunking
        settings.update(chunk_tokens=encoder.chunk_tokens, chunk_overlap=encoder.chunk_overlap)
    return f"{code_version}-{sha256_json(settings)[:12]}"


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


def env_number(environ: os._Environ | dict, name: str, default: float, kind: type = float) -> float:
    """The number environment variable `name` holds (`default` when unset or empty); a value
    that is not one, or is negative, fails the load naming the variable."""
    value = (environ.get(name) or "").strip()
    if not value:
        return default
    try:
        number = kind(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: expected a{'' if kind is float else ' whole'} number") from None
    if number < 0:
        raise ValueError(f"{name}={value!r}: expected a number of at least 0")
    return number


def definitions_from_env(environ: os._Environ | dict = os.environ) -> Definitions:
    """Definitions configured by the EMBEDDING_* environment variables (see module doc)."""
    target_devices = environ.get("EMBEDDING_TARGET_DEVICES")
    # A bad window or overlap fails the load, naming both; the model's limit is checked when
    # its snapshot is known (`EncoderConfig.params`).
    chunking = ChunkingParams.from_env(environ, max_seq_length=None)
    return build_definitions(
        store_root=default_store_root(environ),
        landing_dir=absolute_location(environ.get("EMBEDDING_LANDING_DIR") or SAMPLE_CORPUS_DIR),
        on_delete=environ.get("EMBEDDING_LANDING_ON_DELETE") or "keep",
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
            chunk_tokens=chunking.tokens if chunking else None, chunk_overlap=chunking.overlap if chunking else 0,
        ),
        executor=executor_from_env(environ),
        promotion_gate=PromotionGateResource(
            tolerance=env_number(environ, "EMBEDDING_PROMOTION_TOLERANCE", 0.01, float),
            known_item_queries=env_number(environ, "EMBEDDING_EVALUATION_QUERIES", KNOWN_ITEM_QUERIES, int),
            beir_dir=absolute_location(beir) if (beir := environ.get("EMBEDDING_EVALUATION_BEIR_DIR")) else None,
        ),
    )


defs = definitions_from_env()
