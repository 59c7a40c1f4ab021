"""The loopback servers start, answer, and stop by PID, also from another process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from deploy import processes, servers

ROOT = Path(__file__).resolve().parents[2]


def test_postgres_answers_and_creates_databases(postgres_server, pg_catalog):
    assert postgres_server.is_running()
    assert pg_catalog.startswith("postgres:host=127.0.0.1 ")
    dsn = pg_catalog.removeprefix("postgres:")
    import psycopg2

    with psycopg2.connect(dsn) as con, con.cursor() as cur:
        cur.execute("CREATE TABLE t (x int); INSERT INTO t VALUES (41), (1)")
        cur.execute("SELECT sum(x), current_database() FROM t")
        total, dbname = cur.fetchone()
    con.close()
    assert total == 42 and dsn.endswith(f"dbname={dbname}")
    assert postgres_server.sqlalchemy_url(dbname).startswith("postgresql+psycopg2://")
    # runs on loopback only, and never as root
    proc = psutil.Process(postgres_server.pid)
    assert proc.username() != "root"
    addrs = {c.laddr.ip for c in proc.net_connections(kind="inet") if c.status == "LISTEN"}
    assert addrs == {"127.0.0.1"}


def test_s3_round_trip(s3_server, s3_root):
    import os

    import boto3

    assert s3_root.startswith("s3://") and s3_root.endswith("/embeddings")
    assert os.environ["AWS_ENDPOINT_URL"] == s3_server.endpoint_url
    bucket = s3_root.removeprefix("s3://").split("/")[0]
    client = boto3.client("s3")  # everything from the AWS_* variables the fixture set
    client.put_object(Bucket=bucket, Key="embeddings/a.txt", Body=b"hello")
    assert client.get_object(Bucket=bucket, Key="embeddings/a.txt")["Body"].read() == b"hello"


def test_redis_ping(redis_server):
    import redis

    client = redis.Redis.from_url(redis_server.url())
    assert client.ping()
    client.set("k", "v")
    assert client.get("k") == b"v"


@pytest.mark.parametrize("kind", ["postgres", "s3", "redis"])
def test_stop_by_pid_from_another_process(kind, tmp_path_factory):
    import tempfile

    state = Path(tempfile.mkdtemp(prefix="embedding-servers-stop-"))
    state.chmod(0o755)
    start = {
        "postgres": lambda: servers.start_postgres(state, durable=False),
        "s3": lambda: servers.start_s3(state),
        "redis": lambda: servers.start_redis(state),
    }[kind]
    server = start()
    try:
        assert (state / f"{server.name}.pid").read_text().strip() == str(server.pid)
        assert processes.load(state, server.name).port == server.port
        code = f"from deploy import processes; assert processes.stop({str(state)!r}, {server.name!r})"
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
        processes.reap_children()
        assert not server.is_running()
        assert not psutil.pid_exists(server.pid) or psutil.Process(server.pid).status() == "zombie"
        assert processes.recorded(state) == []
        # stopping again is harmless
        assert processes.stop(state, server.name) is False
    finally:
        processes.stop(state, server.name)
        import shutil

        shutil.rmtree(state, ignore_errors=True)


def test_failed_start_names_the_server_and_shows_its_log(tmp_path, redis_server):
    # the port is taken: redis exits, and the error carries its log
    with pytest.raises(processes.ServerError, match=r"(?s)redis2 exited .*Address already in use"):
        servers.start_redis(tmp_path, name="redis2", port=redis_server.port)
    assert processes.recorded(tmp_path) == []
