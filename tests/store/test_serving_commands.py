"""The serving-version commands as a user runs them (issue 26): `embedding-store versions /
promote / rollback` on a half-finished rollout, and `embedding-search` encoding the query as
the serving version's vectors were encoded (or a candidate's, with `--version`)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from embedding_core.cli import main as search_main
from embedding_core.cli import store_main
from embedding_core.corpus import read_corpus_file
from embedding_core.snapshot import EncoderConfig
from embedding_core.store import EmbeddingStore, version_key
from tests.store.conftest import SAMPLE_CORPUS
from tests.store.test_serving_versions import (
    KEY_A,
    KEY_B,
    MODEL,
    A,
    B,
    served,
    write,
)


def store_process(*args: str) -> subprocess.CompletedProcess:
    """`embedding-store ARGS` run as a process."""
    command = str(Path(sys.executable).with_name("embedding-store"))
    return subprocess.run([command, *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def store_command(capsys):
    """``store_command(*args)``: `embedding-store ARGS` through the command's entry point in this
    process (its exit status and output; the first call of each test runs it as a process)."""

    def run(*args: str) -> subprocess.CompletedProcess:
        status = store_main(list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["embedding-store", *args], status, out, err)

    return run


@pytest.mark.slow
def test_versions_promote_and_rollback_commands(half_finished_rollout, store_command):
    store = half_finished_rollout
    root = store.root

    listed = store_process("versions", "--store", root)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == f"{store.catalog_label}: 2 version set(s)"
    assert lines[1].startswith(f"* {KEY_A}  {MODEL}  serving    revision {A.revision[:19]}  2/2 partitions  16 rows")
    assert lines[2].startswith(f"  {KEY_B}  {MODEL}  candidate  revision {B.revision[:19]}  1/2 partitions "
                               "(incomplete)  8 rows  dim 16  precision=float32")

    refused = store_command("promote", KEY_B, "--store", root)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith(f"embedding-store promote: version '{KEY_B}' of model '{MODEL}' is incomplete: "
                                     "it covers 1 of 2 partitions (missing p2)")
    unknown = store_command("promote", "nope", "--store", root)
    assert unknown.returncode == 1 and f"no version 'nope' in {store.catalog_label}; known: {KEY_A}, {KEY_B}" \
        in unknown.stderr
    assert store.promotions() == []

    write(store, "p2", B)
    promoted = store_command("promote", KEY_B, "--reason", "recall +2%", "--store", root)
    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stdout == (f"{MODEL} serves version {KEY_B} (was {KEY_A}): 2/2 partitions, "
                               f"revision {B.revision[:19]}\n")
    assert served(store) == [("p1", B.revision), ("p2", B.revision)]
    versions = [json.loads(line) for line in store_command("versions", "--json", "--store", root).stdout.splitlines()]
    assert [(v["key"], v["serving"], v["previous"], v["partitions_covered"], v["complete"]) for v in versions] == [
        (KEY_A, False, True, 2, True), (KEY_B, True, False, 2, True)]
    assert versions[1]["last_promotion"]["reason"] == "recall +2%" and versions[0]["last_promotion"] is None

    back = store_command("rollback", "--store", root)
    assert back.returncode == 0, back.stderr
    assert back.stdout.startswith(f"{MODEL} serves version {KEY_A} (was {KEY_B}): 2/2 partitions")
    assert served(store) == [("p1", A.revision), ("p2", A.revision)]
    listed = store_command("versions", "--model", MODEL, "--store", root).stdout.splitlines()
    assert listed[1].startswith(f"* {KEY_A}  {MODEL}  serving ")
    assert listed[2].startswith("    promoted ") and listed[2].endswith(": rollback")
    assert listed[3].startswith(f"  {KEY_B}  {MODEL}  previous ")
    assert listed[4].endswith(": recall +2%")


def search_process(query: str, root: str) -> tuple[str, str]:
    """`embedding-search` run as a process: its header line and its best hit's line."""
    command = str(Path(sys.executable).with_name("embedding-search"))
    result = subprocess.run([command, query, "--store", root, "--top-k", "1"], capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    header, best, *_ = result.stdout.splitlines()
    return header, best


@pytest.mark.slow
def test_search_command_encodes_the_query_as_the_serving_version_was_encoded(tmp_path, bundled_model_path, capsys):
    """A candidate of other parameters (normalized, truncated to 64 dims) written for one
    partition while the model's configuration says so: `embedding-search` still encodes the
    query as the serving version's vectors were (384 dims) and finds the second partition's
    text itself (run as a process); `--version` queries the candidate, encoded with its
    parameters (through the command's entry point)."""
    store = EmbeddingStore(tmp_path / "store")
    serving_config = EncoderConfig(bundled_model_path)
    candidate_config = EncoderConfig(bundled_model_path, normalize_embeddings=True, truncate_dim=64)
    snapshot = serving_config.resolve()
    store.record_model_snapshot(snapshot)
    sample = read_corpus_file(SAMPLE_CORPUS).table
    shards = {"p1": sample.slice(0, 12), "p2": sample.slice(12, 12)}
    corpora = {name: store.write_corpus(name, table) for name, table in shards.items()}
    for config, partitions in ((serving_config, ["p1", "p2"]), (candidate_config, ["p1"])):
        params = config.params(snapshot)
        with config.session(snapshot, params) as session:
            store.write_embeddings_batch([corpora[p] for p in partitions], snapshot, params, session.encode)
    key = version_key(snapshot.revision, serving_config.params(snapshot).params_hash)
    candidate = version_key(snapshot.revision, candidate_config.params(snapshot).params_hash)
    assert store.serving_version(snapshot.model).key == key

    target = shards["p2"].column("text")[4].as_py()
    header, best = search_process(target, store.root)
    assert header.startswith(f"{snapshot.model}@{snapshot.revision[:19]}  version {key} (serving)  ")
    assert best == f" 1. 1.0000  [p2] {shards['p2'].column('id')[4].as_py()}"

    own = shards["p1"].column("text")[7].as_py()
    assert search_main([own, "--store", store.root, "--top-k", "1", "--version", candidate]) == 0
    header, best, *_ = capsys.readouterr().out.splitlines()
    assert f"  version {candidate} (candidate)  " in header
    assert best == f" 1. 1.0000  [p1] {shards['p1'].column('id')[7].as_py()}"
