"""`make demo` as a newcomer sees it: named job runs, no warning, the model loaded once for the
queries, and a second run that encodes nothing."""

import re
import sys

import pytest
from dagster import DagsterInstance, RunsFilter

from tests.assets import test_commands
from tests.assets.test_commands import run

command_env = test_commands.command_env  # the same temporary DAGSTER_HOME, store and landing

COUNT_MODEL_LOADS = """
import runpy, sys
from embedding_core.model import SentenceTransformer
loads, init = [], SentenceTransformer.__init__
def counting_init(self, *args, **kwargs):
    loads.append(args[:1])
    init(self, *args, **kwargs)
SentenceTransformer.__init__ = counting_init
try:
    runpy.run_path("scripts/demo.py", run_name="__main__")
finally:
    print(f"models loaded: {len(loads)}", file=sys.stderr)
"""


@pytest.mark.slow
def test_demo_runs_named_jobs_prints_no_warning_and_loads_the_model_once_for_the_queries(
        command_env, monkeypatch):
    env = {**command_env, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # scripts/demo.py as `make demo` runs it, counting the SentenceTransformer models it builds.
    demo = run([sys.executable, "-c", COUNT_MODEL_LOADS], env)
    output = demo.stdout + demo.stderr
    assert demo.returncode == 0, output[-3000:]
    assert not re.search(r"warning", output, re.IGNORECASE), [
        line for line in output.splitlines() if re.search("warning", line, re.IGNORECASE)]
    # One load for the in-process runs (the steps share the loaded model), one for all three
    # queries (it used to be one per query).
    assert re.findall(r"models loaded: (\d+)", demo.stderr) == ["2"], demo.stderr[-2000:]
    assert demo.stdout.count("\nQuery: ") == 3
    assert "(18 vectors in 3 partitions" in demo.stdout
    # The hits come through the vector index, built by its own job, its recall checked.
    assert re.search(r"Index:   18 vectors, full, recall@10 (1\.000|0\.9[5-9]\d) against exact search", demo.stdout), demo.stdout
    assert demo.stdout.count(", vector index)\n") == 3

    monkeypatch.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])  # dagster.yaml reads it
    with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        jobs = sorted(r.job_name for r in instance.get_runs(RunsFilter()))
    assert jobs == ["embed_corpus", "index_vectors", "snapshot_model"]
