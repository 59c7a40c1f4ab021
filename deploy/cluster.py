"""The whole distributed profile on loopback: ``python -m deploy.cluster start|stop|status|env``.

``start`` runs, each as its own process recorded under the state dir (default ``.cluster/``):

==============  ==========================================================================
postgres        Dagster's run/event/schedule storage (database ``dagster``) and the store's
                DuckLake catalog (database ``embedding_catalog``)
redis           the Celery broker (db 0) and result backend (db 1)
s3              an S3-compatible server (moto) holding the store's data files (bucket
                ``embeddings``)
code-server     ``dagster code-server start -m embedding_assets.definitions``: the code
                location; it launches each run's coordinating process
webserver       ``dagster-webserver`` (the UI and GraphQL) on --webserver-port
daemon          ``dagster-daemon run``: run queue, sensors, schedules, backfills, retries
worker1..N      ``celery -A dagster_celery.app worker``: the steps (one at a time each)
==============  ==========================================================================

Each start begins empty (the S3 server holds its objects in memory). All of them read the
same environment, written to ``<state>/cluster.env`` (``source`` it to
point ``python -m embedding_assets.backfill --submit`` or ``dagster`` commands at the cluster).
``stop`` stops every recorded process by PID, in reverse order.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from deploy import processes, servers
from deploy.processes import HOST, ServerError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY_DIR = Path(__file__).resolve().parent
DEFAULT_STATE_DIR = REPO_ROOT / ".cluster"
LOCATION_NAME = "embedding_pipeline"
DAGSTER_DB = "dagster"
CATALOG_DB = "embedding_catalog"
BUCKET = "embeddings"
INFRA = ("postgres", "redis", "s3")


def _bin(name: str) -> str:
    """A console script of this interpreter's environment (the venv need not be activated)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


@dataclass
class ClusterConfig:
    state_dir: Path = DEFAULT_STATE_DIR
    webserver_port: int = 3000  # 0: any free port
    workers: int = 2
    # "s3": data on the S3 server, catalog in Postgres (the distributed store);
    # "local": a folder under the state dir with the store's default (DuckDB file) catalog.
    store: str = "s3"
    landing_dir: str | None = None  # default: EMBEDDING_LANDING_DIR, else the bundled sample
    env: dict[str, str] = field(default_factory=dict)  # more variables for every process
    timeout: float = 120.0


@dataclass
class Cluster:
    state_dir: Path
    env: dict[str, str]
    urls: dict[str, str]

    @property
    def webserver_url(self) -> str:
        return self.urls["webserver"]

    def workers(self) -> list[processes.Server]:
        return [s for s in (processes.load(self.state_dir, n) for n in worker_names(self.state_dir)) if s]


def worker_names(state_dir: Path) -> list[str]:
    return [name for name in processes.recorded(state_dir) if name.startswith("worker")]


def _write_env(state: Path, env: dict[str, str], urls: dict[str, str]) -> None:
    (state / "cluster.json").write_text(json.dumps({"env": env, "urls": urls}, indent=2))
    lines = [f"export {key}={shlex.quote(value)}" for key, value in sorted(env.items())]
    (state / "cluster.env").write_text("\n".join(lines) + "\n")


def load_cluster(state_dir: Path | str = DEFAULT_STATE_DIR) -> Cluster | None:
    path = Path(state_dir) / "cluster.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return Cluster(Path(state_dir), data["env"], data["urls"])


def _workspace(state: Path, code_port: int) -> Path:
    path = state / "workspace.yaml"
    path.write_text(
        "load_from:\n"
        "  - grpc_server:\n"
        f"      host: {HOST}\n"
        f"      port: {code_port}\n"
        f"      location_name: {LOCATION_NAME}\n"
    )
    return path


def _graphql(url: str, query: str, variables: dict | None = None, timeout: float = 10.0) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"{url}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        payload = json.loads(resp.read())
    if payload.get("errors"):
        raise RuntimeError(f"GraphQL errors: {payload['errors']}")
    return payload["data"]


