"""Commits: a conflict with a concurrent writer reruns the transaction, within bounds."""

import duckdb
import pytest

from embedding_core.store import CommitConflictError
from embedding_core.store.catalog import Catalog, lake_name
from embedding_core.store.files import DataPath


@pytest.fixture
def catalog(tmp_path) -> Catalog:
    catalog = Catalog(str(tmp_path / "catalog.ducklake"), DataPath.parse(tmp_path), commit_attempts=3)
    catalog.ensure_schema()
    return catalog


def test_a_conflicting_commit_is_rerun_on_a_fresh_snapshot(catalog):
    attempts = []

    def work(con: duckdb.DuckDBPyConnection) -> str:
        attempts.append(lake_name(con))
        con.execute("INSERT INTO corpus_versions (partition) VALUES ('p')")
        if len(attempts) == 1:
            raise duckdb.TransactionException("Transaction conflict - another transaction changed it")
        return "stored"

    assert catalog.commit(work, what="partition 'p'", message="test") == "stored"
    assert len(attempts) == 2 and attempts[0] != attempts[1]  # a new connection each time
    with catalog.connection() as con:  # the first try left nothing behind
        assert con.execute("SELECT count(*) FROM corpus_versions").fetchone() == (1,)


def test_a_commit_that_keeps_conflicting_raises_a_retryable_error_naming_the_partition(catalog):
    def work(con: duckdb.DuckDBPyConnection) -> None:
        raise duckdb.TransactionException("Transaction conflict - another transaction changed it")

    with pytest.raises(CommitConflictError, match=r"embeddings of partition 'p': .* 3 times; nothing was "
                                                  r"stored, retry the step"):
        catalog.commit(work, what="embeddings of partition 'p'", message="test")


def test_other_transaction_errors_are_not_retried(catalog):
    attempts = []

    def work(con: duckdb.DuckDBPyConnection) -> None:
        attempts.append(1)
        raise duckdb.TransactionException("Current transaction is aborted")

    with pytest.raises(duckdb.TransactionException, match="aborted"):
        catalog.commit(work, what="x", message="test")
    assert attempts == [1]
