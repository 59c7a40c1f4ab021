"""`backfill --submit` against a running `dagster dev` (issue 10, item 1): a backfill whose run
waits for a slot of the deployment's run queue says so every 30 s naming the run that holds
the slot, and SIGTERM / Ctrl-C stop it within 10 s, its runs terminated (CANCELED).

The slot holder is made to wait for real: a foreign process keeps the store's DuckDB catalog
file open, so the first backfill's `model_snapshot` run stays STARTED, and with
`max_concurrent_runs: 1` the second backfill's run stays QUEUED behind it.
"""

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from embedding_core.store import EmbeddingStore
from tests.assets.conftest import write_sample_slice
from tests.assets.test_backfill_signals import Backfill
from tests.assets.test_dagster_dev import WORKSPACE, GraphQL, dev_server

PROJECT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture
def one_slot_deployment(tmp_path):
    """`dagster dev` with one run slot; yields (GraphQL client, URL, environment)."""
    def one_slot(config: str) -> str:
        assert "max_concurrent_runs: 2" in config
        return config.replace("max_concurrent_runs: 2", "max_concurrent_runs: 1")

    command = [str(Path(sys.executable).with_name("dagster")), "dev", "-w", WORKSPACE]
    with dev_server(tmp_path, command, write_sample_slice(tmp_path / "landing", rows=4),
                    instance_config=one_slot) as (graphql, port, env):
        yield graphql, f"http://127.0.0.1:{port}", env


def run_statuses(graphql: GraphQL) -> dict[str, str]:
    data = graphql("{ runsOrError { ... on Runs { results { runId status } } } }")["runsOrError"]
    return {run["runId"]: run["status"] for run in data["results"]}


def wait_for_status(graphql: GraphQL, run_id: str, statuses: set[str], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while (status := run_statuses(graphql).get(run_id)) not in statuses:
        assert time.monotonic() < deadline, f"run {run_id} is {status}, not {statuses}"
        time.sleep(0.5)
    return status


def test_a_queued_submit_backfill_names_the_slot_holder_and_signals_cancel_its_runs(one_slot_deployment):
    graphql, url, env = one_slot_deployment
    EmbeddingStore(env["EMBEDDING_STORE_ROOT"]).embedding_versions()  # creates the catalog
    catalog = str(Path(env["EMBEDDING_STORE_ROOT"]) / "catalog.ducklake")
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, time; "
                               f"con = duckdb.connect({catalog!r}); print('held', flush=True); "
                               "time.sleep(900)"], stdout=subprocess.PIPE, text=True)
    first = second = None
    try:
        assert holder.stdout.readline().strip() == "held"
        first = Backfill(env, "--submit", url)
        deadline = time.monotonic() + 300
        while "STARTED" not in run_statuses(graphql).values():
            assert first.process.poll() is None and time.monotonic() < deadline, first.output[-4000:]
            time.sleep(1)
        [holding] = [run_id for run_id, status in run_statuses(graphql).items() if status == "STARTED"]

        second = Backfill(env, "--submit", url)
        second.wait_for(rf"backfill: waited \d+ s: run (\S+) \(model_snapshot\) QUEUED; the deployment's "
                        rf"run slots are held by run {holding} \(STARTED\)", timeout_s=90)
        queued = re.search(r"run (\S+) \(model_snapshot\) QUEUED", second.output).group(1)
        assert queued != holding

        for backfill, run_id, signum in ((second, queued, signal.SIGTERM), (first, holding, signal.SIGINT)):
            sent = time.monotonic()
            backfill.process.send_signal(signum)
            assert backfill.finish(timeout_s=10) == 128 + signum, backfill.output[-4000:]
            assert time.monotonic() - sent < 10
            assert (f"backfill: stopped by {signal.Signals(signum).name}; terminated on {url}: "
                    f"{run_id} TerminateRunSuccess; no further run launched") in backfill.output
            assert wait_for_status(graphql, run_id, {"CANCELED", "FAILURE", "SUCCESS"}, 120) == "CANCELED"
        assert set(run_statuses(graphql).values()) == {"CANCELED"}
    finally:
        for backfill in (first, second):
            if backfill is not None and backfill.process.poll() is None:
                backfill.process.kill()
                backfill.process.wait()
        holder.kill()
        holder.wait()
