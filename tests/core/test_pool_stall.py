"""A stopped (SIGSTOP) pool worker fails the call instead of hanging it (issue 10, item 6).

Real worker processes are stopped and continued with real signals; the stall timeout is
set short so the tests stay quick.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

import psutil
import pytest
import torch

from embedding_core.pool import EncodePool, WorkerDiedError, WorkerStalledError
from embedding_core.pool.processes import DEFAULT_STALL_TIMEOUT_S, STALL_TIMEOUT_ENV, stall_timeout
from tests.core.conftest import assert_rows_match, signal_when_working


def alive(pids) -> list[int]:
    living = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                living.append(pid)
    return living


def children() -> set[int]:
    """Child processes, less multiprocessing's resource tracker (started with the first pool)."""
    found = set()
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if "resource_tracker" not in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                found.add(child.pid)
    return found


@pytest.mark.timeout(180)  # the behaviour is "no hang": a hang fails here, naming the test
def test_a_stopped_worker_fails_the_call_naming_worker_pid_and_device(model, parity_texts):
    before = children()
    pool = model.start_multi_process_pool(["cpu", "cpu"], stall_timeout_s=3)
    victim = pool.pids[0]
    stopper = signal_when_working(pool, 0, signal.SIGSTOP)
    try:
        with pytest.raises(WorkerStalledError) as caught:
            model.encode(parity_texts, pool=pool)
    finally:
        stopper.join()
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGCONT)
        pool.close()
    message = str(caught.value)
    assert f"worker 0 on cpu (pid {victim})" in message
    assert "no progress" in message and "stall timeout of 3 s" in message and STALL_TIMEOUT_ENV in message
    assert isinstance(caught.value, WorkerDiedError)
    assert caught.value.device == "cpu" and caught.value.exitcode == -signal.SIGKILL
    assert pool.broken and pool.closed
    assert alive(pool.pids) == [] and children() - before == set()


def test_a_slow_but_progressing_worker_is_not_killed(model, texts_for_slow_worker):
    with model.start_multi_process_pool(["cpu", "cpu"], stall_timeout_s=3) as pool:
        victim = pool.pids[0]
        done = threading.Event()
        pauses: list[int] = []

        def throttle():  # stopped 1 s out of every 1.4 s: slow, never silent for 3 s
            while not done.is_set():
                os.kill(victim, signal.SIGSTOP)
                pauses.append(1)
                time.sleep(1.0)
                os.kill(victim, signal.SIGCONT)
                time.sleep(0.4)

        throttler = threading.Thread(target=throttle)
        throttler.start()
        results = []
        try:
            # Calls until the worker was stopped 3 times (3 s stopped in all, the stall
            # timeout): one call on a slow machine, several on a fast one.
            while len(pauses) < 3:
                results.append(model.encode(texts_for_slow_worker, pool=pool))
        finally:
            done.set()
            throttler.join()
            os.kill(victim, signal.SIGCONT)
        assert not pool.broken
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            expected = model.encode(texts_for_slow_worker)
        finally:
            torch.set_num_threads(previous)
        for result in results:
            assert_rows_match(result, expected)
        assert alive([victim]) == [victim]  # still the same, running worker


@pytest.fixture
def texts_for_slow_worker(parity_texts) -> list[str]:
    return parity_texts[::2][:128]


def test_the_stall_timeout_comes_from_the_argument_or_the_environment(model, monkeypatch):
    monkeypatch.delenv(STALL_TIMEOUT_ENV, raising=False)
    assert stall_timeout(None) == DEFAULT_STALL_TIMEOUT_S <= 60
    assert stall_timeout(2.5) == 2.5
    monkeypatch.setenv(STALL_TIMEOUT_ENV, "7")
    assert stall_timeout(None) == 7.0 and stall_timeout(4) == 4.0
    monkeypatch.setenv(STALL_TIMEOUT_ENV, "soon")
    before = children()
    with pytest.raises(ValueError, match=rf"\${STALL_TIMEOUT_ENV} must be a number of seconds, got 'soon'"):
        EncodePool.start(model, ["cpu"])
    with pytest.raises(ValueError, match="stall_timeout_s must be a positive number of seconds, got 0"):
        model.start_multi_process_pool(["cpu"], stall_timeout_s=0)
    assert children() - before == set()  # refused before any worker was spawned
