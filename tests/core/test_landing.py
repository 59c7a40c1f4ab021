"""The landing folder: partition keys of file names, one listing, collisions, URIs."""

import hashlib
import json
import logging
import os
import re

import pyarrow.fs as pafs
import pytest

from embedding_core.landing import (
    LandingFolder,
    OutsideLinkError,
    PartitionKeyCollisionError,
    bucket_digests,
    bucket_keys,
    bucket_of,
    partition_key_for_file,
)


@pytest.mark.parametrize(
    ("relative_path", "key"),
    [
        ("python_docs.jsonl", "python_docs.jsonl"),
        ("My Notes (v2).jsonl", "My_Notes_v2_.jsonl"),
        ("sub dir/ünïcode.csv", "sub_dir__unicode.csv"),
        ("2024/q1/batch...7.parquet", "2024__q1__batch.7.parquet"),
        ("日本語.txt", "_-e1422b28.txt"),
        ("x" * 150 + ".jsonl", "x" * 85 + "-" + hashlib.sha256(("x" * 150 + ".jsonl").encode()).hexdigest()[:8] + ".jsonl"),
    ],
)
def test_partition_keys_of_landing_files_are_dagster_and_path_safe(relative_path, key):
    assert partition_key_for_file(relative_path) == key
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,100}", key) and "..." not in key


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def test_files_maps_visible_corpus_files_to_keys_sorted_with_their_paths(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", [{"id": "b1", "text": "Bee."}])
    write_jsonl(tmp_path / "sub dir" / "a.jsonl", [{"id": "a1", "text": "Ay."}])
    (tmp_path / "notes.md").write_text("not a corpus file\n")
    write_jsonl(tmp_path / ".hidden" / "c.jsonl", [{"id": "c1", "text": "Sea."}])

    files = LandingFolder(str(tmp_path)).files()
    assert list(files) == ["b.jsonl", "sub_dir__a.jsonl"]
    assert files["sub_dir__a.jsonl"].relative_path == "sub dir/a.jsonl"
    assert files["sub_dir__a.jsonl"].uri == str(tmp_path / "sub dir" / "a.jsonl")
    size = (tmp_path / "b.jsonl").stat().st_size
    assert LandingFolder(str(tmp_path)).fingerprints()["b.jsonl"].startswith(f"{size}:")


def test_one_listing_serves_every_key_of_a_call(tmp_path, monkeypatch):
    for name in ("a.jsonl", "b.jsonl", "c.jsonl"):
        write_jsonl(tmp_path / name, [{"id": name, "text": f"Text of {name}."}])
    landing = LandingFolder(str(tmp_path))
    listings = []
    original = landing.filesystem.get_file_info
    monkeypatch.setattr(landing, "filesystem", type("Counting", (), {
        "get_file_info": lambda self, selector: listings.append(selector) or original(selector)})())
    files = landing.files(["a.jsonl", "c.jsonl"])
    assert list(files) == ["a.jsonl", "c.jsonl"] and len(listings) == 1


def test_read_normalizes_the_file_behind_a_key(tmp_path):
    write_jsonl(tmp_path / "docs.jsonl", [{"doc": "d1", "body": "First."}, {"doc": "d2", "body": "Second."}])
    landing = LandingFolder(str(tmp_path), id_field="doc", text_field="body")
    shard = landing.read(landing.files(["docs.jsonl"])["docs.jsonl"])
    assert shard.table.column("id").to_pylist() == ["d1", "d2"]
    assert shard.table.column("text").to_pylist() == ["First.", "Second."]


def test_a_key_without_a_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"corpus partition 'gone.jsonl' has no file in "):
        LandingFolder(str(tmp_path)).files(["gone.jsonl"])


def test_colliding_names_fail_only_the_keys_they_share(tmp_path):
    for name in ("My Notes (v2).jsonl", "My_Notes_v2_.jsonl", "fine.jsonl"):
        write_jsonl(tmp_path / name, [{"id": "n1", "text": f"From {name}."}])
    landing = LandingFolder(str(tmp_path))
    with pytest.raises(PartitionKeyCollisionError,
                       match=r"'My Notes \(v2\).jsonl' and 'My_Notes_v2_.jsonl' map to the same partition key"):
        landing.files()
    assert list(landing.files(["fine.jsonl"])) == ["fine.jsonl"]


def test_a_uri_landing_folder_gives_uris(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"id": "a1", "text": "Ay."}])
    landing = LandingFolder(f"file://{tmp_path}")
    assert isinstance(landing.filesystem, pafs.LocalFileSystem)
    assert landing.files()["a.jsonl"].uri == f"file://{tmp_path}/a.jsonl"


