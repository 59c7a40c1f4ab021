"""The data path of a run: each step attaches the catalog a fixed number of times plus three
per bucket it writes (a lookup before encoding, the commit, the read of the bucket's texts
that counts what encode cuts), and a bucket's new vectors are read back once, in the
commit's own connection."""

import collections
import contextlib
import inspect

from dagster import AssetKey

import embedding_core.store.catalog as catalog
import embedding_core.store.queries as queries
from embedding_assets.backfill import landing_partitions, materialize_selection
from embedding_core.landing import bucket_of

# The function of each half of the `landing_buckets` step -> what the counts call it.
STEPS = {"landing_buckets": "open", "ingest": "corpus", "embed": "embeddings", "match_model_evaluations": "embeddings_match_model"}


def test_each_step_attaches_the_catalog_a_bounded_number_of_times(defs, instance, landing, monkeypatch):
    attaches, vector_reads = collections.Counter(), collections.Counter()
    connection, vector_rows = catalog.Catalog.connection, queries.vector_rows_by_write

    @contextlib.contextmanager
    def counted(self, *args, **kwargs):
        callers = [frame.function for frame in inspect.stack()[2:16]]
        attaches[next((STEPS[name] for name in callers if name in STEPS), "other")] += 1
        with connection(self, *args, **kwargs) as con:
            yield con

    def counted_vector_rows(con, table, write_ids):
        vector_reads[len(write_ids)] += 1
        return vector_rows(con, table, write_ids)

    materialize_selection(defs, instance, [AssetKey("model_snapshot")])
    monkeypatch.setattr(catalog.Catalog, "connection", counted)
    monkeypatch.setattr(queries, "vector_rows_by_write", counted_vector_rows)
    files = sorted(path.name for path in landing.iterdir())
    buckets = sorted({bucket_of(name, 16) for name in files})
    assert len(buckets) == 3  # the three sample files fall into three buckets
    everything = landing_partitions()
    results = materialize_selection(defs, instance, [AssetKey("corpus"), AssetKey("embeddings")],
                                    everything, max_partitions_per_run=len(everything))
    assert [result.success for result in results] == [True]
    # the step: one open (schema check) for both halves
    # corpus: landing records, the damage check of the stored files (recorded sizes), lookup,
    # commit (which reads the versions back)
    # embeddings: snapshot, bucket state, then per bucket with files a lookup, a commit and
    # the read of its texts (the truncation count covers reused texts too)
    # spot check: open, snapshot, bucket state, versions, the sampled rows
    assert dict(attaches) == {"open": 1, "corpus": 4, "embeddings": 2 + 3 * len(buckets),
                              "embeddings_match_model": 5}
    # Each bucket's new vectors were read back once, in its commit's connection.
    assert vector_reads == {1: len(buckets)}

    # Nothing changed: the corpus step reads no file and commits nothing new, and embeddings
    # writes nothing (a lookup and the texts' read per bucket, no commit), so no vector is
    # read back.
    attaches.clear()
    vector_reads.clear()
    snapshots = len(defs.resources["embedding_store"].open().lake_snapshots())
    results = materialize_selection(defs, instance, [AssetKey("corpus"), AssetKey("embeddings")],
                                    everything, max_partitions_per_run=len(everything))
    assert [result.success for result in results] == [True]
    assert attaches["embeddings"] == 2 + 2 * len(buckets)
    assert vector_reads == {}
    assert len(defs.resources["embedding_store"].open().lake_snapshots()) == snapshots
