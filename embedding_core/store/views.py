"""DDL of the lake's views: which record of each key is current, and the `embeddings` and
`documents` views a user queries.

Every table is append-only, so "current" is the latest committed record per key: ordered
by the lake snapshot that committed it (DuckLake's `snapshot_id` column), never by a
clock. A version's own attributes (when it was first stored, by which run) come from its
first record; later records of the same version make it current again, and its rows are
those of its latest record's `write_id`: the same rows, unless a writer wrote them again
because a data file of the first ones was damaged (`damage`).
"""

from __future__ import annotations

import duckdb

__all__ = ["CHUNK_COLUMNS_SQL", "SCHEMA_VERSION", "VECTOR_TABLES", "embeddings_view_sql", "ensure_embeddings_view", "schema_views"]

# stored dtype -> (rows table, DuckDB type). DuckLake has no fixed-size arrays: the
# `embeddings` view casts to FLOAT[dim].
VECTOR_TABLES = {
    "float32": ("embedding_rows", "FLOAT[]"),
    "int8": ("embedding_rows_int8", "TINYINT[]"),
    "uint8": ("embedding_rows_uint8", "UTINYINT[]"),
}

# The chunk columns of every vector rows table (added by schema version 3).
CHUNK_COLUMNS_SQL = "chunk INTEGER, char_start INTEGER, char_end INTEGER"


def _first(key: str) -> str:
    return f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY snapshot_id, rowid) = 1"


def _latest(key: str) -> str:
    return f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY snapshot_id DESC, rowid DESC) = 1"


def _stored(table: str, key: str) -> str:
    """First record per key, with the `write_id` of the key's latest record."""
    on = " AND ".join(f"l.{k} = f.{k}" for k in key.split(", "))
    return f"""SELECT f.* REPLACE (l.write_id AS write_id) FROM (
                SELECT *, snapshot_id FROM {table} {_first(key)}) f
            JOIN (SELECT {key}, write_id FROM {table} {_latest(key)}) l ON {on}"""


# Raised when the views change: a store whose views are older gets them again on open.
SCHEMA_VERSION = 3


def embeddings_view_sql(vector_type: str) -> list[str]:
    """The `embeddings` view (current float32 vectors of every partition and model, a row
    per chunk: `chunk` 0 and NULL spans for a text embedded whole) and `document_embeddings`
    (a vector per document: the normalized mean of its chunks' vectors)."""
    table = VECTOR_TABLES["float32"][0]
    return [f"""CREATE OR REPLACE VIEW embeddings AS
        SELECT r.id, r.text_sha256, v.partition, v.model, v.revision, v.params_hash,
               v.corpus_version, v.version_id, coalesce(r.chunk, 0) AS chunk, r.char_start, r.char_end,
               r.embedding::{vector_type} AS embedding
        FROM current_embedding_versions v JOIN {table} r ON r.write_id = v.write_id
        WHERE v.dtype = 'float32'""",
            f"""CREATE OR REPLACE VIEW document_embeddings AS
        WITH mean AS (
            SELECT id, partition, model, revision, params_hash, corpus_version, version_id,
                   count(*) AS chunks, list(embedding ORDER BY chunk) AS vectors
            FROM embeddings GROUP BY ALL),
        summed AS (
            SELECT * EXCLUDE (vectors), list_transform(range(1, len(vectors[1]) + 1),
                       i -> list_avg(list_transform(vectors, v -> v[i]))::FLOAT) AS embedding
            FROM mean),
        normed AS (SELECT *, greatest(sqrt(list_sum(list_transform(embedding, x -> x * x))), 1e-12) AS norm
                   FROM summed)
        SELECT * EXCLUDE (embedding, norm),
               list_transform(embedding, x -> (x / norm)::FLOAT)::{vector_type} AS embedding
        FROM normed"""]


def schema_views() -> list[str]:
    """The views a new store starts with (`embeddings` typed FLOAT[] until it holds vectors)."""
    return [
        f"""CREATE OR REPLACE VIEW current_model_snapshots AS
            SELECT * FROM model_snapshots {_latest('model_key')}""",
        f"""CREATE OR REPLACE VIEW stored_corpus_versions AS
            {_stored('corpus_versions', 'partition, corpus_version')}""",
        f"""CREATE OR REPLACE VIEW current_corpus_versions AS
            SELECT s.* FROM stored_corpus_versions s SEMI JOIN (
                SELECT partition, corpus_version FROM corpus_versions {_latest('partition')}
            ) c ON c.partition = s.partition AND c.corpus_version = s.corpus_version""",
        f"""CREATE OR REPLACE VIEW stored_embedding_versions AS
            {_stored('embedding_versions', 'version_id')}""",
        f"""CREATE OR REPLACE VIEW current_embedding_versions AS
            SELECT s.* FROM stored_embedding_versions s SEMI JOIN (
                SELECT version_id FROM embedding_versions {_latest('partition, model, dtype')}
            ) c ON c.version_id = s.version_id""",
        """CREATE OR REPLACE VIEW documents AS
            SELECT r.id, r.text, r.text_sha256, c.partition, c.corpus_version
            FROM current_corpus_versions c JOIN corpus_rows r ON r.write_id = c.write_id""",
        *embeddings_view_sql("FLOAT[]"),
        f"CREATE OR REPLACE VIEW store_schema AS SELECT {SCHEMA_VERSION} AS version",
    ]


def ensure_embeddings_view(con: duckdb.DuckDBPyConnection) -> bool:
    """Retype `embeddings` to FLOAT[dim] when every current float32 version has that one
    dimension, FLOAT[] otherwise; True when it had to change.

    Writers call it inside their commit, so the view and the vectors change in one
    snapshot, and again after it, to repair the one race snapshot isolation lets through
    (two writers that each saw a single dimension, a different one).
    """
    dims = con.execute("SELECT DISTINCT dim FROM current_embedding_versions "
                       "WHERE dtype = 'float32'").fetchall()
    wanted = f"FLOAT[{dims[0][0]}]" if len(dims) == 1 else "FLOAT[]"
    have = con.execute("SELECT data_type FROM duckdb_columns() WHERE database_name = current_database() "
                       "AND table_name = 'embeddings' AND column_name = 'embedding'").fetchone()
    if have is not None and have[0] == wanted:
        return False
    for statement in embeddings_view_sql(wanted):
        con.execute(statement)
    return True
