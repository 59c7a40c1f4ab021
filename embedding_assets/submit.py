"""Submit backfill runs to a running deployment through its webserver's GraphQL API.

`python -m embedding_assets.backfill --submit URL` uses this instead of executing in process:
the runs go to the deployment's queue, the daemon launches them, and their steps run wherever
the deployment's executor sends them (the Celery workers of `deploy/`). Only the webserver URL
is needed: partitions are added, runs launched and followed over GraphQL.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from embedding_assets.jobs import EMBED_CORPUS, SNAPSHOT_MODEL
from embedding_assets.partitions import (
    PARTITION_RANGE_END_TAG,
    PARTITION_RANGE_START_TAG,
    partition_range_tags,
)

TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}
# How often a backfill waiting on the deployment says what it waits on.
REPORT_EVERY_S = 30.0


class SubmitError(RuntimeError):
    """The webserver refused a request, or a launch failed."""


@dataclass
class SubmittedRun:
    run_id: str
    tags: dict[str, str]
    status: str = "QUEUED"

    @property
    def success(self) -> bool:
        return self.status == "SUCCESS"

    @property
    def label(self) -> str:
        first = self.tags.get(PARTITION_RANGE_START_TAG)
        return f"{first}...{self.tags[PARTITION_RANGE_END_TAG]}" if first else "model_snapshot"


class DagsterWebserver:
    """The few GraphQL calls a backfill needs."""

    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._repo: dict | None = None

    def query(self, query: str, **variables) -> dict:
        body = json.dumps({"query": query, "variables": variables}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=self.timeout) as resp:
            payload = json.loads(resp.read())
        if payload.get("errors"):
            raise SubmitError(f"{self.url}: {payload['errors']}")
        return payload["data"]

    def repository(self) -> dict:
        """The repository selector of the code location that has the embed_corpus job."""
        if self._repo is None:
            data = self.query("""{ repositoriesOrError { __typename
                ... on RepositoryConnection { nodes { name location { name } jobs { name } } }
                ... on PythonError { message } } }""")["repositoriesOrError"]
            for node in data.get("nodes") or []:
                if any(job["name"] == EMBED_CORPUS for job in node["jobs"]):
                    self._repo = {"repositoryName": node["name"],
                                  "repositoryLocationName": node["location"]["name"]}
                    break
            else:
                raise SubmitError(f"no code location at {self.url} has the {EMBED_CORPUS} job: {data}")
        return self._repo

    def partition_keys(self) -> list[str]:
        data = self.query("""query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) {
            __typename ... on AssetNode { partitionKeys } } }""", key={"path": ["corpus"]})
        return list(data["assetNodeOrError"].get("partitionKeys") or [])

    def launch(self, asset_keys: Sequence[str], tags: dict[str, str]) -> SubmittedRun:
        params = {
            "selector": {**self.repository(),
                         "jobName": SNAPSHOT_MODEL if list(asset_keys) == ["model_snapshot"] else EMBED_CORPUS,
                         "assetSelection": [{"path": [key]} for key in asset_keys]},
            "runConfigData": {},
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
        }
        data = self.query("""mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
            __typename ... on LaunchRunSuccess { run { runId } } ... on Error { message }
            ... on RunConfigValidationInvalid { errors { message } } } }""", params=params)
        result = data["launchRun"]
        if result["__typename"] != "LaunchRunSuccess":
            raise SubmitError(f"launching {list(asset_keys)} with {tags}: {result}")
        return SubmittedRun(result["run"]["runId"], dict(tags))

    def status(self, run_id: str) -> str:
        data = self.query("""query($id: ID!) { runOrError(runId: $id) {
            __typename ... on Run { status } } }""", id=run_id)
        return data["runOrError"].get("status", "UNKNOWN")

    def runs_in_progress(self) -> list[tuple[str, str]]:
        """(run id, status) of every run the deployment has started and not finished: the
        holders of its run queue's slots."""
        data = self.query("""{ runsOrError(filter: {statuses: [STARTING, STARTED, CANCELING]}) {
            __typename ... on Runs { results { runId status } } } }""")["runsOrError"]
        return [(run["runId"], run["status"]) for run in data.get("results") or []]

    def terminate(self, run_id: str) -> str:
        """Ask the deployment to end a run (a queued one is canceled at once); the result type."""
        data = self.query("""mutation($id: String!) { terminateRun(runId: $id) { __typename
            ... on TerminateRunFailure { message } ... on PythonError { message } } }""", id=run_id)
        return data["terminateRun"]["__typename"]

    def waiting_report(self, runs: Sequence[SubmittedRun], waited_s: float) -> str:
        """What the unfinished runs wait on: a QUEUED run waits for a slot of the deployment's
        run queue (max_concurrent_runs), held by the runs in progress, named here."""
        pending = [run for run in runs if run.status not in TERMINAL]
        queued = [run for run in pending if run.status == "QUEUED"]
        line = f"backfill: waited {waited_s:.0f} s: " + ", ".join(
            f"run {run.run_id} ({run.label}) {run.status}" for run in pending)
        if queued:
            ours = {run.run_id for run in runs}
            holders = [f"run {run_id} ({status}{', ours' if run_id in ours else ''})"
                       for run_id, status in self.runs_in_progress()]
            line += ("; the deployment's run slots are held by " + ", ".join(holders) if holders
                     else "; no run is in progress: is the deployment's daemon running?")
        return line

    def wait(self, runs: Sequence[SubmittedRun], timeout: float, poll: float = 2.0,
             report_every: float = REPORT_EVERY_S) -> None:
        """Follow the runs until each has ended (or `timeout` seconds have passed), saying
        every `report_every` seconds what the unfinished ones wait on."""
        started = time.monotonic()
        next_report = started + report_every
        while True:
            for run in runs:
                if run.status not in TERMINAL:
                    run.status = self.status(run.run_id)
            if all(run.status in TERMINAL for run in runs):
                return
            now = time.monotonic()
            if now - started > timeout:
                pending = [r.run_id for r in runs if r.status not in TERMINAL]
                raise SubmitError(f"runs still not finished after {timeout:.0f} s: {pending}")
            if now >= next_report:
                print(self.waiting_report(runs, now - started), file=sys.stderr, flush=True)
                next_report = now + report_every
            time.sleep(poll)


