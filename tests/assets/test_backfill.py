"""The backfill command's planning: which buckets a selection names, and contiguous
partition ranges of at most the policy size."""

import pytest

from embedding_assets.backfill import contiguous_chunks, landing_partitions, select_partitions
from embedding_core.landing import bucket_of

FILES = ["package_summaries.csv", "python_docs.jsonl", "stdlib_docstrings.txt"]  # bucket-11, -04, -07


def test_backfill_chunks_are_contiguous_ranges_of_at_most_the_policy_size():
    keys = [f"p{i}" for i in range(20)]
    chunks = contiguous_chunks(keys, [*keys[:10], "p12", "p13", "p19"], size=4)
    assert chunks == [["p0", "p1", "p2", "p3"], ["p4", "p5", "p6", "p7"], ["p8", "p9"],
                      ["p12", "p13"], ["p19"]]
    with pytest.raises(ValueError, match=r"unknown partition\(s\) \['nope'\]"):
        contiguous_chunks(keys, ["nope"], size=4)


def test_a_selection_names_buckets_or_landing_files_which_stand_for_their_buckets():
    buckets = landing_partitions()
    assert buckets == [f"bucket-{i:02d}" for i in range(16)]
    assert [bucket_of(key, 16) for key in FILES] == ["bucket-11", "bucket-04", "bucket-07"]
    # Default: from the first to the last bucket that holds a file (one range: shared runs);
    # every bucket when the folder is empty. A bucket range as it is.
    assert select_partitions(buckets, None, None, None, FILES) == [f"bucket-{i:02d}" for i in range(4, 12)]
    assert select_partitions(buckets, None, None, None, []) == buckets
    assert select_partitions(buckets, "bucket-03", "bucket-05", None, FILES) == [
        "bucket-03", "bucket-04", "bucket-05"]
    assert select_partitions(buckets, None, "bucket-01", None, FILES) == ["bucket-00", "bucket-01"]
    # A list mixes buckets and files, in bucket order, each bucket once.
    assert select_partitions(buckets, None, None, "python_docs.jsonl, bucket-04,package_summaries.csv,bucket-00",
                             FILES) == ["bucket-00", "bucket-04", "bucket-11"]
    # A range of file keys: the buckets of the files whose keys lie in it.
    assert select_partitions(buckets, "package_summaries.csv", "python_docs.jsonl", None, FILES) == [
        "bucket-04", "bucket-11"]
    assert select_partitions(buckets, "python_docs.jsonl", None, None, FILES) == ["bucket-04", "bucket-07"]
    with pytest.raises(ValueError, match=r"--to 'missing.jsonl' is neither a partition \(bucket-00 \.\.\. "
                                         r"bucket-15\) nor a landing file of the landing folder"):
        select_partitions(buckets, None, "missing.jsonl", None, FILES)
    with pytest.raises(ValueError, match=r"--partitions 'bucket-16' is neither a partition"):
        select_partitions(buckets, None, None, "bucket-16", FILES)
