"""The named jobs: what the sensors, the schedules, the UI's Launchpad and the backfill
command run (each run shows its job name in the UI's Runs and Overview pages).

- `embed_corpus`: `corpus` + `embeddings` of the selected partitions, with their checks.
- `snapshot_model`: `model_snapshot` (pins the configured model's revision) and its check.
- `verify_embeddings`: only the `embeddings_match_model` spot check, over the partitions of
  the run (the weekly sweep runs it over all of them).
- `store_maintenance_job`: `store_maintenance` (defined with its weekly schedule).
- `promote_candidate`: `vector_index` and `serving_version`, with the blocking check
  `candidate_retrieval_quality` between them (defined with them, in
  `embedding_assets.assets.serving_version`).
"""

from dagster import AssetSelection, define_asset_job

from embedding_assets.assets import model_snapshot
from embedding_assets.checks import embeddings_match_model

EMBED_CORPUS = "embed_corpus"
SNAPSHOT_MODEL = "snapshot_model"
VERIFY_EMBEDDINGS = "verify_embeddings"

embed_corpus = define_asset_job(
    EMBED_CORPUS, selection=AssetSelection.assets("corpus", "embeddings"),
    description="Ingest the new and changed landing files of the selected buckets and embed "
    "them; the checks of both assets run for each bucket of the run.",
)

snapshot_model = define_asset_job(
    SNAPSHOT_MODEL, selection=AssetSelection.assets(model_snapshot),
    description="Pin the configured model to an immutable revision and check that it encodes.",
)

verify_embeddings = define_asset_job(
    VERIFY_EMBEDDINGS, selection=AssetSelection.checks(embeddings_match_model),
    description="Re-encode sampled stored texts of the run's partitions and compare them with "
    "the stored vectors (no re-materialization).",
)
