"""The documented command lines: the CI backfill and `embedding-search`, run as processes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from embedding_core.store import EmbeddingStore
from tests.assets.conftest import write_sample_slice

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture
def command_env(tmp_path) -> dict:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")
    return {**os.environ, "DAGSTER_HOME": str(home), "EMBEDDING_STORE_ROOT": str(tmp_path / "store"),
            "EMBEDDING_LANDING_DIR": str(write_sample_slice(tmp_path / "landing", rows=6))}


def run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=PROJECT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_backfill_command_embeds_the_range_and_search_command_finds_a_stored_text(tmp_path, command_env):
    backfill = run([sys.executable, "-m", "embedding_assets.backfill",
                    "--from", "package_summaries.csv", "--to", "python_docs.jsonl"], command_env)
    assert backfill.returncode == 0, backfill.stderr[-3000:]
    assert "package_summaries.csv...python_docs.jsonl: ok" in backfill.stdout
    assert f"2 partition(s); catalog: {tmp_path / 'store' / 'catalog.duckdb'}" in backfill.stdout

    store = EmbeddingStore(tmp_path / "store")
    with store.connect() as con:
        assert con.execute("SELECT partition, count(*) FROM embeddings GROUP BY 1 ORDER BY 1").fetchall() == [
            ("package_summaries.csv", 6), ("python_docs.jsonl", 6)]
        (target_id, target_text), = con.execute(
            "SELECT id, text FROM documents WHERE partition = 'package_summaries.csv' ORDER BY id LIMIT 1"
        ).fetchall()

    search = run([str(Path(sys.executable).with_name("embedding-search")), target_text,
                  "--store", str(tmp_path / "store"), "--top-k", "3", "--json"], command_env)
    assert search.returncode == 0, search.stderr[-3000:]
    hits = [json.loads(line) for line in search.stdout.splitlines()]
    assert len(hits) == 3 and hits[0]["id"] == target_id and hits[0]["text"] == target_text
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4) and hits[1]["score"] < hits[0]["score"]


def test_backfill_command_names_an_unknown_partition(command_env):
    result = run([sys.executable, "-m", "embedding_assets.backfill", "--from", "missing.jsonl"], command_env)
    assert result.returncode == 2
    assert "--from 'missing.jsonl' is not a partition" in result.stderr


def test_search_command_without_a_catalog_says_what_to_do(tmp_path, command_env):
    result = run([str(Path(sys.executable).with_name("embedding-search")), "query",
                  "--store", str(tmp_path / "empty")], command_env)
    assert result.returncode == 2
    assert "no embedding catalog under" in result.stderr and "make demo" in result.stderr