def test_links_to_outside_the_landing_folder_are_refused_and_reported(tmp_path, caplog):
    landing, outside = tmp_path / "landing", tmp_path / "outside"
    write_jsonl(outside / "secret.jsonl", [{"id": "s1", "text": "A secret."}])
    write_jsonl(outside / "dir" / "more.jsonl", [{"id": "m1", "text": "More secrets."}])
    write_jsonl(landing / "ok.jsonl", [{"id": "o1", "text": "Fine."}])
    (landing / "secret.jsonl").symlink_to(outside / "secret.jsonl")
    (landing / "linked_dir").symlink_to(outside / "dir")
    (landing / "alias.jsonl").symlink_to("ok.jsonl")  # a link inside the folder is a file

    landing_folder = LandingFolder(str(landing))
    with caplog.at_level(logging.WARNING, logger="embedding_core.landing"):
        files = landing_folder.files()  # before: both links were listed and read
    assert list(files) == ["alias.jsonl", "ok.jsonl"]
    assert landing_folder.refused == {"linked_dir/more.jsonl": str((outside / "dir" / "more.jsonl").resolve()),
                                      "secret.jsonl": str((outside / "secret.jsonl").resolve())}
    assert f"{landing}/secret.jsonl: refused, it is a symbolic link to {(outside / 'secret.jsonl').resolve()}, " \
        f"outside the landing folder {landing}" in caplog.text
    assert landing_folder.read(files["alias.jsonl"]).table.column("id").to_pylist() == ["o1"]
    with pytest.raises(OutsideLinkError, match=r"secret.jsonl: refused, it is a symbolic link to .*outside"):
        landing_folder.files(["secret.jsonl"])

    # A file swapped for a link after the listing is refused when read.
    ok = files["ok.jsonl"]
    (landing / "ok.jsonl").unlink()
    (landing / "ok.jsonl").symlink_to(outside / "secret.jsonl")
    with pytest.raises(OutsideLinkError, match=r"ok.jsonl: refused"):
        landing_folder.read(ok)

    allowing = LandingFolder(str(landing), allow_outside_links=True)
    assert list(allowing.files()) == ["alias.jsonl", "linked_dir__more.jsonl", "ok.jsonl", "secret.jsonl"]
    assert allowing.read(allowing.files()["secret.jsonl"]).table.column("id").to_pylist() == ["s1"]
    assert allowing.refused == {}


def test_files_fall_in_stable_buckets_whose_digests_move_with_names_and_fingerprints(tmp_path):
    assert bucket_keys(16)[:2] == ("bucket-00", "bucket-01") and len(bucket_keys(16)) == 16
    assert bucket_keys(1000)[-1] == "bucket-999"
    with pytest.raises(ValueError, match="landing buckets: 0 is not between 1 and 1000"):
        bucket_keys(0)
    assert [bucket_of(key, 16) for key in ("python_docs.jsonl", "stdlib_docstrings.txt",
                                           "package_summaries.csv")] == ["bucket-04", "bucket-07", "bucket-11"]
    assert bucket_of("python_docs.jsonl", 1) == "bucket-00"

    for name in ("python_docs.jsonl", "stdlib_docstrings.txt"):
        (tmp_path / name).write_text(json.dumps({"id": "a", "text": name}) + "\n")
    landing = LandingFolder(str(tmp_path))
    first = bucket_digests(landing.listing(), 16)
    assert sorted(first) == ["bucket-04", "bucket-07"]  # only buckets that hold files
    assert bucket_digests(landing.listing(), 16) == first
    os.utime(tmp_path / "python_docs.jsonl", (1e9, 1e9))  # a new fingerprint: its bucket moves
    touched = bucket_digests(landing.listing(), 16)
    assert touched["bucket-04"] != first["bucket-04"] and touched["bucket-07"] == first["bucket-07"]
    (tmp_path / "stdlib_docstrings.txt").unlink()  # a deleted file: its bucket is gone
    assert sorted(bucket_digests(landing.listing(), 16)) == ["bucket-04"]


def test_an_s3_landing_folder_is_listed_and_read(s3_server, s3_root):
    """An ``s3://`` landing folder on the loopback S3 server: listed (nested files, hidden
    and unsupported ones left out) and read, with s3:// URIs."""
    bucket, prefix = s3_root.removeprefix("s3://").split("/", 1)
    client = s3_server.client()
    objects = {
        "a.jsonl": '{"id": "a1", "text": "Ay."}\n{"id": "a2", "text": "Bee."}\n',
        "team/b.jsonl": '{"id": "b1", "text": "Sea."}\n',
        ".hidden.jsonl": '{"id": "h1", "text": "Not listed."}\n',
        "notes.md": "not a corpus file\n",
    }
    for name, body in objects.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}/landing/{name}", Body=body.encode())

    landing = LandingFolder(f"{s3_root}/landing")
    assert not isinstance(landing.filesystem, pafs.LocalFileSystem)
    files = landing.files()
    assert list(files) == ["a.jsonl", "team__b.jsonl"]
    assert files["team__b.jsonl"].uri == f"{s3_root}/landing/team/b.jsonl"
    assert files["a.jsonl"].fingerprint.startswith(f"{len(objects['a.jsonl'])}:")
    shard = landing.read(files["a.jsonl"])
    assert shard.table.column("id").to_pylist() == ["a1", "a2"]
    assert shard.table.column("text").to_pylist() == ["Ay.", "Bee."]
