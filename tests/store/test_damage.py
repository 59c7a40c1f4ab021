"""A missing or truncated data file takes down only its partition (issue 10, item 2).

Real files are deleted or cut in half under a real store; the tests then read, search,
write and verify through the public API and the `embedding-store verify` command.
"""

import glob
import os
import shutil
import subprocess
import sys
from datetime import timedelta

import numpy as np
import pytest

from embedding_core.store import DamagedDataError, EmbeddingParams, EmbeddingStore, corpus_table
from embedding_core.store.views import SCHEMA_VERSION
from tests.store.fakes import SNAPSHOT, TextHashEncoder

PARTITIONS = ("a", "b", "c")
PARAMS = EmbeddingParams()


def shard(partition: str):
    return corpus_table([f"{partition}{i}" for i in range(6)], [f"text {i} of {partition}" for i in range(6)])


def lake_files(store: EmbeddingStore) -> set[str]:
    return set(glob.glob(os.path.join(store.root, "lake", "**", "*.parquet"), recursive=True))


def materialize(store: EmbeddingStore, partition: str, encoder: TextHashEncoder) -> dict[str, str]:
    """Write the partition's corpus and embeddings; its new data files by table."""
    before = lake_files(store)
    corpus = store.write_corpus(partition, shard(partition))
    store.write_embeddings(partition, corpus, SNAPSHOT, PARAMS, encoder)
    return {os.path.basename(os.path.dirname(path)): path for path in lake_files(store) - before}


