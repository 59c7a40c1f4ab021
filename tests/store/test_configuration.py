"""Where a store lives: root, catalog, environment variables, and the duckdb shell one-liner."""

import subprocess
import sys

import pytest

from embedding_core.store import EmbeddingParams, EmbeddingStore
from embedding_core.store.catalog import Catalog, _engine_cursor
from embedding_core.store.files import DataPath, s3_secret_sql
from tests.store.fakes import SNAPSHOT, TextHashEncoder


def test_local_root_gets_a_catalog_file_inside_it(tmp_path):
    store = EmbeddingStore(tmp_path / "store")
    assert store.root == str(tmp_path / "store")
    assert store.catalog == str(tmp_path / "store" / "catalog.ducklake")
    assert (tmp_path / "store" / "catalog.ducklake").is_file()
    assert store.uri("a/b.parquet") == f"{tmp_path}/store/a/b.parquet"


def test_s3_root_without_a_catalog_names_the_variable_to_set():
    with pytest.raises(ValueError, match=r"'s3://bucket/lake' is on S3: set EMBEDDING_CATALOG"):
        EmbeddingStore("s3://bucket/lake")
    with pytest.raises(ValueError, match=r"only local folders, file:// and s3:// URIs"):
        EmbeddingStore("gs://bucket/lake", "x.ducklake")


def test_file_uri_root_is_the_local_folder(tmp_path):
    assert EmbeddingStore(f"file://{tmp_path}/store").root == f"{tmp_path}/store"


def test_from_env_reads_the_store_root_and_catalog(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDDING_STORE_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("EMBEDDING_CATALOG", str(tmp_path / "elsewhere" / "lake.ducklake"))
    store = EmbeddingStore.from_env()
    assert (store.root, store.catalog) == (str(tmp_path / "root"), str(tmp_path / "elsewhere" / "lake.ducklake"))
    monkeypatch.delenv("EMBEDDING_STORE_ROOT")
    with pytest.raises(ValueError, match="EMBEDDING_STORE_ROOT"):
        EmbeddingStore.from_env()


def test_catalog_label_masks_the_postgres_password(tmp_path):
    catalog = Catalog("postgres:host=db port=5432 user=lake password='s3 cret' dbname=lake",
                      DataPath.parse(tmp_path))
    assert catalog.label == "postgres:host=db port=5432 user=lake password=*** dbname=lake"


def test_s3_secret_follows_the_standard_aws_variables():
    sql = s3_secret_sql({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "key",
                         "AWS_SECRET_ACCESS_KEY": "it's", "AWS_REGION": "eu-west-1"})
    assert sql == ("CREATE OR REPLACE SECRET embedding_store_s3 (TYPE s3, ENDPOINT '127.0.0.1:9000', "
                   "USE_SSL false, URL_STYLE 'path', KEY_ID 'key', SECRET 'it''s', REGION 'eu-west-1')")
    assert "ENDPOINT" not in s3_secret_sql({"AWS_REGION": "us-east-1"})  # plain AWS: its own endpoint


def test_moved_store_folder_keeps_working(tmp_path, sample_rows):
    store = EmbeddingStore(tmp_path / "a")
    corpus = store.write_corpus("docs", sample_rows)
    store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), TextHashEncoder())
    (tmp_path / "a").rename(tmp_path / "b")
    moved = EmbeddingStore(tmp_path / "b")
    with moved.connect() as con:
        assert con.execute("SELECT count(*) FROM embeddings").fetchone() == (30,)
        assert con.execute("SELECT count(*) FROM documents").fetchone() == (30,)


def test_duckdb_shell_sql_opens_the_views_in_a_plain_connection(store, sample_rows):
    encoder = TextHashEncoder()
    corpus = store.write_corpus("docs", sample_rows)
    store.write_embeddings("docs", corpus, SNAPSHOT, EmbeddingParams(), encoder)
    sql = store.duckdb_shell_sql()
    assert sql.startswith(f"ATTACH 'ducklake:{store.catalog}' AS lake") and sql.endswith("USE lake;")
    shell = _engine_cursor(["ducklake"])  # a shell would autoload the extension
    try:
        for statement in sql.split("; "):
            shell.execute(statement)
        query = encoder.vector(sample_rows.column("text")[2].as_py())
        best = shell.execute("SELECT id FROM embeddings ORDER BY array_cosine_similarity(embedding, ?::FLOAT[8]) "
                             "DESC LIMIT 1", [query.tolist()]).fetchone()
        assert best == (sample_rows.column("id")[2].as_py(),)
        assert shell.execute("SELECT count(*) FROM documents").fetchone() == (30,)
    finally:
        shell.execute("USE memory")
        shell.execute("DETACH lake")
        shell.close()


def test_the_store_and_its_commands_start_without_the_encoder():
    """A writer process or `embedding-store` imports neither torch nor transformers (seconds of
    start-up each); they load when a text is encoded."""
    code = ("import sys, embedding_core.cli, embedding_core.store\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    started = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert started.returncode == 0, started.stderr[-3000:]
    assert started.stdout.strip() == "[]"
