"""Bring the store up to date with the landing folder, a batch of buckets at a time.

A landing folder may hold 100,000 small files. Each file is a partition of the store (its
key, `landing.partition_key_for_file`), and the files are grouped into a fixed number of
buckets (`landing.bucket_of`): the unit of work of one Dagster partition. Syncing a set of
buckets lists the folder once, reads only the files whose fingerprint (size, modification
time) differs from their `landing_files` record, and stores every change of the batch in
one commit (`EmbeddingStore.write_corpus_changes`).

A file that left the folder:

- keeps its rows and vectors by default (``on_delete="keep"``): landing folders are often
  cleaned once their files are ingested, and that must not empty the store. Its record
  says ``deleted``; put it back and it is ``stored`` again;
- is retired (its current corpus version becomes empty; earlier versions stay readable
  until maintenance) when its content is still in the folder under another name (a
  rename, or a copy: the rows live on there), or with ``on_delete="retire"``.

A file whose stored corpus rows lie in a damaged data file (missing, of another size than
recorded, or found damaged by `verify --read-rows`) is read again even when unchanged: that
writes its rows again and repairs it. Gone from the folder, it cannot be repaired that way:
it fails, named with its partition.

    >>> report = sync_buckets(LandingFolder("landing"), store, ["bucket-03"], bucket_count=16)
    >>> report.stored, report.unchanged, report.failed
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from embedding_core.corpus import CorpusShard
from embedding_core.landing import LandingFile, LandingFolder, bucket_of
from embedding_core.store import CorpusVersion, EmbeddingStore
from embedding_core.store.ingest import CorpusChange, corpus_content_version
from embedding_core.store.records import CORPUS_SCHEMA
from embedding_core.store.writer import corpus_rows_of

__all__ = ["ON_DELETE", "SyncReport", "bucket_state", "sync_buckets"]

ON_DELETE = ("keep", "retire")


@dataclass
class SyncReport:
    """What one sync did, per landing file (partition key)."""

    stored: dict[str, CorpusVersion] = field(default_factory=dict)  # read and current now
    shards: dict[str, CorpusShard] = field(default_factory=dict)  # what was read, for reports
    unchanged: list[str] = field(default_factory=list)  # same fingerprint: not read
    deleted: list[str] = field(default_factory=list)  # gone, rows kept
    retired: dict[str, str] = field(default_factory=dict)  # gone, rows retired: why
    failed: dict[str, str] = field(default_factory=dict)  # could not be read: why
    bucket_of: dict[str, str] = field(default_factory=dict)  # every key above -> its bucket
    current: dict[str, CorpusVersion] = field(default_factory=dict)  # of every key above, after

    def in_bucket(self, bucket: str) -> list[str]:
        return sorted(key for key, of in self.bucket_of.items() if of == bucket)


def sync_buckets(
    landing: LandingFolder, store: EmbeddingStore, buckets: Iterable[str], bucket_count: int,
    on_delete: str = "keep", run_id: str | None = None,
    read: Callable[[LandingFile], CorpusShard] | None = None,
) -> SyncReport:
    """Store what changed in the landing files of `buckets` since their last sync: one
    listing, reads of the new and changed files only, one commit. A file that cannot be
    read (or whose name collides with another's key) is left as it was and named in
    `report.failed`; the others are stored."""
    if on_delete not in ON_DELETE:
        raise ValueError(f"on_delete={on_delete!r}: expected one of {ON_DELETE}")
    wanted = set(buckets)
    read = read or landing.read
    listing = landing.listing()
    records = store.landing_records()
    damaged = _damaged_keys(store, [key for key in set(listing) | set(records)
                                    if bucket_of(key, bucket_count) in wanted])
    report = SyncReport()
    present_versions: dict[str, str] = {  # content version -> a present file that has it
        record.corpus_version: key for key, record in records.items()
        if key in listing and record.state == "stored" and record.corpus_version}
    changes: dict[str, CorpusChange] = {}
    for key, files in listing.items():
        bucket = bucket_of(key, bucket_count)
        if bucket not in wanted:
            continue
        report.bucket_of[key] = bucket
        if len(files) > 1:
            report.failed[key] = (" and ".join(repr(f.relative_path) for f in files)
                                  + f" map to the same partition key {key!r}; rename one")
            continue
        file, record = files[0], records.get(key)
        if (record is not None and record.state == "stored" and record.fingerprint == file.fingerprint
                and record.relative_path == file.relative_path and key not in damaged):
            report.unchanged.append(key)
            continue
        try:
            shard = read(file)
        except Exception as error:  # noqa: BLE001 - named per file in the report
            message = str(error)
            report.failed[key] = message if file.uri in message else f"{file.uri}: {message}"
            continue
        report.shards[key] = shard
        present_versions[corpus_content_version(shard.table)] = key
        changes[key] = CorpusChange(key, shard.table, source_uri=file.uri, rejected_rows=len(shard.rejected),
                                    relative_path=file.relative_path, fingerprint=file.fingerprint)
    for key, record in records.items():
        bucket = bucket_of(key, bucket_count)
        if bucket not in wanted or key in listing:
            continue
        if key in damaged:
            report.bucket_of[key] = bucket
            report.failed[key] = (f"landing file {record.relative_path} (partition {key!r}) is gone and its "
                                  f"stored corpus rows lie in a damaged data file ({damaged[key]}): put the "
                                  f"file back in the landing folder and materialize {bucket} again")
            continue
        if record.state != "stored":
            continue
        report.bucket_of[key] = bucket
        renamed_to = present_versions.get(record.corpus_version)
        if renamed_to is not None or on_delete == "retire":
            why = (f"its content is in {renamed_to}" if renamed_to is not None
                   else "deleted from the landing folder (on_delete=retire)")
            report.retired[key] = why
            changes[key] = CorpusChange(key, CORPUS_SCHEMA.empty_table(), relative_path=record.relative_path,
                                        state="retired", detail=why)
        else:
            report.deleted.append(key)
            changes[key] = CorpusChange(key, None, relative_path=record.relative_path,
                                        fingerprint=record.fingerprint, state="deleted",
                                        recorded_version=record.corpus_version,
                                        detail="deleted from the landing folder; rows kept")
    report.current = store.write_corpus_changes(list(changes.values()), run_id=run_id,
                                                report=sorted(report.bucket_of))
    report.stored = {key: report.current[key] for key in report.shards}
    return report


def _damaged_keys(store: EmbeddingStore, keys: list[str]) -> dict[str, str]:
    """key -> the damaged data file its current corpus rows lie in, for those of `keys` whose
    rows do: a check of the recorded sizes (and of what `verify --read-rows` recorded)."""
    current = store.current_corpus_versions(keys)
    files = store.damaged_files([version.write_id for version in current.values()])
    return {key: file.path for file in files for key, version in current.items()
            if version.write_id in file.write_ids}


def bucket_state(store: EmbeddingStore, buckets: Iterable[str], bucket_count: int
                 ) -> tuple[dict[str, list[str]], dict[str, CorpusVersion]]:
    """Bucket -> the store partitions (landing files ever recorded, deleted ones included) in
    it, sorted, for each of `buckets`; and the current corpus version of each (one query)."""
    found: dict[str, list[str]] = {bucket: [] for bucket in buckets}
    records, current = store.landing_state(lambda key: bucket_of(key, bucket_count) in found)
    for key in sorted(records):
        found[bucket_of(key, bucket_count)].append(key)
    return found, current


def bucket_texts(store: EmbeddingStore, corpora: Sequence[CorpusVersion]) -> list[str]:
    """Every text of `corpora` (a bucket's current corpus versions), in their order, read in
    one query; `DamagedDataError` when some lie in a damaged data file."""
    if not corpora:
        return []
    with store.connect() as con:
        rows = corpus_rows_of(con, corpora)
    return [text for corpus in corpora for text in rows[corpus.write_id].column("text").to_pylist()]
