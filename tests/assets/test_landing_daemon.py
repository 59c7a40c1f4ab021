"""The landing sensor through the real daemon (`dagster dev` on a temporary instance, the
sensor turned on over GraphQL as the UI's toggle does): Dagster's run keys, cursors and
tick loop decide what runs. Each change to the landing folder ends with the store holding
exactly the folder's texts, each with its vector."""

import json
import shutil
import sys
import time
from pathlib import Path

import pytest

from tests.assets.test_dagster_dev import REPOSITORY, WORKSPACE, GraphQL, dev_server, roomy_instance

FILES = {
    "alpha.jsonl": [("a1", "The cat sat on the mat."), ("a2", "A dog barked at the mailman.")],
    "beta.jsonl": [("b1", "Rain is expected tomorrow afternoon."), ("b2", "The stock market fell sharply.")],
    "gamma.jsonl": [("g1", "Python lists are mutable sequences."), ("g2", "Tuples cannot be changed.")],
}
ALPHA_B = [("a1", "An entirely different first text."), ("a3", "And a new third row.")]


def write(landing: Path, name: str, rows: list[tuple[str, str]]) -> None:
    (landing / name).write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in rows))


def folder_rows(landing: Path) -> set[tuple[str, str, str]]:
    return {(path.name, row["id"], row["text"]) for path in landing.glob("*.jsonl")
            for row in map(json.loads, path.read_text().splitlines())}


def store_rows(store_root: Path) -> tuple[set, set] | None:
    """(partition, id, text) of the current documents, and of those that have a vector."""
    if not (store_root / "catalog.ducklake").exists():
        return None
    from embedding_core.store import EmbeddingStore

    with EmbeddingStore(store_root).connect() as con:
        documents = set(con.execute("SELECT partition, id, text FROM documents").fetchall())
        embedded = set(con.execute(
            """SELECT d.partition, d.id, d.text FROM documents d JOIN embeddings e
               ON e.partition = d.partition AND e.id = d.id AND e.text_sha256 = d.text_sha256
               JOIN current_corpus_versions c ON c.partition = d.partition
               AND c.corpus_version = e.corpus_version""").fetchall())
    return documents, embedded


def landing_runs(graphql: GraphQL) -> list[dict]:
    return graphql("""{ runsOrError(filter: {tags: [{key: "embedding/trigger", value: "landing-sensor"}]}) {
        ... on Runs { results { runId jobName status tags { key value } } } } }""")["runsOrError"]["results"]


def wait_until(predicate, what: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"not reached in {timeout_s} s: {what}"
        time.sleep(2)


def settled(graphql: GraphQL, runs_before: int) -> bool:
    """A new landing run happened and none is in flight."""
    runs = landing_runs(graphql)
    return len(runs) > runs_before and all(run["status"] in {"SUCCESS", "FAILURE", "CANCELED"} for run in runs)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # several daemon rounds, each allowed 300 s
def test_every_landing_change_is_embedded_through_the_daemon(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDDING_LANDING_SENSOR_INTERVAL_S", "3")
    landing = tmp_path / "landing"
    landing.mkdir()
    for name, rows in FILES.items():
        write(landing, name, rows)
    store_root = tmp_path / "store"
    dagster = [str(Path(sys.executable).with_name("dagster")), "dev", "-w", WORKSPACE]
    with dev_server(tmp_path, dagster, landing=landing, instance_config=roomy_instance) as (graphql, _, _):
        sensor_id = graphql("""query($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) {
            ... on Sensor { id sensorState { status } } } }""",
                            selector={**REPOSITORY, "sensorName": "corpus_landing_sensor"})["sensorOrError"]
        assert sensor_id["sensorState"]["status"] == "STOPPED"
        started = graphql("""mutation($selector: SensorSelector!) { startSensor(sensorSelector: $selector) {
            ... on Sensor { sensorState { status } } } }""",
                          selector={**REPOSITORY, "sensorName": "corpus_landing_sensor"})["startSensor"]
        assert started == {"sensorState": {"status": "RUNNING"}}

        def matches() -> bool:
            found = store_rows(store_root)
            return found is not None and found[0] == folder_rows(landing) == found[1]

        def step(change, what: str) -> None:
            before = len(landing_runs(graphql))
            change()
            wait_until(lambda: settled(graphql, before) and matches(), what)

        # The first tick asks for the model snapshot, the next one embeds every file.
        wait_until(lambda: settled(graphql, 0) and matches(), "first ingest")
        from embedding_core.store import EmbeddingStore

        first_alpha = EmbeddingStore(store_root).landing_records()["alpha.jsonl"].corpus_version

        # One batch of changes: alpha A -> B, beta deleted, gamma renamed to delta.
        before = len(landing_runs(graphql))
        write(landing, "alpha.jsonl", ALPHA_B)
        (landing / "beta.jsonl").unlink()
        (landing / "gamma.jsonl").rename(landing / "delta.jsonl")
        wait_until(lambda: settled(graphql, before)
                   and EmbeddingStore(store_root).landing_records()["beta.jsonl"].state == "deleted",
                   "alpha B, beta deleted, gamma renamed")
        documents, embedded = store_rows(store_root)
        # A deleted file keeps its vectors (landing folders are cleaned after ingestion) ...
        assert documents == embedded == folder_rows(landing) | {
            ("beta.jsonl", i, t) for i, t in FILES["beta.jsonl"]}
        # ... a renamed one is retired: its rows live on under the new name.
        record = EmbeddingStore(store_root).landing_records()["gamma.jsonl"]
        assert (record.state, record.detail) == ("retired", "its content is in delta.jsonl")

        # alpha back to A (a change like any other: it runs), beta restored.
        step(lambda: (write(landing, "alpha.jsonl", FILES["alpha.jsonl"]),
                      write(landing, "beta.jsonl", FILES["beta.jsonl"])), "alpha A again, beta restored")
        records = EmbeddingStore(store_root).landing_records()
        assert (records["alpha.jsonl"].state, records["alpha.jsonl"].corpus_version) == ("stored", first_alpha)
        assert records["beta.jsonl"].state == "stored"

        # The store deleted and made anew under the same instance: everything again.
        step(lambda: shutil.rmtree(store_root), "store recreated")

        runs = landing_runs(graphql)
        assert {run["status"] for run in runs} == {"SUCCESS"}, runs
        # One run per change (and one model_snapshot per store), not one per file.
        jobs = sorted(run["jobName"] for run in runs)
        assert jobs == ["embed_corpus"] * 4 + ["snapshot_model"] * 2, jobs

        # The automation sensor (embeddings_automation, on by default) keeps vector_index
        # current: its index comes to cover every current version of the recreated store,
        # and search answers from it.
        def indexed() -> bool:
            store = EmbeddingStore(store_root)
            with store.connect() as con:
                current = {v for (v,) in con.execute("SELECT version_id FROM current_embedding_versions").fetchall()}
            return any(set(record.versions) == current for record in store.vector_indexes())

        wait_until(indexed, "vector_index brought up to date by the automation sensor")
        store = EmbeddingStore(store_root)
        (record,) = store.vector_indexes()
        assert record.rows == len(folder_rows(landing))
        assert store.searcher(record.model).uses_index
