"""`store_maintenance`: expire what no current version needs any more, weekly or on demand."""

from datetime import timedelta

from dagster import (
    AssetExecutionContext,
    Config,
    DefaultScheduleStatus,
    MaterializeResult,
    ScheduleDefinition,
    asset,
    define_asset_job,
)
from pydantic import Field

from embedding_assets.partitions import ASSET_OWNERS, ASSET_TAGS
from embedding_assets.resources import EmbeddingStoreResource


class MaintenanceConfig(Config):
    older_than_days: float = Field(
        default=7.0,
        description="Keep replaced versions and lake snapshots (time travel) this long.",
    )


@asset(group_name="maintenance", kinds={"duckdb"}, owners=ASSET_OWNERS, tags=ASSET_TAGS)
def store_maintenance(
    context: AssetExecutionContext, config: MaintenanceConfig,
    embedding_store: EmbeddingStoreResource,
) -> MaterializeResult:
    """DuckLake maintenance of the store: expires versions replaced more than
    `older_than_days` ago and lake snapshots that old, then deletes the data files nothing
    references any more (also those of writers that died mid-commit), and the files of
    vector indexes superseded that long ago. The current version of every partition and the
    current index of every model version are never touched."""
    store = embedding_store.open()
    report = store.maintain(older_than=timedelta(days=config.older_than_days))
    context.log.info(
        f"expired {len(report.expired_embedding_versions)} embedding and "
        f"{len(report.expired_corpus_versions)} corpus versions, {report.expired_snapshots} "
        f"snapshots; deleted {report.deleted_files} files and {report.deleted_index_files} vector "
        f"index files ({store.catalog_label})"
    )
    return MaterializeResult(metadata={
        "expired_embedding_versions": len(report.expired_embedding_versions),
        "expired_corpus_versions": len(report.expired_corpus_versions),
        "expired_snapshots": report.expired_snapshots,
        "deleted_files": report.deleted_files,
        "deleted_index_files": report.deleted_index_files,
        "older_than_days": config.older_than_days,
        "catalog": store.catalog_label,
    })


store_maintenance_job = define_asset_job("store_maintenance_job", selection=[store_maintenance])

weekly_store_maintenance = ScheduleDefinition(
    name="weekly_store_maintenance",
    job=store_maintenance_job,
    cron_schedule="0 3 * * 0",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Sundays 03:00: expire replaced versions and old snapshots, delete unused files.",
)
