"""The CI workflow `.github/workflows/backfill.yml`, run here step by step.

Its steps' own shell lines run as GitHub Actions runs them (`bash --noprofile --norc -eo
pipefail`, in the checkout, with the job's `env`). `${{ vars.* }}`, `${{ secrets.* }}` and
`${{ inputs.* }}` are replaced as GitHub replaces them. A variable or secret not given becomes
an empty string. The values given here are a local store, landing folder and instance.
`actions/checkout` is the only step that is not a shell line: a temporary copy of this
working tree is the checkout, so no step (`make setup` included) touches the repository. So a
workflow that cannot run (a file it copies is gone, a flag the command no longer takes) fails
this test.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, DagsterRunStatus

from embedding_core.store import EmbeddingStore
from tests.assets.conftest import SHARDS, write_sample_slice

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # each step is allowed 1200 s

PROJECT = Path(__file__).resolve().parents[2]
WORKFLOW = PROJECT / ".github" / "workflows" / "backfill.yml"
EXPRESSION = re.compile(r"\$\{\{\s*(vars|secrets|inputs)\.(\w+)\s*\}\}")


def render(text: str, contexts: dict[str, dict[str, str]]) -> str:
    """GitHub's `${{ context.name }}` substitution; anything else is left for the test to reject."""
    rendered = EXPRESSION.sub(lambda m: contexts[m.group(1)].get(m.group(2), ""), text)
    assert "${{" not in rendered, f"an expression this test does not know: {rendered}"
    return rendered


def temporary_checkout(folder: Path) -> Path:
    """A copy of the working tree's files (tracked and untracked, not ignored) in ``folder``,
    as `actions/checkout` leaves them, with the project's virtual environment linked in and
    marked installed, so `make setup` there finds it ready and installs nothing anywhere."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=PROJECT, check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = PROJECT / name
        if source.is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / name)
    venv = folder / ".venv"
    venv.mkdir()
    for entry in (PROJECT / ".venv").iterdir():
        if entry.name != ".installed":
            (venv / entry.name).symlink_to(entry)
    (venv / ".installed").touch()  # newer than the copied pyproject.toml: nothing to install
    return folder


def run_workflow(tmp_path: Path, contexts: dict[str, dict[str, str]]) -> tuple[dict[str, str], list]:
    """Run the workflow's steps here with these vars/secrets/inputs: (the job's env, [(step
    name, completed process)]); asserts each step exits 0."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    workflow = yaml.safe_load(WORKFLOW.read_text())
    job = workflow["jobs"]["backfill"]
    inputs = workflow[True]["workflow_dispatch"]["inputs"]  # YAML 1.1 reads the key `on` as True
    assert set(contexts["inputs"]) <= set(inputs) == {"model_revision", "from", "to", "promote"}
    env = {key: render(str(value), contexts) for key, value in job["env"].items()}
    base = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    base.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    checkout = temporary_checkout(tmp_path / "checkout")
    ran = []
    for step in job["steps"]:
        if "uses" in step:
            assert step["uses"].startswith("actions/checkout@"), step
            continue
        script = tmp_path / f"step_{len(ran)}.sh"
        script.write_text(render(step["run"], contexts))
        result = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
                                cwd=checkout, env={**base, **env}, capture_output=True, text=True, timeout=1200)
        assert result.returncode == 0, f"step {step.get('name')!r} exited {result.returncode}:\n" \
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        ran.append((step.get("name"), result))
    assert [name for name, _ in ran] == ["Set up the environment", "Backfill"]
    return env, ran


def test_the_backfill_workflow_steps_run_here_and_store_every_row(tmp_path, monkeypatch):
    """No DAGSTER_WEBSERVER_URL: the runner executes the runs (test_submit_backfill.py runs the
    workflow against a deployment)."""
    landing = write_sample_slice(tmp_path / "landing", rows=4)
    first, last = sorted(SHARDS)[0], sorted(SHARDS)[-1]
    env, ran = run_workflow(tmp_path, {
        "vars": {"DAGSTER_HOME": str(tmp_path / "dagster_home"), "EMBEDDING_STORE_ROOT": str(tmp_path / "store"),
                 "EMBEDDING_LANDING_DIR": str(landing)},
        "secrets": {},  # EMBEDDING_CATALOG unset: the store's own DuckDB catalog
        "inputs": {"model_revision": "", "from": first, "to": last, "promote": "true"},
    })
    # promote=true: the gate judged the new version set (here the model's first, so it serves)
    assert re.search(r"^promotion: .*serving_version: \w+", ran[-1][1].stdout, re.M), ran[-1][1].stdout[-3000:]

    # Every landing row is stored once, with its vector; the runs are in the job's instance.
    store = EmbeddingStore(env["EMBEDDING_STORE_ROOT"])
    with store.connect() as con:
        documents = con.execute("SELECT partition, count(*) FROM documents GROUP BY 1 ORDER BY 1").fetchall()
        embedded = con.execute("SELECT count(*) FROM embeddings").fetchone()[0]
    assert documents == [(name, 4) for name in sorted(SHARDS)]
    assert embedded == 4 * len(SHARDS)
    monkeypatch.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])
    with DagsterInstance.get() as instance:
        runs = instance.get_runs()
    assert runs and {run.status for run in runs} == {DagsterRunStatus.SUCCESS}
    assert {run.job_name for run in runs} == {"snapshot_model", "embed_corpus", "promote_candidate"}
