"""The command `embedding-store verify` prints repairs the damage it found (issue 29).

The issue's case, through the real commands: one `corpus_rows` data file holds the corpus of
every sample partition and is cut to half its size; `verify` names the files, their landing
files and Dagster partitions and prints a backfill command; running exactly that command
makes `verify` clean, with the same rows and vectors as before the damage.
"""

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from embedding_core.store import EmbeddingStore
from tests.assets.conftest import SHARDS, write_sample_slice

PROJECT = Path(__file__).resolve().parents[2]


def run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=PROJECT, capture_output=True, text=True, timeout=600)


def verify(store: str, env: dict) -> subprocess.CompletedProcess:
    return run([sys.executable, "-c", "import sys; from embedding_core.cli import store_main; sys.exit(store_main())",
                "verify", "--store", store], env)


def contents(store: EmbeddingStore) -> tuple[list, list]:
    with store.connect() as con:
        return (con.execute("SELECT partition, id, text FROM documents ORDER BY ALL").fetchall(),
                con.execute("SELECT partition, id, embedding::FLOAT[] FROM embeddings ORDER BY partition, id"
                            ).fetchall())


def test_the_command_verify_prints_repairs_a_corpus_file_shared_by_every_partition(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")
    root = str(tmp_path / "store")
    env = {**os.environ, "DAGSTER_HOME": str(home), "EMBEDDING_STORE_ROOT": root,
           "EMBEDDING_LANDING_DIR": str(write_sample_slice(tmp_path / "landing", rows=3))}
    built = run([sys.executable, "-m", "embedding_assets.backfill"], env)
    assert built.returncode == 0, built.stderr[-3000:]
    store = EmbeddingStore(root)
    before = contents(store)
    assert len(before[0]) == len(before[1]) == 9
    [corpus_file] = glob.glob(f"{root}/lake/**/corpus_rows/*.parquet", recursive=True)
    with open(corpus_file, "rb") as file:
        data = file.read()
    with open(corpus_file, "wb") as file:
        file.write(data[: len(data) // 2])

    found = verify(root, env)
    assert found.returncode == 1, found.stderr
    lines = found.stdout.splitlines()
    assert any(corpus_file in line and "size" in line for line in lines), found.stdout
    named = next(line for line in lines if line.startswith("damaged partitions"))
    assert all(f"{name} ({name}, bucket-" in named for name in SHARDS), named
    command = lines[lines.index(next(line for line in lines if line.startswith("materialize corpus"))) + 1]
    assert command.strip().startswith(f"env EMBEDDING_STORE_ROOT={root} {sys.executable} -m "
                                      "embedding_assets.backfill --partitions bucket-"), command
    # the command names the store: it repairs this one whatever the shell's environment says
    elsewhere = {key: value for key, value in env.items() if key != "EMBEDDING_STORE_ROOT"}
    repaired = run(shlex.split(command), elsewhere)
    assert repaired.returncode == 0, repaired.stderr[-3000:]
    # Each bucket's run read its landing file again; its vectors were intact: nothing encoded.
    assert re.findall(r"bucket-\d+: 1 file\(s\), \d+ new version\(s\), (\d+) texts encoded", repaired.stderr
                      ) == ["0", "0", "0"], repaired.stderr[-3000:]
    clean = verify(root, env)
    assert clean.returncode == 0 and ", 0 damaged" in clean.stdout, clean.stdout
    assert contents(store) == before
