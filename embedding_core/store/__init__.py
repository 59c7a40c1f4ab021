"""Versioned embedding store on DuckLake: Parquet files under a folder or ``s3://`` prefix,
and a SQL catalog (a DuckDB file, or Postgres for many writers on many machines).

Every shard commits in one lake transaction (rows, version record, a commit message naming
the run); nothing is overwritten, earlier versions and earlier snapshots of the whole store
stay readable until `EmbeddingStore.maintain` expires what is no longer current.

- `records`: what is stored (`EmbeddingParams`, `ModelSnapshot`, versions, results)
- `rows`: checking a shard's rows and an encoder's output in memory, chunk rows
- `catalog`: connections, tables and commits;  `files`: the data path and S3 settings
- `views`: `embeddings`, `document_embeddings`, `documents` and the current-version views
- `queries`: reading records and rows back;  `writer`: reuse, encode, one commit
- `maintenance`: expiring old versions and files;  `facade`: `EmbeddingStore`
- `serving`: version sets, the serving one of each model, promotions and rollback
- `damage`: finding missing or unreadable data files (`EmbeddingStore.verify`)
- `vector_index`: building, updating and opening the ANN index of a model version;
  `index_files`: where its files live;  `search`: index + exact search (`VectorSearcher`)
"""

import embedding_core.store.records as records
from embedding_core.store.catalog import CATALOG_FILE_NAME, CommitConflictError, StoreBusyError
from embedding_core.store.damage import DamagedDataError, DamagedFile, VerifyReport
from embedding_core.store.facade import EmbeddingStore
from embedding_core.store.records import *  # noqa: F403 (the public records, as records.__all__ lists them)
from embedding_core.store.serving import VersionError

__all__ = ["CATALOG_FILE_NAME", "CommitConflictError", "DamagedDataError", "DamagedFile", "EmbeddingStore",
           "StoreBusyError", "VerifyReport", "VersionError",
           *records.__all__]
