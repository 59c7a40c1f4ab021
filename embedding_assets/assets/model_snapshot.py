"""`model_snapshot`: the configured model resolved to an immutable, pinned revision."""

from dagster import AssetCheckSpec, AssetExecutionContext, DataVersion, MaterializeResult, asset

from embedding_assets.checks import ENCODES_CHECK, encodes_canary
from embedding_assets.metadata import snapshot_metadata
from embedding_assets.partitions import ASSET_OWNERS, ASSET_TAGS
from embedding_assets.resources import EmbeddingStoreResource, EncoderResource


@asset(
    group_name="models",
    kinds={"pytorch", "duckdb"},
    owners=ASSET_OWNERS,
    tags=ASSET_TAGS,
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
    config = encoder.open()
    snapshot = config.resolve()
    config.params(snapshot)  # settings the model cannot take (a chunk window past its limit) fail here
    embedding_store.open().record_model_snapshot(snapshot, run_id=context.run.run_id)
    context.log.info(f"{snapshot.model} pinned at {snapshot.revision} ({snapshot.source})")
    return MaterializeResult(
        metadata=snapshot_metadata(snapshot),
        data_version=DataVersion(snapshot.revision),
        check_results=[encodes_canary(config.load(snapshot), snapshot.dim)],
    )
