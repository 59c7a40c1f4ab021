"""Every damage `verify` reports is repaired by materializing what it names (issue 29).

A fault matrix through the pipeline's own code (`landing_sync.sync_buckets`, then each
bucket's `write_embeddings_batch`, then `build_vector_indexes`: what the `landing_buckets`
step and `vector_index` run), with the text-hash encoder: {deleted, truncated, zero-filled
middle} x {corpus_rows, embedding_rows, index} x {one partition's file, a file shared by
several partitions}. The undamaged store is built once per module and copied per case.
Each case: `verify` names the damage (the zero-filled middle only when it reads the rows),
materializing the buckets (or the index) it names makes `verify` clean, the rows and vectors
are the undamaged store's, and only the rows that were lost are encoded again.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import uuid
from dataclasses import dataclass

import pytest

from embedding_core.landing import LandingFolder, bucket_of
from embedding_core.landing_sync import bucket_state, sync_buckets
from embedding_core.store import EmbeddingParams, EmbeddingStore
from tests.store.fakes import SNAPSHOT, TextHashEncoder

BUCKETS = 16
PARAMS = EmbeddingParams()
ROWS = 5  # texts per landing file
HOWS = ("delete", "truncate", "zero_middle")


def landing_names() -> tuple[str, list[str], str, str]:
    """Landing file names: one bucket holding three files (their data files are shared) and
    one holding a single file. Returns (single file, shared files, single's bucket, shared's)."""
    by_bucket: dict[str, list[str]] = {}
    for number in range(200):
        by_bucket.setdefault(bucket_of(f"f{number:03d}.jsonl", BUCKETS), []).append(f"f{number:03d}.jsonl")
    shared_bucket = next(b for b, names in sorted(by_bucket.items()) if len(names) >= 3)
    single_bucket = next(b for b in sorted(by_bucket) if b != shared_bucket)
    return by_bucket[single_bucket][0], by_bucket[shared_bucket][:3], single_bucket, shared_bucket


SINGLE, SHARED, SINGLE_BUCKET, SHARED_BUCKET = landing_names()


def write_landing(folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    for name in [SINGLE, *SHARED]:
        with open(os.path.join(folder, name), "w") as file:
            for row in range(ROWS):
                file.write(json.dumps({"id": f"{name}:{row}", "text": f"text {row} of {name}"}) + "\n")


def materialize(store: EmbeddingStore, landing: str, buckets: list[str], encoder: TextHashEncoder) -> int:
    """What one `landing_buckets` run per bucket does (corpus, then embeddings); the
    number of texts encoded."""
    encoded = 0
    for bucket in buckets:
        report = sync_buckets(LandingFolder(landing), store, [bucket], BUCKETS)
        assert not report.failed, report.failed
        files, corpora = bucket_state(store, [bucket], BUCKETS)
        results = store.write_embeddings_batch([corpora[key] for key in files[bucket]], SNAPSHOT, PARAMS,
                                               encoder)
        encoded += sum(result.encoded_rows for result in results)
    return encoded


def contents(store: EmbeddingStore) -> tuple[list, list]:
    """Every current corpus row and every current vector, in a fixed order."""
    with store.connect() as con:
        documents = con.execute("SELECT partition, id, text, text_sha256 FROM documents ORDER BY ALL").fetchall()
        vectors = con.execute("SELECT partition, id, embedding::FLOAT[] FROM embeddings ORDER BY partition, id"
                              ).fetchall()
    return documents, vectors


@dataclass
class Built:
    """The undamaged store: where it lives, its data files by (table, bucket), its index files."""

    root: str
    catalog: str
    landing: str
    files: dict[tuple[str, str], str]  # (table, single|shared) -> root-relative path
    index: dict[str, str]  # usearch|rows -> root-relative path
    contents: tuple[list, list]


def new_files(before: set[str], keys: set[str]) -> dict[str, str]:
    """table -> the root-relative data file written since `before`."""
    return {path.split("/")[-2]: path for path in keys - before}


def build(root: str, catalog: str, landing: str, list_keys) -> Built:
    store = EmbeddingStore(root, catalog)
    store.record_model_snapshot(SNAPSHOT)
    files = {}
    for side, bucket in (("single", SINGLE_BUCKET), ("shared", SHARED_BUCKET)):
        before = list_keys()
        assert materialize(store, landing, [bucket], TextHashEncoder()) == ROWS * (1 if side == "single" else 3)
        for table, path in new_files(before, list_keys()).items():
            files[(table, side)] = path
    before = list_keys()
    store.build_vector_indexes(SNAPSHOT.model)
    index = {("usearch" if path.endswith(".usearch") else "rows"): path for path in list_keys() - before}
    assert set(files) == {(t, s) for t in ("corpus_rows", "embedding_rows") for s in ("single", "shared")}
    assert store.verify(read_rows=True).ok
    return Built(root, catalog, landing, files, index, contents(store))


def zero_middle(data: bytes, parquet: bool) -> bytes:
    """Zeros over the middle of the data, away from the header and (Parquet) the footer:
    the size and the footer stay as they were."""
    end = len(data) - (8 + int.from_bytes(data[-8:-4], "little")) if parquet else len(data)
    start, stop = 4 + (end - 4) // 4, 4 + 3 * (end - 4) // 4
    return data[:start] + bytes(stop - start) + data[stop:]


def damaged(data: bytes, how: str, parquet: bool) -> bytes | None:
    if how == "delete":
        return None
    return data[: len(data) // 2] if how == "truncate" else zero_middle(data, parquet)


# ----------------------------------------------------------------------------- local


@pytest.fixture(scope="module")
def local_store(tmp_path_factory) -> Built:
    base = tmp_path_factory.mktemp("undamaged")
    landing = str(base / "landing")
    write_landing(landing)
    root = str(base / "store")

    def keys() -> set[str]:
        return {os.path.relpath(path, root) for path in glob.glob(f"{root}/**/*.*", recursive=True)
                if path.endswith((".parquet", ".usearch", ".arrow"))}

    return build(root, os.path.join(root, "catalog.ducklake"), landing, keys)


def local_copy(built: Built, tmp_path) -> EmbeddingStore:
    root = str(tmp_path / "store")
    shutil.copytree(built.root, root)
    return EmbeddingStore(root)


def damage_local(store: EmbeddingStore, relative: str, how: str) -> str:
    path = os.path.join(store.root, relative)
    with open(path, "rb") as file:
        data = file.read()
    os.remove(path)
    result = damaged(data, how, path.endswith(".parquet"))
    if result is not None:
        with open(path, "wb") as file:
            file.write(result)
    return path


def expected_partitions(side: str) -> list[str]:
    return [SINGLE] if side == "single" else sorted(SHARED)


def check_repair(store: EmbeddingStore, built: Built, path: str, kind: str, side: str, how: str) -> dict:
    """Verify names the damage, the materialization it names repairs it; what was encoded."""
    if how == "zero_middle" and kind != "index":
        assert store.verify().ok  # same size, same footer: only reading the rows shows it
    report = store.verify(read_rows=how == "zero_middle")
    assert [f.path for f in report.damaged_files] == [path], report
    found = report.damaged_files[0]
    if how != "zero_middle":  # the size shows it (a cut index rows file: its Arrow footer)
        assert found.problem.split(" ")[0] in (("missing",) if how == "delete" else ("size", "unreadable:"))
    if kind == "index":
        assert report.damaged_indexes == [found] and report.damaged_partitions == []
        [rebuilt] = store.build_vector_indexes(SNAPSHOT.model)
        assert rebuilt.record.mode == "full" and rebuilt.record.rows == 4 * ROWS
        encoded, outcome = 0, {"rebuilt index rows": rebuilt.record.rows}
    else:
        assert (found.table, list(found.partitions), found.current) == (kind, expected_partitions(side), True)
        assert report.damaged_partitions == expected_partitions(side)
        buckets = sorted({bucket_of(p, BUCKETS) for p in report.damaged_partitions})
        assert buckets == [SINGLE_BUCKET if side == "single" else SHARED_BUCKET]
        encoded = materialize(store, built.landing, buckets, TextHashEncoder())
        outcome = {"encoded": encoded}
    after = store.verify(read_rows=True)
    assert after.ok, after
    assert contents(store) == built.contents
    lost = ROWS * len(expected_partitions(side)) if kind == "embedding_rows" else 0
    assert encoded == lost
    return outcome


CASES = [(how, kind, side) for kind in ("corpus_rows", "embedding_rows", "index") for side in ("single", "shared")
         for how in HOWS]


@pytest.mark.parametrize(("how", "kind", "side"), CASES, ids=["-".join(case) for case in CASES])
def test_materializing_what_verify_names_repairs_the_local_store(local_store, tmp_path, how, kind, side):
    store = local_copy(local_store, tmp_path)
    if kind == "index":  # its two files: the graph, and its rows
        relative = local_store.index["usearch" if side == "single" else "rows"]
    else:
        relative = local_store.files[(kind, side)]
    path = damage_local(store, relative, how)
    check_repair(store, local_store, path, kind, side, how)


def test_a_damaged_corpus_whose_landing_file_is_gone_fails_its_bucket_naming_file_and_partition(local_store, tmp_path):
    store = local_copy(local_store, tmp_path)
    landing = shutil.copytree(local_store.landing, tmp_path / "landing")
    os.remove(landing / SINGLE)
    path = damage_local(store, local_store.files[("corpus_rows", "single")], "delete")
    report = sync_buckets(LandingFolder(str(landing)), store, [SINGLE_BUCKET, SHARED_BUCKET], BUCKETS)
    assert report.failed == {SINGLE: f"landing file {SINGLE} (partition {SINGLE!r}) is gone and its stored corpus "
                                     f"rows lie in a damaged data file ({path}): put the file back in the landing "
                                     f"folder and materialize {SINGLE_BUCKET} again"}
    assert report.bucket_of[SINGLE] == SINGLE_BUCKET and sorted(report.unchanged) == sorted(SHARED)


# ----------------------------------------------------------------------------- S3

# One case per damage kind and per way of damage on object storage (the local matrix has them all).
S3_CASES = [("delete", "corpus_rows", "shared"), ("truncate", "index", "single"),
            ("zero_middle", "embedding_rows", "shared")]


@pytest.fixture(scope="module")
def s3_store(s3_server, tmp_path_factory):
    """The undamaged store on S3 (its catalog a local DuckDB file), and a client."""
    base = tmp_path_factory.mktemp("undamaged_s3")
    landing = str(base / "landing")
    write_landing(landing)
    client = s3_server.client()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in s3_server.env().items():
            patch.setenv(key, value)
        patch.setenv("EMBEDDING_INDEX_CACHE", str(base / "index_cache"))
        bucket = s3_server.create_bucket(f"repair-{uuid.uuid4().hex[:12]}").removeprefix("s3://")

        def keys() -> set[str]:
            return {item["Key"].removeprefix("undamaged/") for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix="undamaged/") for item in page.get("Contents", [])}

        yield build(f"s3://{bucket}/undamaged", str(base / "catalog.ducklake"), landing, keys), client, bucket


@pytest.mark.parametrize(("how", "kind", "side"), S3_CASES, ids=["-".join(case) for case in S3_CASES])
def test_materializing_what_verify_names_repairs_a_store_on_s3(s3_store, tmp_path, monkeypatch, how, kind, side):
    built, client, bucket = s3_store
    monkeypatch.setenv("EMBEDDING_INDEX_CACHE", str(tmp_path / "index_cache"))
    prefix = f"case-{uuid.uuid4().hex[:12]}"
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="undamaged/"):
        for item in page.get("Contents", []):
            client.copy_object(Bucket=bucket, Key=item["Key"].replace("undamaged/", f"{prefix}/", 1),
                               CopySource={"Bucket": bucket, "Key": item["Key"]})
    shutil.copy(built.catalog, tmp_path / "catalog.ducklake")
    store = EmbeddingStore(f"s3://{bucket}/{prefix}", tmp_path / "catalog.ducklake")
    relative = built.index["usearch"] if kind == "index" else built.files[(kind, side)]
    key = f"{prefix}/{relative}"
    data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    client.delete_object(Bucket=bucket, Key=key)
    result = damaged(data, how, key.endswith(".parquet"))
    if result is not None:
        client.put_object(Bucket=bucket, Key=key, Body=result)
    check_repair(store, built, f"s3://{bucket}/{key}", kind, side, how)
