"""Partitioning shared by the corpus and embeddings assets, and the partition key of a
landing file."""

import hashlib
import os
import re
import unicodedata

from dagster import BackfillPolicy, DynamicPartitionsDefinition

# One partition per corpus file in the landing folder; the landing sensor adds them.
corpus_partitions = DynamicPartitionsDefinition(name="corpus_shards")

# A backfill runs up to this many shards per run: the model loads once per run, and a
# failed run re-does at most this many shards.
MAX_PARTITIONS_PER_RUN = 8
backfill_policy = BackfillPolicy.multi_run(max_partitions_per_run=MAX_PARTITIONS_PER_RUN)

MAX_PARTITION_KEY_LENGTH = 100
SUBFOLDER_SEPARATOR = "__"


class PartitionKeyCollisionError(ValueError):
    """Two or more landing files whose names map to the same partition key."""


def partition_key_for_file(relative_path: str) -> str:
    """The partition key of a landing file, from its path relative to the landing folder.

    Keys are safe in Dagster (UI, URLs, the ``a...b`` range syntax) and as a folder name:
    accents are dropped, every other run of characters outside ``[A-Za-z0-9._-]`` becomes
    ``_``, runs of dots become one, and subfolders are joined with ``__``. A key longer
    than 100 characters, or one whose name kept no letter or digit, is cut and gets an
    8-character hash of the path (the suffix stays last). Safe names stay as they are::

        >>> partition_key_for_file("python_docs.jsonl")
        'python_docs.jsonl'
        >>> partition_key_for_file("My Notes (v2).jsonl")
        'My_Notes_v2_.jsonl'
        >>> partition_key_for_file("sub dir/ünïcode.csv")
        'sub_dir__unicode.csv'
    """
    decomposed = unicodedata.normalize("NFKD", relative_path)
    without_accents = "".join(char for char in decomposed if not unicodedata.combining(char))
    segments = [re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "_", segment))
                for segment in without_accents.split("/") if segment]
    key = SUBFOLDER_SEPARATOR.join(segments)
    stem, suffix = os.path.splitext(key)
    if len(key) > MAX_PARTITION_KEY_LENGTH or not re.search(r"[A-Za-z0-9]", stem):
        digest = hashlib.sha256(relative_path.encode("utf-8")).hexdigest()[:8]
        key = f"{stem[: MAX_PARTITION_KEY_LENGTH - len(suffix) - 9]}-{digest}{suffix}"
    return key