def submit_backfill(
    url: str, select, chunk, tags: dict[str, str],
    timeout: float = 3600.0, runs: list[SubmittedRun] | None = None,
) -> tuple[list[str], list[SubmittedRun]]:
    """Run `model_snapshot`, then `corpus` + `embeddings` for
    the partitions `select(all_keys)` picks, one run per `chunk(all_keys, selected)` range.
    Returns the selected partitions and the runs, each with its final status; each run is
    appended to `runs` as soon as it is launched (so an interrupted caller can end them)."""
    server = DagsterWebserver(url)
    runs = [] if runs is None else runs
    all_keys = server.partition_keys()
    selected = select(all_keys)
    runs.append(server.launch(["model_snapshot"], tags))
    server.wait(runs, timeout)
    if runs[0].success:
        for keys in chunk(all_keys, selected):
            runs.append(server.launch(["corpus", "embeddings"], {**tags, **partition_range_tags(keys[0], keys[-1])}))
        server.wait(runs[1:], timeout)
    return selected, runs


def terminate_unfinished(url: str, runs: Sequence[SubmittedRun]) -> list[str]:
    """End every run of `runs` not known to be finished; "<run id> <result>" of each."""
    server = DagsterWebserver(url, timeout=5.0)
    ended = []
    for run in runs:
        if run.status not in TERMINAL:
            try:
                ended.append(f"{run.run_id} {server.terminate(run.run_id)}")
            except (OSError, SubmitError) as error:
                ended.append(f"{run.run_id} not terminated ({error})")
    return ended
