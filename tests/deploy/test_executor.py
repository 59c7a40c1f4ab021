"""EMBEDDING_EXECUTOR selects the executor of every job of the code location."""

from __future__ import annotations

import pytest

from embedding_assets.definitions import definitions_from_env, executor_from_env


def test_default_executor_when_unset():
    assert executor_from_env({}) is None
    assert executor_from_env({"EMBEDDING_EXECUTOR": "multiprocess"}) is None


def test_celery_executor_reads_broker_and_backend(tmp_path):
    env = {
        "EMBEDDING_EXECUTOR": "celery",
        "EMBEDDING_CELERY_BROKER": "redis://127.0.0.1:6399/0",
        "EMBEDDING_STORE_ROOT": str(tmp_path / "store"),
    }
    executor = executor_from_env(env)
    assert executor.name == "celery"
    job = definitions_from_env(env).resolve_implicit_global_asset_job_def()
    assert job.executor_def.name == "celery"  # the cluster test runs steps through it


def test_celery_without_broker_and_unknown_executor_are_errors():
    with pytest.raises(ValueError, match="EMBEDDING_CELERY_BROKER"):
        executor_from_env({"EMBEDDING_EXECUTOR": "celery"})
    with pytest.raises(ValueError, match="EMBEDDING_EXECUTOR='dask'"):
        executor_from_env({"EMBEDDING_EXECUTOR": "dask"})
