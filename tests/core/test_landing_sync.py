"""Syncing landing buckets with the store: only changed files are read, one commit per
batch, deleted files kept, renamed files retired, a bad file named and the rest stored."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from embedding_core.landing import LandingFolder, bucket_digests, bucket_keys, bucket_of
from embedding_core.landing_sync import bucket_state, sync_buckets
from embedding_core.store import EmbeddingStore

BUCKETS = 4
ALL = list(bucket_keys(BUCKETS))


def write(landing: Path, name: str, rows: list[tuple[str, str]]) -> None:
    (landing / name).write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in rows))


def documents(store: EmbeddingStore) -> set[tuple[str, str, str]]:
    with store.connect() as con:
        return set(con.execute("SELECT partition, id, text FROM documents").fetchall())


@pytest.fixture
def landing(tmp_path) -> Path:
    folder = tmp_path / "landing"
    folder.mkdir()
    for index in range(12):
        write(folder, f"file-{index:02d}.jsonl", [(f"r{index}", f"text number {index}")])
    return folder


@pytest.fixture
def store(tmp_path) -> EmbeddingStore:
    return EmbeddingStore(tmp_path / "store")


class CountingReads:
    def __init__(self, landing: LandingFolder) -> None:
        self.landing, self.read = landing, []

    def __call__(self, file):
        self.read.append(file.partition_key)
        return self.landing.read(file)


def test_buckets_are_stable_and_cover_every_file(landing):
    keys = list(LandingFolder(str(landing)).listing())
    assert {bucket_of(key, BUCKETS) for key in keys} <= set(ALL)
    # Stable across processes, whatever their string-hash seed (Python's hash() would not be).
    script = ("import json, sys; from embedding_core.landing import bucket_of; "
              "print(json.dumps([bucket_of(k, int(sys.argv[1])) for k in json.loads(sys.argv[2])]))")
    other = subprocess.run([sys.executable, "-c", script, str(BUCKETS), json.dumps(keys)], check=True,
                           capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "1"})
    assert json.loads(other.stdout) == [bucket_of(key, BUCKETS) for key in keys]
    assert bucket_of("python_docs.jsonl", 16) == "bucket-04"
    assert bucket_keys(3) == ("bucket-00", "bucket-01", "bucket-02")
    with pytest.raises(ValueError, match="0 is not between 1 and 1000"):
        bucket_keys(0)


def test_a_bucket_digest_moves_with_any_change_of_its_files_only(landing):
    folder = LandingFolder(str(landing))
    before = bucket_digests(folder.listing(), BUCKETS)
    write(landing, "file-03.jsonl", [("r3", "changed")])
    after = bucket_digests(folder.listing(), BUCKETS)
    changed = {bucket for bucket in ALL if before.get(bucket) != after.get(bucket)}
    assert changed == {bucket_of("file-03.jsonl", BUCKETS)}


def test_only_new_and_changed_files_are_read_and_one_commit_stores_them(landing, store):
    folder = LandingFolder(str(landing))
    reads = CountingReads(folder)
    snapshots = len(store.lake_snapshots())
    report = sync_buckets(folder, store, ALL, BUCKETS, read=reads)
    assert sorted(reads.read) == sorted(report.stored) == sorted(folder.listing())
    assert len(store.lake_snapshots()) == snapshots + 1  # twelve files, one commit
    assert documents(store) == {(f"file-{i:02d}.jsonl", f"r{i}", f"text number {i}") for i in range(12)}

    write(landing, "file-05.jsonl", [("r5", "a new text for five")])
    reads.read.clear()
    report = sync_buckets(folder, store, ALL, BUCKETS, read=reads)
    assert reads.read == ["file-05.jsonl"]
    assert len(report.unchanged) == 11
    assert ("file-05.jsonl", "r5", "a new text for five") in documents(store)

    # Only the buckets asked for are looked at.
    reads.read.clear()
    write(landing, "file-06.jsonl", [("r6", "six changed")])
    other = [bucket for bucket in ALL if bucket != bucket_of("file-06.jsonl", BUCKETS)]
    sync_buckets(folder, store, other, BUCKETS, read=reads)
    assert reads.read == []


def test_a_file_changed_back_to_earlier_content_is_current_again(landing, store):
    folder = LandingFolder(str(landing))
    sync_buckets(folder, store, ALL, BUCKETS)
    first = store.landing_records()["file-01.jsonl"].corpus_version
    write(landing, "file-01.jsonl", [("r1", "content B")])
    sync_buckets(folder, store, ALL, BUCKETS)
    assert store.landing_records()["file-01.jsonl"].corpus_version != first
    write(landing, "file-01.jsonl", [("r1", "text number 1")])
    sync_buckets(folder, store, ALL, BUCKETS)
    assert store.landing_records()["file-01.jsonl"].corpus_version == first
    assert store.corpus_version("file-01.jsonl").corpus_version == first
    assert ("file-01.jsonl", "r1", "text number 1") in documents(store)


def test_deleted_files_keep_their_rows_and_renamed_ones_are_retired(landing, store):
    folder = LandingFolder(str(landing))
    sync_buckets(folder, store, ALL, BUCKETS)
    (landing / "file-02.jsonl").unlink()
    (landing / "file-07.jsonl").rename(landing / "renamed-07.jsonl")
    report = sync_buckets(folder, store, ALL, BUCKETS)
    assert report.deleted == ["file-02.jsonl"]
    assert report.retired == {"file-07.jsonl": "its content is in renamed-07.jsonl"}
    records = store.landing_records()
    assert (records["file-02.jsonl"].state, records["file-07.jsonl"].state) == ("deleted", "retired")
    found = documents(store)
    assert ("file-02.jsonl", "r2", "text number 2") in found  # kept
    assert ("renamed-07.jsonl", "r7", "text number 7") in found
    assert not any(partition == "file-07.jsonl" for partition, _, _ in found)
    # Put back, the deleted file is stored again, its rows unchanged.
    write(landing, "file-02.jsonl", [("r2", "text number 2")])
    sync_buckets(folder, store, ALL, BUCKETS)
    assert store.landing_records()["file-02.jsonl"].state == "stored"


def test_on_delete_retire_drops_deleted_files(landing, store):
    folder = LandingFolder(str(landing))
    sync_buckets(folder, store, ALL, BUCKETS)
    (landing / "file-04.jsonl").unlink()
    report = sync_buckets(folder, store, ALL, BUCKETS, on_delete="retire")
    assert report.retired == {"file-04.jsonl": "deleted from the landing folder (on_delete=retire)"}
    assert not any(partition == "file-04.jsonl" for partition, _, _ in documents(store))
    with pytest.raises(ValueError, match="on_delete='drop'"):
        sync_buckets(folder, store, ALL, BUCKETS, on_delete="drop")


def test_a_bad_file_is_named_and_the_others_of_its_batch_are_stored(landing, store):
    folder = LandingFolder(str(landing))
    (landing / "broken.jsonl").write_text('{"id": "x", "text": "one"}\n{"id": "x", "text": "two"}\n')
    report = sync_buckets(folder, store, ALL, BUCKETS)
    assert list(report.failed) == ["broken.jsonl"]
    assert "broken.jsonl" in report.failed["broken.jsonl"] and "duplicate id" in report.failed["broken.jsonl"]
    assert len(report.stored) == 12
    assert "broken.jsonl" not in store.landing_records()


def test_bucket_state_lists_each_buckets_files_with_their_current_versions(landing, store):
    folder = LandingFolder(str(landing))
    sync_buckets(folder, store, ALL, BUCKETS)
    files, current = bucket_state(store, ALL[:2], BUCKETS)
    expected = {bucket: sorted(key for key in folder.listing() if bucket_of(key, BUCKETS) == bucket)
                for bucket in ALL[:2]}
    assert files == expected
    assert sorted(current) == sorted(key for keys in expected.values() for key in keys)
