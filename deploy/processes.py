"""Processes started and stopped by PID from any process: the machinery under deploy.servers
and deploy.cluster.

Starting one (:func:`start_process`) writes ``<state_dir>/<name>.pid`` and
``<state_dir>/<name>.json`` (pid, its start time, port and connection details), so any process
can find it again (:func:`load`) and stop it by PID (:func:`stop`) -- ``make cluster-stop``
stops what ``make cluster`` started. Every start waits until the process answers and otherwise
fails with the tail of its log.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import psutil

HOST = "127.0.0.1"

# Children started by this process, kept so that stopping them also reaps them.
_CHILDREN: dict[int, subprocess.Popen] = {}


class ServerError(RuntimeError):
    """A server did not start, or could not be found or stopped."""


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Server:
    """A started server: enough to find, reach and stop it from any process."""

    name: str
    kind: str
    pid: int
    create_time: float
    port: int
    log: str
    state_dir: str
    extra: dict = field(default_factory=dict)

    @property
    def host(self) -> str:
        return HOST

    def is_running(self) -> bool:
        return _same_process(self.pid, self.create_time)

    def stop(self, timeout: float = 20.0) -> None:
        stop(self.state_dir, self.name, timeout=timeout)


# Server kinds by the name recorded in their state file; deploy.servers registers its own.
_KINDS: dict[str, type[Server]] = {"process": Server}


def register_kind(kind: str, cls: type[Server]) -> None:
    """Make :func:`load` rebuild servers recorded as ``kind`` as instances of ``cls``."""
    _KINDS[kind] = cls


# ---------------------------------------------------------------- state files and PIDs


def _paths(state_dir: str | Path, name: str) -> tuple[Path, Path]:
    state = Path(state_dir)
    return state / f"{name}.pid", state / f"{name}.json"


def _same_process(pid: int, create_time: float) -> bool:
    """True when ``pid`` is alive and is the very process we started (not a reused PID)."""
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and abs(proc.create_time() - create_time) < 1.0
    except psutil.Error:
        return False


def _save(server: Server) -> None:
    pid_path, info_path = _paths(server.state_dir, server.name)
    info_path.write_text(json.dumps({"kind": server.kind, **asdict(server)}, indent=2))
    pid_path.write_text(f"{server.pid}\n")


def load(state_dir: str | Path, name: str) -> Server | None:
    """The server ``name`` recorded in ``state_dir``, or None if there is no record."""
    _, info_path = _paths(state_dir, name)
    if not info_path.exists():
        return None
    data = json.loads(info_path.read_text())
    # A kind this process has not registered (deploy.servers not imported) loads as a plain
    # Server: enough to find and stop it.
    cls = _KINDS.get(data.get("kind", "process"), Server)
    return cls(**{key: value for key, value in data.items() if key in _field_names(cls)})


def _field_names(cls: type[Server]) -> set[str]:
    return {item.name for item in fields(cls)}


def recorded(state_dir: str | Path) -> list[str]:
    """Names of every server recorded in ``state_dir``, in start order."""
    state = Path(state_dir)
    if not state.is_dir():
        return []
    infos = sorted(state.glob("*.json"), key=lambda p: p.stat().st_mtime)
    return [p.stem for p in infos if p.with_suffix(".pid").exists()]


def stop(state_dir: str | Path, name: str, timeout: float = 20.0) -> bool:
    """Stop the server ``name`` recorded in ``state_dir`` by its PID; True if it was running.

    Sends the server's stop signal (SIGINT for Postgres: a fast shutdown; SIGTERM unless the
    record names another), waits up to ``timeout`` seconds, then SIGKILLs it and its process
    group. The records are removed either way.
    """
    return stop_many(state_dir, [name], timeout=timeout) == [name]


def stop_many(state_dir: str | Path, names: list[str], timeout: float = 20.0) -> list[str]:
    """Stop several servers at once: signal them all, then wait for each (as :func:`stop`).
    Returns the names of those that were running."""
    found = [(name, load(state_dir, name)) for name in names]
    running = [(name, server) for name, server in found if server and server.is_running()]
    for _, server in running:
        default = "SIGINT" if server.kind == "postgres" else "SIGTERM"
        _signal_tree(server.pid, getattr(signal, server.extra.get("stop_signal", default)))
    deadline = time.monotonic() + timeout
    errors = []
    for name, server in running:
        if not _wait_gone(server.pid, server.create_time, max(0.0, deadline - time.monotonic())):
            _kill_group(server.pid)
            if not _wait_gone(server.pid, server.create_time, 10.0):
                errors.append(f"{name} (pid {server.pid}) did not stop; log: {server.log}")
    for name, server in found:
        if server is not None:
            _reap(server.pid)
            _sweep_group(server.pid)
        for path in _paths(state_dir, name):
            path.unlink(missing_ok=True)
    if errors:
        raise ServerError("; ".join(errors))
    return [name for name, _ in running]


def _signal_tree(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _kill_group(pid: int) -> None:
    # Every server starts its own session, so its process group id is its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def _sweep_group(pgid: int) -> None:
    """Stop what is left of a stopped server's process group (e.g. the run processes a code
    server spawned). The group id stays reserved while any member lives, so this never
    reaches an unrelated process."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if not _group_members(pgid):
                return
            time.sleep(0.1)