def damage(path: str, how: str) -> None:
    if how == "delete":
        os.remove(path)
    else:
        with open(path, "rb") as file:
            data = file.read()
        with open(path, "wb") as file:
            file.write(data[: len(data) // 2])


def verify_command(store: EmbeddingStore) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from embedding_core.cli import store_main; "
                           "sys.exit(store_main())", "verify", "--store", store.root],
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("table", ["embedding_rows", "corpus_rows"])
@pytest.mark.parametrize("how", ["delete", "truncate"])
def test_a_damaged_data_file_takes_down_only_its_partition_until_it_is_written_again(store, how, table):
    encoder = TextHashEncoder()
    files = {partition: materialize(store, partition, encoder) for partition in PARTITIONS}
    assert store.verify().ok and verify_command(store).returncode == 0
    versions_before = store.embedding_versions("b")
    broken = files["b"][table]
    damage(broken, how)

    # Reads filtered to the healthy partitions work; so does search, without partition b.
    with store.connect() as con:
        assert con.execute("SELECT partition, count(*) FROM embeddings WHERE partition IN ('a', 'c') "
                           "GROUP BY ALL ORDER BY 1").fetchall() == [("a", 6), ("c", 6)]
        assert con.execute("SELECT count(*) FROM documents WHERE partition <> 'b'").fetchone() == (12,)
    hits = store.search(encoder.vector("text 3 of a"), SNAPSHOT.model, top_k=20)
    assert hits[0].id == "a3" and hits[0].text == "text 3 of a"
    if how == "delete":  # a cut file's rows may still read through DuckDB's cached footer
        assert {hit.partition for hit in hits} == {"a", "c"}
        with pytest.raises(DamagedDataError, match=f"partition 'b'.*{os.path.basename(broken)}"):
            if table == "corpus_rows":
                store.read_corpus(store.corpus_version("b"))
            else:
                store.read_embeddings(store.current_embedding_version("b", SNAPSHOT.model))

    # Writes of other partitions work, and reuse still finds the healthy vectors.
    materialize(store, "d", encoder)
    again = store.write_corpus("e", shard("a"))
    assert store.write_embeddings("e", again, SNAPSHOT, PARAMS, encoder).encoded_rows == 0
    # Texts whose only vectors lie in the damaged file are encoded again.
    same_as_b = store.write_corpus("f", shard("b"))
    result = store.write_embeddings("f", same_as_b, SNAPSHOT, PARAMS, encoder)
    if table == "corpus_rows":
        assert result.encoded_rows == 0  # b's vectors are intact: reused
    elif how == "delete":  # (a cut file may still read through the cached footer)
        assert result.encoded_rows == 6
    np.testing.assert_array_equal(store.read_embeddings(result.version)[1],
                                  np.stack([encoder.vector(f"text {i} of b") for i in range(6)]))

    # The damage is named, counted stale, and reported by the command with exit status 1.
    report = store.verify()
    assert [(f.path, f.table, f.partitions, f.current) for f in report.damaged_files] == [
        (broken, table, ("b",), True)]
    assert report.damaged_files[0].problem.startswith("missing" if how == "delete" else "size")
    assert report.damaged_partitions == ["b"] and report.files_checked == 12
    assert store.stale_partitions(SNAPSHOT, PARAMS) == ["b"]
    command = verify_command(store)
    assert command.returncode == 1, command.stderr
    assert broken in command.stdout
    assert "damaged partitions (landing file, Dagster partition): b (no landing file, bucket-" in command.stdout

    # Materializing the partition again repairs it, and the damaged file leaves the lake;
    # earlier records stay.
    calls = len(encoder.calls)
    materialize(store, "b", encoder)
    assert store.stale_partitions(SNAPSHOT, PARAMS) == []
    assert store.verify().ok
    version = store.current_embedding_version("b", SNAPSHOT.model)
    ids, vectors = store.read_embeddings(version)
    assert ids.column("id").to_pylist() == [f"b{i}" for i in range(6)]
    np.testing.assert_array_equal(vectors, np.stack([encoder.vector(f"text {i} of b") for i in range(6)]))
    assert store.read_corpus(store.corpus_version("b")).equals(shard("b"))
    assert len(encoder.calls) == calls  # b's texts have healthy vectors (partition f's): reused
    assert [v.version_id for v in store.embedding_versions("b")][: len(versions_before)] == [
        v.version_id for v in versions_before]
    with store.connect() as con:
        assert con.execute("SELECT count(*) FROM embeddings").fetchone() == (36,)
    # Maintenance expires what it can; the retired file is no trouble to it.
    store.maintain(older_than=timedelta(0))
    assert store.verify().ok
    with store.connect() as con:
        assert con.execute("SELECT count(*) FROM embeddings").fetchone() == (36,)
    assert {hit.partition for hit in store.search(encoder.vector("x"), SNAPSHOT.model, top_k=36)} == {
        "a", "b", "c", "d", "e", "f"}


def test_verify_with_read_rows_reads_every_row_of_every_file(store):
    encoder = TextHashEncoder()
    files = materialize(store, "a", encoder)
    report = store.verify(read_rows=True)
    assert report.ok and report.read_rows and report.files_checked == 2
    # Same size, readable footer, corrupted pages: only reading the rows notices.
    path = files["embedding_rows"]
    with open(path, "r+b") as file:
        file.seek(4)
        file.write(b"\xff" * 200)
    assert store.verify().ok
    damaged = store.verify(read_rows=True)
    assert [(f.path, f.partitions) for f in damaged.damaged_files] == [(path, ("a",))]
    assert damaged.damaged_files[0].problem.startswith("unreadable")


def test_a_store_copied_to_another_path_opens_and_writes_there(store, tmp_path):
    encoder = TextHashEncoder()
    for partition in PARTITIONS:
        materialize(store, partition, encoder)
    moved = tmp_path / "elsewhere" / "moved"
    shutil.copytree(store.root, moved)
    shutil.move(store.root, tmp_path / "gone")  # nothing may still point at the old path

    copy = EmbeddingStore(moved)
    assert copy.verify().ok and copy.verify().files_checked == 6
    assert copy.stale_partitions(SNAPSHOT, PARAMS) == []
    with copy.connect() as con:
        assert con.execute("SELECT count(*) FROM embeddings").fetchone() == (18,)
    materialize(copy, "d", encoder)
    assert all(path.startswith(str(moved)) for path in lake_files(copy))
    assert copy.search(encoder.vector("text 1 of d"), SNAPSHOT.model, top_k=1)[0].id == "d1"


def test_damage_stays_in_its_partition_in_a_store_of_more_than_fifty_partitions(store):
    # Past 50 current versions DuckDB would hand a scan only the min and max write id of
    # a join (catalog.SETTINGS): every file in between, the damaged one too, would be read.
    files = {}
    for number in range(52):
        before = lake_files(store)
        store.write_corpus(f"p{number:02d}", shard(f"p{number:02d}"))
        files[f"p{number:02d}"] = (lake_files(store) - before).pop()
    os.remove(files["p30"])
    with store.connect() as con:
        assert con.execute("SELECT count(*), count(DISTINCT partition) FROM documents "
                           "WHERE partition <> 'p30'").fetchone() == (51 * 6, 51)
    assert store.verify().damaged_partitions == ["p30"]
    store.write_corpus("p30", shard("p30"))
    with store.connect() as con:
        assert con.execute("SELECT count(*) FROM documents").fetchone() == (52 * 6,)
    assert store.verify().damaged_partitions == []


def test_a_store_whose_views_predate_the_repair_gets_them_on_open(store):
    encoder = TextHashEncoder()
    materialize(store, "a", encoder)
    # The views as the store before this change made them: a version's rows from its first record.
    with store._catalog.connection(read_only=False) as con:
        con.execute("DROP VIEW store_schema")
        con.execute("CREATE OR REPLACE VIEW stored_embedding_versions AS SELECT *, snapshot_id FROM "
                    "embedding_versions QUALIFY row_number() OVER (PARTITION BY version_id "
                    "ORDER BY snapshot_id, rowid) = 1")
    commits = len(store.lake_snapshots())
    reopened = EmbeddingStore(store.root)
    assert [s.message for s in reopened.lake_snapshots()[commits:]] == [f"store views version {SCHEMA_VERSION}"]
    EmbeddingStore(store.root)
    assert len(reopened.lake_snapshots()) == commits + 1  # once
    with reopened.connect() as con:
        assert con.execute("SELECT version FROM store_schema").fetchone() == (SCHEMA_VERSION,)
        assert "l.write_id AS write_id" in con.execute(
            "SELECT sql FROM duckdb_views() WHERE view_name = 'stored_embedding_versions'").fetchone()[0]
        assert con.execute("SELECT DISTINCT typeof(embedding) FROM embeddings").fetchall() == [("FLOAT[8]",)]


@pytest.mark.slow
def test_damage_on_object_storage_is_found_and_repaired(s3_server, s3_root, pg_catalog):
    store = EmbeddingStore(s3_root, pg_catalog)
    bucket = s3_root.removeprefix("s3://").split("/", 1)[0]
    client = s3_server.client()

    def keys() -> set[str]:
        return {item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                for item in page.get("Contents", [])}

    files = {}
    for number in range(10):  # more files than one request each: verify lists the prefix once
        before = keys()
        store.write_corpus(f"p{number}", shard(f"p{number}"))
        files[f"p{number}"] = (keys() - before).pop()
    encoder = TextHashEncoder()
    before = keys()
    store.write_embeddings("p6", store.corpus_version("p6"), SNAPSHOT, PARAMS, encoder)
    vectors_of_p6 = (keys() - before).pop()
    others = [f"p{number}" for number in range(10) if number != 6]  # no embeddings yet
    assert store.stale_partitions(SNAPSHOT, PARAMS) == others
    client.delete_object(Bucket=bucket, Key=vectors_of_p6)
    assert store.stale_partitions(SNAPSHOT, PARAMS) == [f"p{number}" for number in range(10)]
    store.write_embeddings("p6", store.corpus_version("p6"), SNAPSHOT, PARAMS, encoder)
    assert store.stale_partitions(SNAPSHOT, PARAMS) == others
    client.delete_object(Bucket=bucket, Key=files["p3"])
    body = client.get_object(Bucket=bucket, Key=files["p6"])["Body"].read()
    client.put_object(Bucket=bucket, Key=files["p6"], Body=body[: len(body) // 2])

    report = store.verify()  # the deleted vectors of p6 were written again: their file left the lake
    assert report.files_checked == 11 and report.damaged_partitions == ["p3", "p6"]
    assert {(f.path, f.problem.split(" ")[0], f.current) for f in report.damaged_files} == {
        (f"s3://{bucket}/{files['p3']}", "missing", True), (f"s3://{bucket}/{files['p6']}", "size", True)}
    with store.connect() as con:
        assert con.execute("SELECT count(*) FROM documents WHERE partition NOT IN ('p3', 'p6')").fetchone() == (48,)
    for partition in ("p3", "p6"):
        store.write_corpus(partition, shard(partition))
    assert store.verify().ok
    with store.connect() as con:
        assert con.execute("SELECT count(*) FROM documents").fetchone() == (60,)
