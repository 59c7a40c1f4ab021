"""`dagster dev` end to end: webserver + daemon on a free port and a temporary DAGSTER_HOME,
the asset graph over GraphQL, and queued materializations that the daemon runs."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.assets.conftest import write_sample_slice

PROJECT = Path(__file__).resolve().parents[2]
WORKSPACE = str(PROJECT / "workspace.yaml")  # dev_server runs in DAGSTER_HOME
REPOSITORY = {"repositoryLocationName": "embedding_pipeline", "repositoryName": "__repository__"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class GraphQL:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/graphql"

    def __call__(self, query: str, **variables) -> dict:
        request = urllib.request.Request(
            self.url, data=json.dumps({"query": query, "variables": variables}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.load(response)
        assert "errors" not in body, body["errors"]
        return body["data"]

    def launch(self, asset: str, partition: str | None = None) -> str:
        """A run of the named job that holds `asset`, for `asset` alone."""
        tags = [{"key": "dagster/partition", "value": partition}] if partition else []
        job = "snapshot_model" if asset == "model_snapshot" else "embed_corpus"
        data = self(
            """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
                 __typename ... on LaunchRunSuccess { run { runId } }
                 ... on PythonError { message } ... on InvalidSubsetError { message } } }""",
            params={"selector": {**REPOSITORY, "jobName": job,
                                 "assetSelection": [{"path": [asset]}]},
                    "executionMetadata": {"tags": tags}},
        )["launchRun"]
        assert data["__typename"] == "LaunchRunSuccess", data
        return data["run"]["runId"]

    def wait_for_run(self, run_id: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self("query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }",
                          id=run_id)["runOrError"]["status"]
            if status in {"SUCCESS", "FAILURE", "CANCELED"}:
                return status
            time.sleep(1)
        raise AssertionError(f"run {run_id} still not finished after {timeout_s} s")


def roomy_instance(text: str) -> str:
    """The project's dagster.yaml (for `dev_server`'s `instance_config`) with four concurrent
    runs and a queue checked every second: a test's small runs do not wait for each other's
    slots or the 5-s default dequeue. Asserts both settings are still there to change."""
    assert "max_concurrent_runs: 2" in text and "class: QueuedRunCoordinator\n" in text
    text = text.replace("max_concurrent_runs: 2", "max_concurrent_runs: 4")
    return text.replace("class: QueuedRunCoordinator", "class: QueuedRunCoordinator\n  config:\n"
                        "    dequeue_interval_seconds: 1")


def interruptible() -> None:
    """Run in the server's process before it starts: SIGINT back to its default. A shell runs a
    background job (`make test &`, nohup) with SIGINT ignored and children inherit that; `dagster
    dev` handles SIGTERM as it handles SIGINT, so it would ignore SIGTERM too, be killed after
    the wait below and leave its temporary instance folder in the project."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def dev_server(tmp_path: Path, command: list[str], landing: Path | None = None,
               instance_config: Callable[[str], str] = lambda text: text, in_project: bool = False,
               port: int | None = None):
    """`command` (dagster dev / dg dev, given `-h 127.0.0.1 -p PORT` at the end) with a fresh
    DAGSTER_HOME (dagster.yaml, passed through `instance_config`), store and landing
    folder under `tmp_path`, in its own process group, killed (the whole group) whatever
    happens. Yields (GraphQL client, port, the server's environment).

    It runs in DAGSTER_HOME, as `make dev` does: `dagster dev` started in the project folder
    warns that the top-level dagster.yaml is not DAGSTER_HOME's; `command` names the workspace
    by its full path (WORKSPACE).

    `in_project`: run in the project folder with DAGSTER_HOME unset, as a user's plain
    `dagster dev` there: Dagster reads the top-level dagster.yaml itself and keeps the runs in a
    temporary .tmp_dagster_home_* folder it removes on exit."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_config((PROJECT / "dagster.yaml").read_text()))
    port = port or free_port()
    env = {key: value for key, value in os.environ.items() if not (in_project and key == "DAGSTER_HOME")}
    env = {**env, **({} if in_project else {"DAGSTER_HOME": str(home)}), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
           "EMBEDDING_STORE_ROOT": str(tmp_path / "store"),
           "EMBEDDING_LANDING_DIR": str(landing or write_sample_slice(tmp_path / "landing", rows=4))}
    log = open(tmp_path / "dev_server.log", "wb")
    process = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        cwd=PROJECT if in_project else home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=interruptible,
    )
    try:
        graphql = GraphQL(port)
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, (tmp_path / "dev_server.log").read_text()[-3000:]
            try:
                if graphql("{ version }")["version"]:
                    break
            except (urllib.error.URLError, ConnectionError, AssertionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        # The code location loads in its own process; wait until its asset nodes appear.
        while not graphql("{ assetNodes { id } }")["assetNodes"]:
            assert time.monotonic() < deadline, "the code location never loaded"
            time.sleep(1)
        yield graphql, port, env
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


@pytest.fixture
def dagster_dev(tmp_path):
    """Plain `dagster dev` in the project folder, DAGSTER_HOME unset (what works without dg):
    the instance is the top-level dagster.yaml's, in a temporary folder that it removes when
    stopped: the checkout is left as it was."""
    before = set(PROJECT.glob(".tmp_dagster_home_*"))
    with dev_server(tmp_path, [str(Path(sys.executable).with_name("dagster")), "dev"],
                    in_project=True) as (graphql, _, _):
        yield graphql, tmp_path
    assert set(PROJECT.glob(".tmp_dagster_home_*")) <= before


CHECK_STATUSES = """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
    assetChecksOrError { ... on AssetChecks { checks { name partitionStatuses {
      ... on AssetCheckDefaultPartitionStatuses { succeededPartitions failedPartitions } } } } } } } }"""


def check_statuses(graphql: GraphQL, asset: str) -> dict[str, tuple[list[str], list[str]]]:
    """Check name -> (succeeded partitions, failed partitions), as the UI colours them."""
    checks = graphql(CHECK_STATUSES, key={"path": [asset]})["assetNodeOrError"]["assetChecksOrError"]["checks"]
    return {c["name"]: (sorted(c["partitionStatuses"]["succeededPartitions"]),
                        sorted(c["partitionStatuses"]["failedPartitions"])) for c in checks}


def stop_sensor(graphql: GraphQL, name: str) -> None:
    """Stop a sensor as the UI's toggle does; asserts it is stopped."""
    sensor = graphql("""query($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) {
                          ... on Sensor { sensorState { id } } } }""",
                     selector={**REPOSITORY, "sensorName": name})["sensorOrError"]
    stopped = graphql("""mutation($id: String!) { stopSensor(id: $id) {
                           ... on StopSensorMutationResult { instigationState { status } } } }""",
                      id=sensor["sensorState"]["id"])["stopSensor"]
    assert stopped == {"instigationState": {"status": "STOPPED"}}, stopped