def _group_members(pgid: int) -> list[int]:
    members = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
    return members


def _reap(pid: int) -> None:
    proc = _CHILDREN.pop(pid, None)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def reap_children() -> None:
    """Collect the exit status of servers this process started that have ended (e.g. stopped
    from another process), so none lingers as a zombie."""
    for pid, proc in list(_CHILDREN.items()):
        if proc.poll() is not None:
            _CHILDREN.pop(pid, None)


def _wait_gone(pid: int, create_time: float, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        child = _CHILDREN.get(pid)
        if child is not None:
            child.poll()  # reap our own child, or it stays a zombie
        if not _same_process(pid, create_time):
            return True
        time.sleep(0.1)
    return False


# ---------------------------------------------------------------- starting


def start_process(
    name: str,
    argv: list[str],
    state_dir: str | Path,
    *,
    port: int,
    ready: Callable[[], bool],
    kind: str = "process",
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    user: str | None = None,
    timeout: float = 60.0,
    extra: dict | None = None,
) -> Server:
    """Start ``argv`` in its own session, record it, and wait until ``ready()`` is true.

    Output goes to ``<state_dir>/<name>.log``. A name that is already recorded and running is an
    error (stop it first); a stale record is replaced.
    """
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    existing = load(state, name)
    if existing is not None and existing.is_running():
        raise ServerError(f"{name} is already running (pid {existing.pid}); stop it first")
    log_path = state / f"{name}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
            **_as_user(user),
        )
    _CHILDREN[proc.pid] = proc
    create_time = psutil.Process(proc.pid).create_time()
    cls = _KINDS.get(kind, Server)
    server = cls(
        name=name,
        kind=kind,
        pid=proc.pid,
        create_time=create_time,
        port=port,
        log=str(log_path),
        state_dir=str(state),
        extra=extra or {},
    )
    _save(server)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            stop(state, name)
            raise ServerError(
                f"{name} exited with code {proc.returncode} before it was ready "
                f"(command: {' '.join(argv)}); last lines of {log_path}:\n{log_tail(log_path)}"
            )
        try:
            # the port must be ours: another server answering on it is no proof of readiness
            if (not port or _listens(proc.pid, port)) and ready():
                return server
        except ServerError as error:  # it answered, with an error that waiting will not fix
            stop(state, name)
            raise ServerError(f"{name} failed: {error}; log: {log_path}") from error
        except Exception:  # not answering yet
            pass
        if time.monotonic() > deadline:
            stop(state, name)
            raise ServerError(
                f"{name} did not answer within {timeout:.0f} s on port {port}; "
                f"last lines of {log_path}:\n{log_tail(log_path)}"
            )
        time.sleep(0.2)


def _as_user(user: str | None) -> dict:
    """subprocess keywords that drop root to ``user`` (its group, no supplementary groups)."""
    if user is None:
        return {}
    import pwd

    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _listens(pid: int, port: int) -> bool:
    """True when process ``pid`` (or one of its children) listens on ``port``."""
    proc = psutil.Process(pid)
    for p in [proc, *proc.children(recursive=True)]:
        for conn in p.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
                return True
    return False
