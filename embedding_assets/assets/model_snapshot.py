"""`model_snapshot`: the configured model resolved to an immutable, pinned revision."""

import numpy as np
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    asset,
)

from embedding_assets.resources import EmbeddingStoreResource, EncoderResource

ENCODES_CHECK = "encodes_canary"
CANARY_TEXTS = ["A man is eating food.", "The quick brown fox jumps over the lazy dog."]


@asset(
    group_name="embeddings",
    kinds={"pytorch", "duckdb"},
    check_specs=[
        AssetCheckSpec(
            ENCODES_CHECK, asset="model_snapshot",
            description="The snapshot loads and encodes two canary sentences to finite "
            "vectors of the recorded dimension.",
        )
    ],
)
def model_snapshot(
    context: AssetExecutionContext,
    encoder: EncoderResource,
    embedding_store: EmbeddingStoreResource,
) -> MaterializeResult:
    """The configured model pinned to a revision: a hub commit sha, or `sha256:` of a local
    or bundled folder. A floating ref such as `main` is resolved here once and recorded.

    Its data version is that revision, so a revision bump marks every embeddings partition
    stale.
    """
    snapshot = encoder.resolve_snapshot()
    embedding_store.open().record_model_snapshot(snapshot, run_id=context.run.run_id)
    context.log.info(f"{snapshot.model} pinned at {snapshot.revision} ({snapshot.source})")

    model = encoder.load_snapshot(snapshot)
    canary = np.asarray(model.encode(CANARY_TEXTS, show_progress_bar=False))
    encodes = canary.shape == (len(CANARY_TEXTS), snapshot.dim) and bool(np.isfinite(canary).all())
    return MaterializeResult(
        metadata={
            "model": snapshot.model,
            "revision": snapshot.revision,
            "requested_revision": snapshot.requested_revision or "(default)",
            "source": snapshot.source,
            "path": MetadataValue.path(snapshot.path),
            "files_hash": snapshot.files_hash,
            "dim": snapshot.dim,
            "max_seq_length": snapshot.max_seq_length,
            "pooling": ", ".join(snapshot.pooling),
            "prompts": snapshot.prompts,
            "similarity_fn": snapshot.similarity_fn,
        },
        data_version=DataVersion(snapshot.revision),
        check_results=[
            AssetCheckResult(
                check_name=ENCODES_CHECK, passed=encodes,
                metadata={"shape": str(canary.shape),
                          "norms": [round(float(n), 4) for n in np.linalg.norm(canary, axis=1)]},
            )
        ],
    )
