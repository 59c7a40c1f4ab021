"""Under CI=true a skipped test fails the run, named with its reason; elsewhere a skip is a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_pytest(folder: Path, ci: str | None, workers: str = "0") -> subprocess.CompletedProcess:
    (folder / "test_one_skip.py").write_text(
        "import pytest\n\n"
        "def test_runs():\n    assert True\n\n"
        "def test_needs_a_missing_thing():\n    pytest.skip('no frobnicator here')\n",
        encoding="utf-8",
    )
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(REPO)
    # The suite's conftest as a plugin, on a folder of its own (no ini file, no other tests).
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "-n", workers, "--rootdir", str(folder), "-c", os.devnull, str(folder)],
        capture_output=True, text=True, cwd=folder, env=env, timeout=120,
    )


@pytest.mark.parametrize("workers", ["0", "2"])  # in this process, and on xdist workers as `make test` runs
def test_a_skip_fails_the_run_under_ci_and_is_named(tmp_path, workers):
    completed = run_pytest(tmp_path, "true", workers)
    assert completed.returncode == 1, completed.stdout
    assert "skipped tests fail the run under CI=true" in completed.stdout
    assert "SKIPPED test_one_skip.py::test_needs_a_missing_thing: Skipped: no frobnicator here" in completed.stdout


def test_without_ci_a_skip_is_reported_and_the_run_passes(tmp_path):
    completed = run_pytest(tmp_path, None)
    assert completed.returncode == 0, completed.stdout
    assert "1 passed, 1 skipped" in completed.stdout
