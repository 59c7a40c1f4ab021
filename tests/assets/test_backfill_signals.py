"""A killed or interrupted backfill (issue 10, item 1): real processes, real signals.

The backfill command runs in a subprocess with a SQLite instance under a temporary
DAGSTER_HOME (the repository's dagster.yaml) and is sent SIGKILL, SIGTERM or SIGINT while
its `embeddings` step encodes, or while it waits for the store's catalog.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus

from embedding_assets.backfill import RUN_PROCESS_TAG
from embedding_core.store import EmbeddingStore
from tests.assets.conftest import SHARDS, write_sample_slice

PROJECT = Path(__file__).resolve().parents[2]
BACKFILL = [sys.executable, "-m", "embedding_assets.backfill", "--max-partitions-per-run", "1"]
ENDED = {DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
# The buckets of the three sample files (bucket-04, -07, -11), named by their files: one run
# each, and no run of an empty bucket before the first that encodes.
SAMPLE_FILES = ("--partitions", ",".join(SHARDS))

pytestmark = pytest.mark.slow


@pytest.fixture
def backfill_env(tmp_path, monkeypatch) -> dict:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))  # dagster.yaml reads it
    # Enough rows that the embeddings step of one shard encodes for a few seconds.
    return {**os.environ, "DAGSTER_HOME": str(home), "EMBEDDING_STORE_ROOT": str(tmp_path / "store"),
            "EMBEDDING_LANDING_DIR": str(write_sample_slice(tmp_path / "landing", rows=400)),
            "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


class Backfill:
    """The backfill command in a subprocess; its output (stdout and stderr) read as it comes."""

    def __init__(self, env: dict, *args: str, command: tuple[str, ...] = tuple(BACKFILL)) -> None:
        self.process = subprocess.Popen([*command, *args], env=env, cwd=PROJECT, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self.reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while not re.search(pattern, self.output):
            assert self.process.poll() is None, f"exited {self.process.returncode}:\n{self.output[-4000:]}"
            assert time.monotonic() < deadline, f"no {pattern!r} in:\n{self.output[-4000:]}"
            time.sleep(0.1)

    def finish(self, timeout_s: float = 600) -> int:
        code = self.process.wait(timeout_s)
        self.reader.join(10)
        return code


def instance_runs(_env: dict) -> list:
    with DagsterInstance.get() as instance:
        return instance.get_runs()


def test_a_killed_backfill_is_marked_failed_and_the_next_one_completes(backfill_env):
    killed = Backfill(backfill_env, *SAMPLE_FILES)
    killed.wait_for(r"landing_buckets - encoding \d+ texts")
    os.kill(killed.process.pid, signal.SIGKILL)
    assert killed.finish() == -signal.SIGKILL
    # As reported: the killed run stays STARTED, its process gone.
    left = [run for run in instance_runs(backfill_env) if run.status == DagsterRunStatus.STARTED]
    assert len(left) == 1 and left[0].tags[RUN_PROCESS_TAG].split(":")[1] == str(killed.process.pid)

    after = Backfill(backfill_env, *SAMPLE_FILES)
    assert after.finish() == 0, after.output[-4000:]
    assert f"run {left[0].run_id} was left STARTED by a process that is gone; marked FAILURE" in after.output
    runs = {run.run_id: run for run in instance_runs(backfill_env)}
    assert runs[left[0].run_id].status == DagsterRunStatus.FAILURE
    with DagsterInstance.get() as instance:
        failure = instance.all_logs(left[0].run_id)[-1]
    assert f"pid {killed.process.pid} on " in failure.message and "is gone" in failure.message
    assert not [run for run in runs.values() if run.status == DagsterRunStatus.STARTED]
    assert sorted(run.tags["dagster/asset_partition_range_start"] for run in runs.values()
                  if run.run_id != left[0].run_id and "dagster/asset_partition_range_start" in run.tags
                  ) == ["bucket-04", "bucket-07", "bucket-11"]
    store = EmbeddingStore(backfill_env["EMBEDDING_STORE_ROOT"])
    assert sorted(v.partition for v in store.embedding_versions() if v.rows == 400) == list(SHARDS)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_an_encoding_backfill_within_10_s_and_its_run_ends_failed(backfill_env, signum):
    backfill = Backfill(backfill_env, *SAMPLE_FILES)
    backfill.wait_for(r"landing_buckets - encoding \d+ texts")
    sent = time.monotonic()
    os.kill(backfill.process.pid, signum)
    code = backfill.finish(timeout_s=10)
    assert time.monotonic() - sent < 10
    assert code == 128 + signum, backfill.output[-4000:]
    runs = instance_runs(backfill_env)
    shard_runs = [run for run in runs if "dagster/asset_partition_range_start" in run.tags]
    # no further run started
    assert len(shard_runs) == 1 and shard_runs[0].status in ENDED, backfill.output[-6000:]
    assert f"backfill: stopped by {signal.Signals(signum).name}; interrupted run(s): " \
           f"{shard_runs[0].run_id} {shard_runs[0].status.value}" in backfill.output
    assert not [run for run in runs if run.status not in ENDED | {DagsterRunStatus.SUCCESS}]


def test_a_backfill_waiting_for_a_held_catalog_names_the_holder_and_sigterm_stops_it(backfill_env, tmp_path):
    store = EmbeddingStore(backfill_env["EMBEDDING_STORE_ROOT"])
    store.embedding_versions()  # creates the catalog
    catalog = str(Path(backfill_env["EMBEDDING_STORE_ROOT"]) / "catalog.ducklake")
    # A foreign process opens the catalog file read-write and keeps it.
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; "
                               f"con = duckdb.connect({catalog!r}); print('held', flush=True); "
                               "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        backfill = Backfill(backfill_env)
        deadline = time.monotonic() + 300
        while not [run for run in instance_runs(backfill_env) if run.status == DagsterRunStatus.STARTED]:
            assert backfill.process.poll() is None and time.monotonic() < deadline, backfill.output[-4000:]
            time.sleep(0.2)
        # model_snapshot now waits for the catalog; within ~30 s the console says who holds it.
        backfill.wait_for(rf"backfill: \d+ s in: run \S+ \(model_snapshot\) is STARTED; the catalog "
                          rf"{re.escape(catalog)} is open in pid {holder.pid} \(python", timeout_s=60)
        sent = time.monotonic()
        backfill.process.send_signal(signal.SIGTERM)
        code = backfill.finish(timeout_s=10)
        assert time.monotonic() - sent < 10
    finally:
        holder.kill()
        holder.wait()
    assert code == 128 + signal.SIGTERM, backfill.output[-4000:]
    runs = instance_runs(backfill_env)
    assert len(runs) == 1 and runs[0].status in ENDED
    assert "backfill: stopped by SIGTERM" in backfill.output
