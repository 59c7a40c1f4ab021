"""`dagster dev` end to end: webserver + daemon on a free port and a temporary DAGSTER_HOME,
the asset graph over GraphQL, and queued materializations that the daemon runs."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.assets.conftest import write_sample_slice

PROJECT = Path(__file__).resolve().parents[2]
REPOSITORY = {"repositoryLocationName": "embeddings", "repositoryName": "__repository__"}


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
        tags = [{"key": "dagster/partition", "value": partition}] if partition else []
        data = self(
            """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
                 __typename ... on LaunchRunSuccess { run { runId } }
                 ... on PythonError { message } ... on InvalidSubsetError { message } } }""",
            params={"selector": {**REPOSITORY, "jobName": "__ASSET_JOB",
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


@pytest.fixture
def dagster_dev(tmp_path):
    """`dagster dev` in its own process group, killed (the whole group) whatever happens."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT / "instance" / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home),
           "EMBEDDING_STORE_ROOT": str(tmp_path / "store"),
           "EMBEDDING_LANDING_DIR": str(write_sample_slice(tmp_path / "landing", rows=4))}
    log = open(tmp_path / "dagster_dev.log", "wb")
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster")), "dev", "-w", "workspace.yaml",
         "-h", "127.0.0.1", "-p", str(port)],
        cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        graphql = GraphQL(port)
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, (tmp_path / "dagster_dev.log").read_text()[-3000:]
            try:
                if graphql("{ version }")["version"]:
                    break
            except (urllib.error.URLError, ConnectionError, AssertionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        yield graphql, tmp_path
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


@pytest.mark.slow
def test_dagster_dev_serves_the_graph_and_runs_queued_materializations(dagster_dev):
    graphql, tmp_path = dagster_dev
    # The code location loads in its own process; poll until its asset nodes appear.
    deadline = time.monotonic() + 120
    while not (nodes := graphql("{ assetNodes { assetKey { path } dependencyKeys { path } } }")["assetNodes"]):
        assert time.monotonic() < deadline, "the code location never loaded"
        time.sleep(1)
    graph = {node["assetKey"]["path"][0]: sorted(dep["path"][0] for dep in node["dependencyKeys"])
             for node in nodes}
    assert graph == {"corpus": [], "model_snapshot": [], "embeddings": ["corpus", "model_snapshot"],
                     "store_maintenance": []}

    added = graphql(
        """mutation($repo: RepositorySelector!) {
             addDynamicPartition(repositorySelector: $repo, partitionsDefName: "corpus_shards",
                                 partitionKey: "python_docs.jsonl") { __typename } }""",
        repo=REPOSITORY,
    )["addDynamicPartition"]
    assert added["__typename"] == "AddDynamicPartitionSuccess"

    assert graphql.wait_for_run(graphql.launch("model_snapshot"), timeout_s=300) == "SUCCESS"
    assert graphql.wait_for_run(graphql.launch("corpus", "python_docs.jsonl"), timeout_s=300) == "SUCCESS"
    assert graphql.wait_for_run(graphql.launch("embeddings", "python_docs.jsonl"), timeout_s=300) == "SUCCESS"

    from embedding_core.store import EmbeddingStore

    store = EmbeddingStore(tmp_path / "store")
    with store.connect() as con:
        assert con.execute("SELECT count(*), min(partition) FROM embeddings").fetchone() == (4, "python_docs.jsonl")