@pytest.mark.slow
@pytest.mark.timeout(1800)  # dagster dev and several runs, each allowed 300 s
def test_dagster_dev_serves_the_graph_and_runs_queued_materializations(dagster_dev):
    graphql, tmp_path = dagster_dev
    # The instance is the project's dagster.yaml, not a bare default one.
    info = graphql("{ instance { info runQueuingSupported } }")["instance"]
    assert info["runQueuingSupported"] and "max_concurrent_runs: 2" in info["info"], info
    assert f"{PROJECT}/.tmp_dagster_home_" in info["info"], info["info"][:2000]
    nodes = graphql("{ assetNodes { assetKey { path } dependencyKeys { path } groupName } }")["assetNodes"]
    graph = {node["assetKey"]["path"][0]: (node["groupName"], sorted(dep["path"][0] for dep in node["dependencyKeys"]))
             for node in nodes}
    assert graph == {"corpus": ("ingest", []), "model_snapshot": ("models", []),
                     "embeddings": ("vectors", ["corpus", "model_snapshot"]),
                     "vector_index": ("vectors", ["embeddings"]),
                     "serving_version": ("vectors", ["embeddings", "model_snapshot", "vector_index"]),
                     "store_maintenance": ("maintenance", [])}

    # This test launches every run itself: the automation sensor (running by default, every
    # 30 s) would otherwise embed messy_rows.jsonl's bucket once its corpus lands, racing the
    # checks below.
    stop_sensor(graphql, "embeddings_automation")

    # The partitions are the 16 landing buckets, whatever the folder holds.
    partitions = graphql("""query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) {
        ... on AssetNode { partitionKeys } } }""", key={"path": ["corpus"]})["assetNodeOrError"]
    assert partitions["partitionKeys"] == [f"bucket-{i:02d}" for i in range(16)]

    # A second landing file with rejected rows, in another bucket: its bucket's rows_valid
    # check fails, python_docs.jsonl's bucket's passes.
    landing = tmp_path / "landing"
    (landing / "messy_rows.jsonl").write_text('{"id": "m1", "text": "Fine."}\n{"text": "no id"}\n')
    docs, messy = "bucket-04", "bucket-05"  # bucket_of(python_docs.jsonl), bucket_of(messy_rows.jsonl)

    # The queue starts the three independent runs as slots free up; embeddings waits for its inputs.
    independent = [graphql.launch("model_snapshot"), graphql.launch("corpus", docs), graphql.launch("corpus", messy)]
    assert [graphql.wait_for_run(run_id, timeout_s=300) for run_id in independent] == ["SUCCESS"] * 3
    assert graphql.wait_for_run(graphql.launch("embeddings", docs), timeout_s=300) == "SUCCESS"
    runs = graphql("{ runsOrError { ... on Runs { results { jobName } } } }")["runsOrError"]["results"]
    assert sorted(run["jobName"] for run in runs) == ["embed_corpus"] * 3 + ["snapshot_model"]

    assert check_statuses(graphql, "corpus") == {"rows_valid": ([docs], [messy])}
    embeddings_checks = check_statuses(graphql, "embeddings")
    assert embeddings_checks["rows_match_corpus"] == ([docs], [])
    assert embeddings_checks["embeddings_match_model"] == ([docs], [])
    # MiniLM's vectors are not normalized by this pipeline (EMBEDDING_NORMALIZE unset): not green.
    assert embeddings_checks["unit_norm"] == ([], [])

    from embedding_core.store import EmbeddingStore

    store = EmbeddingStore(tmp_path / "store")
    with store.connect() as con:
        assert con.execute("SELECT count(*), min(partition) FROM embeddings").fetchone() == (4, "python_docs.jsonl")
        assert con.execute("SELECT partition, count(*) FROM documents GROUP BY 1 ORDER BY 1").fetchall() == [
            ("messy_rows.jsonl", 1), ("python_docs.jsonl", 4)]
