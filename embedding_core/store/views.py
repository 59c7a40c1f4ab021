"""DDL of the lake's views: which record of each key is current, and the `embeddings` and
`documents` views a user queries.

Embedding versions group into *version sets*: all versions of one (model, revision,
params_hash), keyed by `VERSION_KEY_SQL`. `latest_embedding_versions` holds the latest version
of each partition in every version set; each model serves one set (`serving_version_sets`:
the latest `promotions` record's, else its first set), and `current_embedding_versions`,
`embeddings` and `document_embeddings` show that set only. `all_version_embeddings` shows
every set's vectors (candidates included) for a user who picks one by `version_key`, and
`embedding_version_sets` each set's coverage of the current corpus.

Every table is append-only, so "current" is the latest committed record per key: ordered
by the lake snapshot that committed it (DuckLake's `snapshot_id` column), never by a
clock. A version's own attributes (when it was first stored, by which run) come from its
first record; later records of the same version make it current again, and its rows are
those of its latest record's `write_id`: the same rows, unless a writer wrote them again
because a data file of the first ones was damaged (`damage`).
"""

from __future__ import annotations

import duckdb

__all__ = ["CHUNK_COLUMNS_SQL", "PIN_SERVING_SQL", "SCHEMA_VERSION", "VECTOR_TABLES", "VERSION_KEY_SQL",
           "embeddings_view_sql", "ensure_embeddings_view", "schema_views"]

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
# 4: version sets, the `promotions` table, one serving version set per model.
SCHEMA_VERSION = 4

# `records.version_key` in SQL, of a row with `revision` and `params_hash` columns.
VERSION_KEY_SQL = "left(regexp_replace(revision, '^sha256:', ''), 8) || '-' || left(params_hash, 8)"

# Record, for each model without any promotion, the version set older code served: a complete
# one first, then the one that was current (latest per partition and dtype) in the most
# partitions, then the newest. The first parameter is the record's reason.
PIN_SERVING_SQL = f"""INSERT INTO promotions
    WITH old_current AS (
        SELECT model, revision, params_hash, count(*) AS partitions FROM (
            SELECT model, revision, params_hash FROM embedding_versions {_latest('partition, model, dtype')})
        GROUP BY ALL),
    chosen AS (
        SELECT s.* FROM embedding_version_sets s LEFT JOIN old_current o USING (model, revision, params_hash)
        WHERE s.model NOT IN (SELECT model FROM promotions)
        QUALIFY row_number() OVER (PARTITION BY s.model ORDER BY s.complete DESC,
                                   coalesce(o.partitions, 0) DESC, s.snapshot_id DESC) = 1)
    SELECT model, NULL, NULL, NULL, version_key, revision, params_hash, '{{}}', ?, false, NULL,
           current_timestamp FROM chosen"""


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
    previous = f"SELECT model, from_revision AS revision, from_params_hash AS params_hash FROM promotions {_latest('model')}"
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
        # The latest version of each partition in each version set (serving or not).
        f"""CREATE OR REPLACE VIEW latest_embedding_versions AS
            SELECT s.*, {VERSION_KEY_SQL} AS version_key FROM stored_embedding_versions s SEMI JOIN (
                SELECT version_id FROM embedding_versions {_latest('partition, model, revision, params_hash')}
            ) c ON c.version_id = s.version_id""",
        # A model's latest promotion names its serving set; with none, its first set serves.
        f"""CREATE OR REPLACE VIEW serving_version_sets AS
            WITH promoted AS (
                SELECT model, to_revision AS revision, to_params_hash AS params_hash FROM promotions
                {_latest('model')}),
            first AS (
                SELECT model, revision, params_hash FROM embedding_versions
                WHERE model NOT IN (SELECT model FROM promoted) {_first('model')})
            SELECT *, {VERSION_KEY_SQL} AS version_key FROM (SELECT * FROM promoted UNION ALL SELECT * FROM first)""",
        """CREATE OR REPLACE VIEW current_embedding_versions AS
            SELECT l.* FROM latest_embedding_versions l SEMI JOIN serving_version_sets s
              ON s.model = l.model AND s.revision = l.revision AND s.params_hash = l.params_hash""",
        f"""CREATE OR REPLACE VIEW embedding_version_sets AS
            WITH sets AS (
                SELECT model, revision, params_hash, any_value(params) AS params, any_value(dtype) AS dtype,
                       any_value(dim) AS dim, min(snapshot_id) AS snapshot_id, min(created_at) AS created_at
                FROM embedding_versions GROUP BY model, revision, params_hash),
            corpus AS (SELECT partition, corpus_version, rows FROM current_corpus_versions),
            covered AS (
                SELECT l.model, l.revision, l.params_hash, count(*) FILTER (WHERE c.rows > 0) AS partitions,
                       sum(l.rows)::BIGINT AS rows
                FROM latest_embedding_versions l
                JOIN corpus c ON c.partition = l.partition AND c.corpus_version = l.corpus_version
                GROUP BY ALL),
            -- An empty partition (a retired landing file) has nothing to embed: covered.
            counts AS (SELECT count(*) AS total, count(*) FILTER (WHERE rows = 0) AS empty FROM corpus)
            SELECT {VERSION_KEY_SQL.replace('revision', 's.revision').replace('params_hash', 's.params_hash')}
                       AS version_key, s.model, s.revision, s.params_hash, s.params, s.dtype, s.dim,
                   coalesce(v.partitions, 0) + n.empty AS partitions_covered, n.total AS partitions_total,
                   coalesce(v.partitions, 0) + n.empty >= n.total AS complete,
                   g.model IS NOT NULL AS serving, p.model IS NOT NULL AS previous,
                   coalesce(v.rows, 0) AS rows, s.snapshot_id, s.created_at
            FROM sets s CROSS JOIN counts n
            LEFT JOIN covered v ON v.model = s.model AND v.revision = s.revision AND v.params_hash = s.params_hash
            LEFT JOIN serving_version_sets g
              ON g.model = s.model AND g.revision = s.revision AND g.params_hash = s.params_hash
            LEFT JOIN ({previous}) p
              ON p.model = s.model AND p.revision = s.revision AND p.params_hash = s.params_hash""",
        """CREATE OR REPLACE VIEW documents AS
            SELECT r.id, r.text, r.text_sha256, c.partition, c.corpus_version
            FROM current_corpus_versions c JOIN corpus_rows r ON r.write_id = c.write_id""",
        *embeddings_view_sql("FLOAT[]"),
        # Every version set's current float32 vectors, candidates included: pick one by
        # `version_key` (what `search(version=...)` scans).
        f"""CREATE OR REPLACE VIEW all_version_embeddings AS
            SELECT r.id, r.text_sha256, v.partition, v.model, v.revision, v.params_hash, v.version_key,
                   v.corpus_version, v.version_id, coalesce(r.chunk, 0) AS chunk, r.char_start, r.char_end,
                   r.embedding
            FROM latest_embedding_versions v JOIN {VECTOR_TABLES['float32'][0]} r ON r.write_id = v.write_id
            WHERE v.dtype = 'float32'""",
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