LOCATIONS_QUERY = """
{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""


def _location_loaded(url: str) -> bool:
    data = _graphql(url, LOCATIONS_QUERY)["workspaceOrError"]
    entries = data.get("locationEntries") or []
    for entry in entries:
        error = entry.get("locationOrLoadError") or {}
        if error.get("__typename") == "PythonError":
            raise ServerError(f"code location {entry['name']!r} failed to load: {error['message']}")
    return bool(entries) and all(entry["loadStatus"] == "LOADED" for entry in entries)


def _daemon_alive(postgres: servers.PostgresServer) -> bool:
    con = postgres.connect(DAGSTER_DB)
    try:
        with con.cursor() as cur:
            cur.execute("SELECT daemon_type FROM daemon_heartbeats")
            return "QUEUED_RUN_COORDINATOR" in {row[0] for row in cur.fetchall()}
    finally:
        con.close()


def _worker_answers(broker: str, node: str) -> bool:
    from celery import Celery

    app = Celery(broker=broker)
    try:
        return bool(app.control.ping(destination=[node], timeout=1.0))
    finally:
        app.close()


def start(config: ClusterConfig | None = None) -> Cluster:
    """Start the whole profile; on any failure, stop what was started and raise."""
    config = config or ClusterConfig()
    state = Path(config.state_dir).resolve()
    running = [n for n in processes.recorded(state) if (s := processes.load(state, n)) and s.is_running()]
    if running:
        raise ServerError(f"a cluster is already running in {state} ({', '.join(running)}); "
                          "stop it first: python -m deploy.cluster stop")
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o755)  # Postgres (as root: another user) must reach its data dir
    # Every start begins empty: the S3 server keeps its objects in memory, so a catalog or
    # run history kept from an earlier start would point at files that no longer exist.
    for leftover in ("postgres-data", "dagster_home", "store"):
        shutil.rmtree(state / leftover, ignore_errors=True)
    try:
        return _start(config, state)
    except BaseException:
        stop(state)
        raise


def _start(config: ClusterConfig, state: Path) -> Cluster:
    postgres = servers.start_postgres(state, timeout=config.timeout)
    postgres.create_database(DAGSTER_DB)
    catalog_dsn = postgres.create_database(CATALOG_DB)
    redis = servers.start_redis(state, timeout=config.timeout)
    s3 = servers.start_s3(state, timeout=config.timeout)
    s3.create_bucket(BUCKET)

    dagster_home = state / "dagster_home"
    dagster_home.mkdir(exist_ok=True)
    shutil.copy(DEPLOY_DIR / "dagster.yaml", dagster_home / "dagster.yaml")

    if config.store == "s3":
        store = {"EMBEDDING_STORE_ROOT": f"s3://{BUCKET}/store",
                 "EMBEDDING_CATALOG": f"postgres:{catalog_dsn}"}
    elif config.store == "local":
        store = {"EMBEDDING_STORE_ROOT": str(state / "store"), "EMBEDDING_CATALOG": ""}
    else:
        raise ValueError(f"store must be 's3' or 'local', not {config.store!r}")
    landing = config.landing_dir or os.environ.get("EMBEDDING_LANDING_DIR")
    env = {
        "DAGSTER_HOME": str(dagster_home),
        "DAGSTER_POSTGRES_URL": postgres.sqlalchemy_url(DAGSTER_DB),
        "EMBEDDING_EXECUTOR": "celery",
        "EMBEDDING_CELERY_BROKER": redis.url(0),
        "EMBEDDING_CELERY_BACKEND": redis.url(1),
        **s3.env(),
        **store,
        **({"EMBEDDING_LANDING_DIR": str(Path(landing).resolve())} if landing else {}),
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "false"),
        "PYTHONPATH": os.pathsep.join(
            [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
        **config.env,
    }
    if not env["EMBEDDING_CATALOG"]:
        del env["EMBEDDING_CATALOG"]
    urls = {
        "postgres": postgres.dsn(DAGSTER_DB),
        "catalog": env.get("EMBEDDING_CATALOG", "(DuckDB file under the store root)"),
        "broker": redis.url(0),
        "s3": s3.endpoint_url,
        "store": env["EMBEDDING_STORE_ROOT"],
    }
    _write_env(state, env, urls)

    code_port = processes.free_port()
    processes.start_process(
        "code-server",
        [_bin("dagster"), "code-server", "start", "-h", HOST, "-p", str(code_port),
         "-m", "embedding_assets.definitions", "-a", "defs", "--location-name", LOCATION_NAME],
        state, port=code_port, ready=lambda: True, env=env, cwd=REPO_ROOT,
        timeout=config.timeout,
    )  # fmt: skip
    workspace = _workspace(state, code_port)
    web_port = config.webserver_port or processes.free_port()
    web_url = f"http://{HOST}:{web_port}"
    processes.start_process(
        "webserver",
        [_bin("dagster-webserver"), "-h", HOST, "-p", str(web_port), "-w", str(workspace)],
        state, port=web_port, ready=lambda: _location_loaded(web_url), env=env, cwd=REPO_ROOT,
        timeout=config.timeout,
    )  # fmt: skip
    urls = {"webserver": web_url, **urls}
    _write_env(state, env, urls)
    processes.start_process(
        "daemon",
        [_bin("dagster-daemon"), "run", "-w", str(workspace)],
        state, port=0, ready=lambda: _daemon_alive(postgres), env=env, cwd=REPO_ROOT,
        timeout=config.timeout,
    )  # fmt: skip
    worker_env = {
        **env,
        "PYTHONPATH": os.pathsep.join([str(DEPLOY_DIR / "celery"), env["PYTHONPATH"]]),
    }
    for index in range(1, config.workers + 1):
        node = f"worker{index}@{socket.gethostname()}"
        processes.start_process(
            f"worker{index}",
            [_bin("celery"), "-A", "dagster_celery.app", "worker", "-Q", "dagster", "-n", node,
             "--concurrency", "1", "--pool", "prefork", "--prefetch-multiplier", "1",
             "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
            state, port=0, ready=lambda node=node: _worker_answers(env["EMBEDDING_CELERY_BROKER"], node),
            env=worker_env, cwd=REPO_ROOT, timeout=config.timeout,
            # SIGTERM would wait for the step in progress; stopping the cluster cancels it.
            extra={"node": node, "stop_signal": "SIGQUIT"},
        )  # fmt: skip
    return Cluster(state, env, urls)


def stop(state_dir: Path | str = DEFAULT_STATE_DIR) -> list[str]:
    """Stop every process recorded in the state dir by PID: the Dagster processes and workers
    together, then the servers they use. Returns the names of those that were running."""
    state = Path(state_dir)
    names = processes.recorded(state)
    apps = [n for n in reversed(names) if n not in INFRA]
    try:
        stopped = processes.stop_many(state, apps)
    finally:
        stopped_infra = processes.stop_many(state, [n for n in INFRA if n in names])
    return stopped + stopped_infra


def status(state_dir: Path | str = DEFAULT_STATE_DIR) -> list[tuple[str, int, bool]]:
    state = Path(state_dir)
    return [
        (name, server.pid, server.is_running())
        for name in processes.recorded(state)
        if (server := processes.load(state, name)) is not None
    ]


def _print_urls(cluster: Cluster) -> None:
    width = max(len(k) for k in cluster.urls)
    for key, value in cluster.urls.items():
        print(f"  {key:<{width}}  {value}")
    print(f"environment: source {cluster.state_dir / 'cluster.env'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "stop", "status", "env"])
    parser.add_argument("--state-dir", default=os.environ.get("CLUSTER_STATE_DIR", str(DEFAULT_STATE_DIR)))
    parser.add_argument("--webserver-port", type=int, default=int(os.environ.get("CLUSTER_WEBSERVER_PORT", "3000")),
                        help="0 picks a free port (default 3000)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--store", choices=["s3", "local"], default=os.environ.get("CLUSTER_STORE", "s3"))
    parser.add_argument("--landing-dir", default=None)
    args = parser.parse_args(argv)
    state = Path(args.state_dir)
    if args.command == "start":
        started = time.monotonic()
        cluster = start(ClusterConfig(state_dir=state, webserver_port=args.webserver_port,
                                      workers=args.workers, store=args.store,
                                      landing_dir=args.landing_dir))
        print(f"cluster up in {time.monotonic() - started:.0f} s (state: {cluster.state_dir})")
        _print_urls(cluster)
        for name, pid, _ in status(state):
            print(f"  {name:<12} pid {pid}")
        return 0
    if args.command == "stop":
        stopped = stop(state)
        print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
        return 0
    if args.command == "status":
        rows = status(state)
        if not rows:
            print(f"no cluster recorded in {state}")
            return 1
        cluster = load_cluster(state)
        if cluster:
            _print_urls(cluster)
        for name, pid, alive in rows:
            print(f"  {name:<12} pid {pid:<8} {'running' if alive else 'NOT RUNNING'}")
        return 0 if all(alive for _, _, alive in rows) else 1
    cluster = load_cluster(state)
    if cluster is None:
        print(f"no cluster recorded in {state}", file=sys.stderr)
        return 1
    print((state / "cluster.env").read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
