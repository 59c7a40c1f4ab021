"""The default store is one place whichever way the project is started: `make dev` runs the UI
inside `.dagster_home`, `make demo`, a plain `dagster dev` and the commands run in the project
root, and with EMBEDDING_STORE_ROOT unset all of them must open the project's `store/` (a UI
backfill once failed because the code location resolved `.dagster_home/store`)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
RESOURCE_ROOT = ("from embedding_assets.definitions import defs; "
                 "print(defs.resources['embedding_store'].root)")


def without_store_root() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != "EMBEDDING_STORE_ROOT"}


def run_python(code: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=without_store_root(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_the_code_location_and_the_commands_open_the_project_store_from_anywhere_inside_it(tmp_path):
    project = tmp_path / "project"
    home = project / ".dagster_home"
    home.mkdir(parents=True)
    for name in ("workspace.yaml", "pyproject.toml"):
        shutil.copy(PROJECT / name, project / name)
    expected = str(project / "store")

    # The code location as `make dev` loads it (in DAGSTER_HOME) and as `dagster dev` in the root.
    assert run_python(RESOURCE_ROOT, cwd=home) == expected
    assert run_python(RESOURCE_ROOT, cwd=project) == expected
    # The commands' --store default, from the same two folders: no store yet, so the command
    # says where it looked.
    verify = str(Path(sys.executable).with_name("embedding-store"))
    for cwd in (home, project):
        done = subprocess.run([verify, "verify"], cwd=cwd, env=without_store_root(), capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 2, done
        assert f"no embedding catalog under {expected!r}" in done.stderr, done.stderr
    # Outside any project the working directory's store/ stays the default.
    assert run_python(RESOURCE_ROOT, cwd=tmp_path) == str(tmp_path / "store")
