"""`python -m embedding_assets.backfill --submit URL`: one Dagster asset backfill on a deployment.

The backfill targets `model_snapshot` and the selected landing buckets of `corpus` and
`embeddings`. The deployment's daemon runs it like a backfill launched from the UI: it is
listed under *Backfills* with each partition's status, it can be canceled there, and its failed
partitions can be re-executed there. Its runs follow the assets' backfill policy. Their steps
run wherever the deployment's executor sends them (the Celery workers of `deploy/`).

What stays here, and why (Dagster has no command that does it): a CI job only has the
webserver's URL, must wait for the outcome, and must survive a deployment that is briefly
unreachable. So this module launches the backfill through Dagster's GraphQL API (with the `gql`
client that `dagster-graphql` uses). It prints progress every `REPORT_EVERY_S` seconds and
retries with backoff while the webserver is unreachable or answers 5xx, for at most
`retry_for_s` seconds. It exits with one line naming the failed partitions, or the URL and
the cause.

A rerun of the same command resumes rather than duplicates. While a backfill of the same
selection is in progress, the rerun follows that backfill. Otherwise it launches a new one,
and the store skips every text it already holds.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import requests
from gql import Client, GraphQLRequest
from gql.transport.exceptions import (
    TransportConnectionFailed,
    TransportProtocolError,
    TransportQueryError,
    TransportServerError,
)
from gql.transport.requests import RequestsHTTPTransport

from embedding_assets.partitions import contiguous_chunks
from embedding_assets.signals import BackfillInterrupted, StopOnSignal

# How often a backfill that waits on the deployment says where it stands.
REPORT_EVERY_S = 30.0
# How long the command retries an unreachable deployment by default (EMBEDDING_SUBMIT_RETRY_S).
DEFAULT_RETRY_FOR_S = 600.0
# The backfill's selection, so a rerun finds the backfill it launched.
SELECTION_TAG = "embedding/backfill-selection"
SHARD_ASSETS = ("corpus", "embeddings")
FINISHED = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


class DeploymentError(RuntimeError):
    """The deployment refused a request, or stayed unreachable: a one-line message."""


class Unreachable(Exception):
    """One request found the deployment unreachable or failing (5xx): worth retrying."""


@dataclass(frozen=True)
class Progress:
    """Where a backfill stands: its status and the partitions of its shard assets."""

    status: str
    total: int
    done: int
    failed: int
    in_progress: int
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def line(self, backfill_id: str, waited_s: float) -> str:
        return (f"backfill {backfill_id} {self.status} after {waited_s:.0f} s: {self.done}/{self.total} "
                f"partitions done, {self.failed} failed, {self.in_progress} in progress")


class Deployment:
    """The few GraphQL calls of a CI backfill, against the webserver at `url`."""

    def __init__(self, url: str, retry_for_s: float = DEFAULT_RETRY_FOR_S, request_timeout_s: float = 30.0,
                 say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)):
        self.url = url.rstrip("/")
        self.retry_for_s = retry_for_s
        self.say = say
        transport = RequestsHTTPTransport(url=f"{self.url}/graphql", timeout=request_timeout_s, retries=0)
        self.client = Client(transport=transport, fetch_schema_from_transport=False)

    def query(self, document: str, **variables) -> dict:
        """One request; `Unreachable` when worth retrying, `DeploymentError` when not."""
        try:
            data = self.client.execute(GraphQLRequest(document, variable_values=variables))
        except TransportConnectionFailed as error:  # refused, reset, timed out
            raise Unreachable(_cause(error.__cause__ or error)) from None
        except TransportServerError as error:
            if error.code is None or error.code >= 500:
                raise Unreachable(f"HTTP {error.code}") from None
            raise DeploymentError(f"{self.url} refused the request: HTTP {error.code}") from None
        except TransportQueryError as error:
            if storage_down(str(error)):
                raise Unreachable(f"its instance storage failed: {_first_line(error)}") from None
            raise DeploymentError(f"{self.url} answered with an error: {_first_line(error)}") from None
        except TransportProtocolError as error:
            raise DeploymentError(f"{self.url} is not a Dagster webserver: {_first_line(error)}") from None
        for value in data.values():  # a resolver's PythonError: retried when the storage failed
            if isinstance(value, dict) and value.get("__typename") == "PythonError":
                message = value.get("message") or ""
                if storage_down(message):
                    raise Unreachable(f"its instance storage failed: {_first_line(message)}")
                raise DeploymentError(f"{self.url} answered with an error: {_first_line(message)}")
        return data

    def retrying(self, attempt: Callable[[], object]):
        """`attempt()` until it succeeds; while the deployment is unreachable, again after a
        backoff (1 s doubling to 15 s), for at most `retry_for_s` seconds in a row."""
        deadline = None
        delay = 1.0
        next_report = 0.0
        while True:
            try:
                return attempt()
            except Unreachable as error:
                now = time.monotonic()
                deadline = deadline or now + self.retry_for_s
                if now >= deadline:
                    raise DeploymentError(f"{self.url} unreachable for {self.retry_for_s:.0f} s: {error}") from None
                if now >= next_report:
                    self.say(f"backfill: {self.url} unreachable ({error}); retrying for "
                             f"{deadline - now:.0f} s more")
                    next_report = now + REPORT_EVERY_S
                time.sleep(min(delay, max(deadline - now, 0.1)))
                delay = min(delay * 2, 15.0)

    def __call__(self, document: str, **variables) -> dict:
        return self.retrying(lambda: self.query(document, **variables))

    def partition_keys(self) -> list[str]:
        data = self("""query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) {
            __typename ... on AssetNode { partitionKeys } } }""", key={"path": ["corpus"]})
        keys = data["assetNodeOrError"].get("partitionKeys")
        if not keys:
            raise DeploymentError(f"{self.url} has no partitioned `corpus` asset: {data['assetNodeOrError']}")
        return list(keys)

    def backfill_in_progress(self, selection: str) -> str | None:
        """The id of an unfinished backfill of `selection` (a rerun follows it)."""
        data = self("""query { partitionBackfillsOrError(limit: 100,
                filters: {statuses: [REQUESTED]}) {
            __typename ... on PartitionBackfills { results { id tags { key value } } } } }""")
        for backfill in data["partitionBackfillsOrError"].get("results") or []:
            if {"key": SELECTION_TAG, "value": selection} in backfill["tags"]:
                return backfill["id"]
        return None

    def launch(self, ranges: Sequence[tuple[str, str]], tags: dict[str, str], title: str) -> str:
        """One asset backfill: model_snapshot, then corpus and embeddings over `ranges`."""
        partitions = {"ranges": [{"start": first, "end": last} for first, last in ranges]}
        params = {
            "partitionsByAssets": [{"assetKey": {"path": ["model_snapshot"]}, "partitions": None}]
            + [{"assetKey": {"path": [key]}, "partitions": partitions} for key in SHARD_ASSETS],
            "tags": [{"key": key, "value": value} for key, value in tags.items()],
            "title": title,
        }
        data = self.query("""mutation($params: LaunchBackfillParams!) {
            launchPartitionBackfill(backfillParams: $params) { __typename
              ... on LaunchBackfillSuccess { backfillId } ... on Error { message } } }""", params=params)
        result = data["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise DeploymentError(f"{self.url} refused the backfill: {result.get('message', result)}")
        return result["backfillId"]

    def progress(self, backfill_id: str) -> Progress:
        data = self("""query($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename
            ... on PartitionBackfill { status error { message }
              assetBackfillData { assetBackfillStatuses {
                ... on AssetPartitionsStatusCounts { assetKey { path } numPartitionsTargeted
                      numPartitionsInProgress numPartitionsMaterialized numPartitionsFailed }
                ... on UnpartitionedAssetStatus { assetKey { path } inProgress materialized failed } } } }
            ... on Error { message } } }""", id=backfill_id)["partitionBackfillOrError"]
        if data["__typename"] != "PartitionBackfill":
            raise DeploymentError(f"{self.url} has no backfill {backfill_id}: {data.get('message')}")
        counts = [status for status in data["assetBackfillData"]["assetBackfillStatuses"]
                  if status["assetKey"]["path"] == ["embeddings"]]
        if not counts:
            return Progress(data["status"], 0, 0, 0, 0, (data.get("error") or {}).get("message"))
        [embeddings] = counts
        return Progress(data["status"], embeddings["numPartitionsTargeted"],
                        embeddings["numPartitionsMaterialized"], embeddings["numPartitionsFailed"],
                        embeddings["numPartitionsInProgress"], (data.get("error") or {}).get("message"))

    def failed_partitions(self, selected: Sequence[str]) -> list[str]:
        """The selected partitions whose latest corpus or embeddings attempt failed."""
        failed: set[str] = set()
        for key in SHARD_ASSETS:
            data = self("""query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) {
                ... on AssetNode { assetPartitionStatuses {
                  ... on DefaultPartitionStatuses { failedPartitions } } } } }""", key={"path": [key]})
            failed |= set(data["assetNodeOrError"]["assetPartitionStatuses"].get("failedPartitions") or ())
        return [key for key in selected if key in failed]

    def cancel(self, backfill_id: str) -> str:
        data = self.query("""mutation($id: String!) { cancelPartitionBackfill(backfillId: $id) {
            __typename ... on Error { message } } }""", id=backfill_id)
        return data["cancelPartitionBackfill"]["__typename"]


def storage_down(message: str) -> bool:
    """Whether an error the webserver reports is its instance storage (Postgres) being down."""
    return any(sign in message for sign in ("OperationalError", "could not connect to server",
                                            "server closed the connection", "Connection refused"))


def _first_line(error: object) -> str:
    return (str(error).strip().splitlines() or [""])[0][:300]


def _cause(error: BaseException) -> str:
    """The root of a requests error in a few words: "connection refused", "read timed out"."""
    text = str(error)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if errno:
        return errno.group(1).strip().lower()
    if isinstance(error, requests.exceptions.Timeout):
        return "timed out"
    return f"{type(error).__name__}: {text[:160]}"


def selection_digest(url: str, selected: Sequence[str]) -> str:
    return hashlib.sha256("\n".join([url.rstrip("/"), *SHARD_ASSETS, *sorted(selected)]).encode()).hexdigest()[:16]


def launch_or_follow(deployment: Deployment, all_keys: Sequence[str], selected: Sequence[str],
                     tags: dict[str, str]) -> tuple[str, bool]:
    """(backfill id, whether it is new): the unfinished backfill of this selection, else a new
    one. A launch whose answer was lost is found by its tag on the retry, never doubled."""
    selection = selection_digest(deployment.url, selected)

    def attempt() -> tuple[str, bool]:
        found = deployment.backfill_in_progress(selection)
        if found:
            return found, False
        ranges = [(chunk[0], chunk[-1]) for chunk in contiguous_chunks(all_keys, selected, len(all_keys))]
        title = "embeddings " + ", ".join(first if first == last else f"{first}...{last}" for first, last in ranges)
        return deployment.launch(ranges, {**tags, SELECTION_TAG: selection}, title[:200]), True

    return deployment.retrying(attempt)


def follow(deployment: Deployment, backfill_id: str, poll_s: float = 2.0,
           report_every_s: float = REPORT_EVERY_S) -> Progress:
    """Wait until the backfill has finished, printing where it stands every `report_every_s`."""
    started = time.monotonic()
    next_report = started
    while True:
        progress = deployment.progress(backfill_id)
        now = time.monotonic()
        if progress.finished:
            deployment.say(progress.line(backfill_id, now - started))
            return progress
        if now >= next_report:
            deployment.say(progress.line(backfill_id, now - started))
            next_report = now + report_every_s
        time.sleep(poll_s)


def submit_backfill(args: argparse.Namespace, parser: argparse.ArgumentParser,
                    select: Callable[[Sequence[str]], list[str]]) -> int:
    """`--submit`: one Dagster asset backfill on the deployment at the URL, followed to its end
    (`embedding_assets.submit`). Exit status: 0 when every partition materialized, 1 naming
    the failed partitions (or a canceled backfill), 75 when the deployment stayed unreachable,
    128 + the signal number when stopped (the backfill is canceled). `select(all partition keys)`
    picks the partitions."""
    if args.model_revision:
        parser.error("--model-revision cannot be combined with --submit: the deployment's "
                     "EMBEDDING_MODEL_REVISION decides; set it where the code location runs")
    if args.max_partitions_per_run is not None:
        parser.error("--max-partitions-per-run applies to in-process backfills; a deployment's "
                     "backfill follows the assets' backfill policy")
    deployment = Deployment(args.submit, retry_for_s=args.retry_for)
    launched: list[str] = []

    def cancel() -> str:
        try:
            return f"backfill {launched[0]} {deployment.cancel(launched[0])}" if launched else "no backfill launched"
        except Exception as error:  # noqa: BLE001 - the deployment is gone; say so in the one line
            return f"backfill {launched[0]} not canceled ({type(error).__name__})"

    stop = StopOnSignal(on_deadline=lambda _signum: cancel())
    try:
        with stop:
            all_keys = deployment.partition_keys()
            selected = select(all_keys)
            backfill_id, new = launch_or_follow(deployment, all_keys, selected,
                                                tags={"embedding/trigger": "backfill-cli"})
            launched.append(backfill_id)
            print(f"backfill {backfill_id} {'launched' if new else 'already in progress: following it'} "
                  f"on {deployment.url}: model_snapshot, then {len(selected)} partition(s) of corpus "
                  f"and embeddings", flush=True)
            progress = follow(deployment, backfill_id)
    except DeploymentError as error:
        print(f"backfill: {error}", file=sys.stderr)
        return 75  # EX_TEMPFAIL: run the same command again once the deployment is back
    except BackfillInterrupted as interruption:
        print(f"backfill: {interruption}; {cancel()} on {deployment.url}", file=sys.stderr)
        return 128 + (interruption.signum or stop.signum or signal.SIGINT)
    if progress.status == "COMPLETED_SUCCESS":
        print(f"backfill {backfill_id}: {progress.done} partition(s) materialized; {len(selected)} "
              f"partition(s) on {deployment.url}")
        return 0
    try:
        failed = deployment.failed_partitions(selected)
    except DeploymentError as error:
        failed = [f"unknown ({error})"]
    print(f"backfill {backfill_id} {progress.status}: failed partition(s): {', '.join(failed) or 'none'}"
          f"{'; ' + progress.error if progress.error else ''} (re-execute them from the Backfills "
          "tab, or run this command again)", file=sys.stderr)
    return 1
