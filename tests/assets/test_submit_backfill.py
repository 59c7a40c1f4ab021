"""`backfill --submit URL` against a running `dagster dev`: one Dagster asset backfill.

1. Started while nothing listens at the URL yet, the command retries (saying so), then,
   once the deployment is up, launches one backfill; the *Backfills* list shows it with the
   selected partitions, its runs tagged with its id. One landing file is not UTF-8: its
   partition alone fails, and the command names it and exits 1. Once the file is fixed, the
   failed partition is re-executed as the Backfills tab's "Re-execute from failure" does, and
   the store holds every landing row once. Meanwhile the CI workflow's steps, given the
   deployment's URL, launch one more backfill, of other partitions, that completes.
2. Two backfills that cannot finish (a foreign process holds the store's DuckDB catalog, so
   their runs wait): one is canceled through GraphQL, as the UI's button does; the other's
   command gets SIGTERM and cancels it itself. Both end CANCELED. The commands exit non-zero
   with one line saying so, and no traceback.
3. Nothing ever listens: the command gives up after --retry-for, with one line naming the URL
   and the cause.

The deployment's instance is the project's dagster.yaml with room for four runs at once and
a queue checked every second, so a backfill's runs do not wait for each other's slots; the
automation sensor is stopped (its vector_index runs are test_landing_daemon.py's).
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from embedding_core.landing import bucket_of
from embedding_core.store import EmbeddingStore
from tests.assets.conftest import SHARDS, write_sample_slice
from tests.assets.test_backfill_signals import Backfill
from tests.assets.test_dagster_dev import (
    WORKSPACE,
    GraphQL,
    dev_server,
    free_port,
    roomy_instance,
    stop_sensor,
)
from tests.assets.test_workflow import run_workflow

# A deployment, the workflow and several backfills, the first allowed 900 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def Submit(env: dict, *args: str) -> Backfill:  # noqa: N802 - a Backfill of the plain command
    return Backfill(env, *args, command=(sys.executable, "-m", "embedding_assets.backfill"))


BACKFILLS = """{ partitionBackfillsOrError { ... on PartitionBackfills { results { id status
    tags { key value } assetBackfillData { assetBackfillStatuses {
      ... on AssetPartitionsStatusCounts { assetKey { path } numPartitionsTargeted numPartitionsMaterialized
            numPartitionsFailed }
      ... on UnpartitionedAssetStatus { assetKey { path } materialized failed } } } } } } }"""


def backfills(graphql: GraphQL) -> dict[str, dict]:
    return {b["id"]: b for b in graphql(BACKFILLS)["partitionBackfillsOrError"]["results"]}


def statuses(backfill: dict) -> dict[str, tuple]:
    """asset -> (targeted, materialized, failed), or (materialized, failed) if unpartitioned."""
    return {s["assetKey"]["path"][0]: (s["numPartitionsTargeted"], s["numPartitionsMaterialized"],
                                       s["numPartitionsFailed"]) if "numPartitionsTargeted" in s
            else (s["materialized"], s["failed"])
            for s in backfill["assetBackfillData"]["assetBackfillStatuses"]}


def wait_for_backfill(graphql: GraphQL, backfill_id: str, statuses_: set[str], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while (status := backfills(graphql)[backfill_id]["status"]) not in statuses_:
        assert time.monotonic() < deadline, f"backfill {backfill_id} still {status}"
        time.sleep(1)
    return status


def launched_id(command: Backfill) -> str:
    command.wait_for(r"backfill (\S+) launched", timeout_s=120)
    return re.search(r"backfill (\S+) launched", command.output).group(1)


def test_a_submitted_backfill_is_one_dagster_backfill_retried_canceled_and_bounded(tmp_path):
    landing = write_sample_slice(tmp_path / "landing", rows=4)
    assert len({bucket_of(name, 16) for name in SHARDS}) == 3  # three partitions
    broken = landing / SHARDS[1]
    fixed = broken.read_bytes()
    broken.write_bytes(b'{"id": "a", "text": "caf\xe9"}\n')
    bucket = bucket_of(SHARDS[1], 16)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command_env = {**os.environ, "EMBEDDING_LANDING_DIR": str(landing),
                   "EMBEDDING_STORE_ROOT": str(tmp_path / "store"), "HF_HUB_OFFLINE": "1"}

    # 3. Nothing ever listens at another URL: the command gives up on its own, meanwhile.
    nowhere = f"http://127.0.0.1:{free_port()}"
    gone = subprocess.Popen([sys.executable, "-m", "embedding_assets.backfill", "--submit", nowhere,
                             "--retry-for", "5"], env=command_env, stderr=subprocess.PIPE, text=True)

    # 1. The command starts first: nothing listens yet, so it retries until dagster dev is up.
    first = Submit(command_env, "--submit", url, "--partitions", ",".join(SHARDS), "--retry-for", "400")
    first.wait_for(rf"backfill: {re.escape(url)} unreachable \(connection refused\); retrying for \d+ s more",
                   timeout_s=120)
    dagster = [str(Path(sys.executable).with_name("dagster")), "dev", "-w", WORKSPACE]
    with dev_server(tmp_path, dagster, landing=landing, port=port, instance_config=roomy_instance) as (
            graphql, _, env):
        stop_sensor(graphql, "embeddings_automation")
        # The bad file fails its partition only: the command names it and exits 1.
        assert first.finish(timeout_s=900) == 1, first.output[-4000:]
        [(backfill_id, backfill)] = backfills(graphql).items()
        assert backfill["status"] == "COMPLETED_FAILED"
        assert statuses(backfill) == {"model_snapshot": (True, False), "corpus": (3, 2, 1),
                                      "embeddings": (3, 2, 1)}
        assert {"key": "embedding/trigger", "value": "backfill-cli"} in backfill["tags"]
        assert f"backfill {backfill_id} launched on {url}: model_snapshot, then 3 partition(s)" in first.output
        assert f"backfill {backfill_id} COMPLETED_FAILED: failed partition(s): {bucket} " in first.output, \
            first.output[-3000:]
        assert "Traceback" not in first.output
        # The daemon launched the runs, each tagged with the backfill's id; only the bad file's failed.
        runs = graphql("""{ runsOrError { ... on Runs { results { status tags { key value } } } } }""")
        runs = [(run["status"], {t["key"]: t["value"] for t in run["tags"]}) for run in runs["runsOrError"]["results"]]
        assert len(runs) >= 2 and all(tags.get("dagster/backfill") == backfill_id for _, tags in runs), runs
        assert [tags.get("dagster/asset_partition_range_start") for status, tags in runs
                if status != "SUCCESS"] == [bucket], runs

        # The file fixed, the backfill's failed partition is re-executed (a new backfill of that
        # one partition) while the CI workflow's steps with DAGSTER_WEBSERVER_URL set launch a
        # backfill of the partitions after it (--from/--to): both complete.
        broken.write_bytes(fixed)
        retried = graphql("""mutation($id: String!) { reexecutePartitionBackfill(reexecutionParams:
            { parentRunId: $id, strategy: FROM_FAILURE }) { __typename ... on LaunchBackfillSuccess {
            backfillId } } }""", id=backfill_id)["reexecutePartitionBackfill"]
        assert retried["__typename"] == "LaunchBackfillSuccess", retried
        after = sorted(bucket_of(name, 16) for name in SHARDS if bucket_of(name, 16) > bucket)
        _, ran = run_workflow(tmp_path / "workflow", {
            "vars": {"DAGSTER_HOME": str(tmp_path / "workflow" / "dagster_home"),
                     "DAGSTER_WEBSERVER_URL": url, "EMBEDDING_STORE_ROOT": env["EMBEDDING_STORE_ROOT"],
                     "EMBEDDING_LANDING_DIR": str(landing)},
            "secrets": {}, "inputs": {"model_revision": "", "from": after[0], "to": after[-1]}})
        [by_workflow] = set(backfills(graphql)) - {backfill_id, retried["backfillId"]}
        targeted = int(after[-1].split("-")[1]) - int(after[0].split("-")[1]) + 1
        assert re.search(rf"backfill {by_workflow} COMPLETED_SUCCESS after \d+ s: {targeted}/{targeted} "
                         r"partitions done, 0 failed", ran[-1][1].stderr), ran[-1][1].stderr[-3000:]
        assert wait_for_backfill(graphql, retried["backfillId"], {"COMPLETED_SUCCESS", "COMPLETED_FAILED",
                                                                  "FAILED", "CANCELED"}, 600) == "COMPLETED_SUCCESS"
        retry = backfills(graphql)[retried["backfillId"]]
        assert statuses(retry) == {"corpus": (1, 1, 0), "embeddings": (1, 1, 0)}
        assert {"key": "dagster/parent_backfill_id", "value": backfill_id} in retry["tags"]
        store = EmbeddingStore(env["EMBEDDING_STORE_ROOT"])
        with store.connect() as con:  # every landing row, once, with its vector
            assert con.execute("SELECT count(*), count(DISTINCT partition || id) FROM documents").fetchone() \
                == (4 * len(SHARDS),) * 2
            assert con.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 4 * len(SHARDS)

        # 2. Runs that cannot finish: a foreign process holds the store's catalog file. Two
        # backfills at once: one canceled through GraphQL, the other's command stopped by SIGTERM.
        catalog = str(Path(env["EMBEDDING_STORE_ROOT"]) / "catalog.ducklake")
        holder = subprocess.Popen([sys.executable, "-c", "import duckdb, time; "
                                   f"con = duckdb.connect({catalog!r}); print('held', flush=True); "
                                   "time.sleep(900)"], stdout=subprocess.PIPE, text=True)
        canceled = stopped = None
        try:
            assert holder.stdout.readline().strip() == "held"
            canceled = Submit(command_env, "--submit", url, "--partitions", SHARDS[0])
            stopped = Submit(command_env, "--submit", url, "--partitions", SHARDS[2])
            canceled_id, stopped_id = launched_id(canceled), launched_id(stopped)
            result = graphql("""mutation($id: String!) { cancelPartitionBackfill(backfillId: $id) {
                __typename } }""", id=canceled_id)
            assert result["cancelPartitionBackfill"]["__typename"] == "CancelBackfillSuccess"
            stopped.process.send_signal(signal.SIGTERM)
            assert stopped.finish(timeout_s=30) == 128 + signal.SIGTERM, stopped.output[-4000:]
            assert (f"backfill: stopped by SIGTERM; backfill {stopped_id} CancelBackfillSuccess on {url}"
                    in stopped.output), stopped.output[-3000:]
            assert canceled.finish(timeout_s=300) == 1, canceled.output[-4000:]
            assert f"backfill {canceled_id} CANCELED" in canceled.output, canceled.output[-3000:]
            assert "Traceback" not in canceled.output + stopped.output
            for backfill_id_ in (canceled_id, stopped_id):
                assert wait_for_backfill(graphql, backfill_id_, {"CANCELED", "COMPLETED_SUCCESS", "FAILED"},
                                         300) == "CANCELED"
        finally:
            for command in (canceled, stopped):
                if command is not None and command.process.poll() is None:
                    command.process.kill()
                    command.process.wait()
            holder.kill()
            holder.wait()

    # 3. The command that never found a deployment: one line naming the URL and the cause.
    _, stderr = gone.communicate(timeout=120)
    assert gone.returncode == 75, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if not line.startswith(f"backfill: {nowhere} unreachable (")]
    assert errors == [f"backfill: {nowhere} unreachable for 5 s: connection refused"], stderr[-3000:]
