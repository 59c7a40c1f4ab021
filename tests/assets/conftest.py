"""Fixtures for the Dagster tests: a small landing folder cut from the sample corpus, a
temporary store and instance, and the sentence-transformers oracle."""

import json
from pathlib import Path

import pytest
from dagster import DagsterInstance, Definitions, instance_for_test
from dagster._core.storage.defs_state.base import set_defs_state_storage

from embedding_assets.backfill import landing_partitions, materialize_selection
from embedding_assets.definitions import SAMPLE_CORPUS_DIR, build_definitions

ROWS_PER_SHARD = 12
SHARDS = ("package_summaries.csv", "python_docs.jsonl", "stdlib_docstrings.txt")


def write_sample_slice(landing: Path, rows: int = ROWS_PER_SHARD) -> Path:
    """The first `rows` records of each sample corpus file, same names and formats."""
    landing.mkdir(parents=True, exist_ok=True)
    for name in SHARDS:
        lines = (Path(SAMPLE_CORPUS_DIR) / name).read_text(encoding="utf-8").splitlines(keepends=True)
        header = 1 if name.endswith(".csv") else 0
        (landing / name).write_text("".join(lines[: rows + header]), encoding="utf-8")
    return landing


# Two python_docs.jsonl rows longer than MiniLM's max_seq_length of 256 tokens ([CLS] and
# [SEP] included): id -> tokens. The slice's ROWS_PER_SHARD rows are shorter (958 tokens in all).
LONG_DOCS = {"pydoc-re-4": 258, "pydoc-formatstrings-11": 911}


def append_long_docs(landing: Path) -> int:
    """Append the `LONG_DOCS` rows of the sample corpus to the slice's python_docs.jsonl;
    how many rows it holds now."""
    sample = (Path(SAMPLE_CORPUS_DIR) / "python_docs.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    with (landing / "python_docs.jsonl").open("a", encoding="utf-8") as docs:
        docs.writelines(line for line in sample if json.loads(line)["id"] in LONG_DOCS)
    return ROWS_PER_SHARD + len(LONG_DOCS)


@pytest.fixture(autouse=True)
def fresh_defs_state_storage():
    """Start every test with no "current" Dagster defs-state storage.

    Dagster keeps it in a context variable set by whichever instance was entered last. A
    schedule context built with ``instance=`` opens its own instance from the ref and only
    closes it on ``__exit__``; left to garbage collection, its reset can land in a later
    test and leave the variable holding a dead weak reference, so loading Definitions fails
    depending on GC timing. The tests enter those contexts (``with build_*_context(...)``);
    this fixture keeps one test's leftovers from reaching the next.
    """
    with set_defs_state_storage(None):
        yield


@pytest.fixture
def landing(tmp_path) -> Path:
    return write_sample_slice(tmp_path / "landing")


@pytest.fixture
def defs(tmp_path, landing) -> Definitions:
    return build_definitions(store_root=str(tmp_path / "store"), landing_dir=str(landing))


@pytest.fixture
def instance():
    with instance_for_test() as instance:
        yield instance


def materialize_everything(defs: Definitions, instance: DagsterInstance) -> list:
    """model_snapshot, then corpus + embeddings of every bucket (as the backfill CLI does)."""
    from dagster import AssetKey

    keys = landing_partitions()
    results = materialize_selection(defs, instance, [AssetKey("model_snapshot")])
    results += materialize_selection(defs, instance, [AssetKey("corpus"), AssetKey("embeddings")], keys)
    assert all(result.success for result in results)
    return results


@pytest.fixture(scope="session")
def oracle(reference):
    """sentence-transformers on the bundled model: the reference the stored vectors must match."""
    return reference
