"""Where the lake's Parquet files live: a local folder or ``s3://bucket/prefix``.

S3 access follows the standard variables that boto3 and pyarrow read too:
``AWS_ENDPOINT_URL`` (any S3-compatible server), ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN`` and ``AWS_REGION``; they become a DuckDB
S3 secret on every connection.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlparse

__all__ = ["DataPath", "s3_secret_sql", "sql_str"]


def sql_str(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class DataPath:
    """The store root: an absolute local folder or an ``s3://bucket/prefix`` URI."""

    root: str

    @classmethod
    def parse(cls, root: str | os.PathLike) -> DataPath:
        root = os.fspath(root)
        if root.startswith("s3://"):
            if not urlparse(root).netloc:
                raise ValueError(f"store root {root!r} names no bucket; expected s3://bucket/prefix")
            return cls(root.rstrip("/"))
        if root.startswith("file://"):
            root = urlparse(root).path
        elif "://" in root:
            raise ValueError(f"store root {root!r}: only local folders, file:// and s3:// URIs "
                             "are supported")
        return cls(os.path.abspath(root))

    @property
    def is_s3(self) -> bool:
        return self.root.startswith("s3://")

    @property
    def data_path(self) -> str:
        """The DuckLake ``DATA_PATH``: ``<root>/lake/``.

        A folder of its own, because maintenance deletes every Parquet file under it that
        the lake does not reference: other files under the root (an older store's, a
        user's) stay out of its reach.
        """
        return self.root + "/lake/"

    def uri(self, relative_path: str = "") -> str:
        """Where a root-relative path lives: an absolute local path or an s3:// URI."""
        return f"{self.root}/{relative_path}" if relative_path else self.root

    def prepare(self) -> None:
        """Create a local root folder (S3 prefixes need no creating)."""
        if not self.is_s3:
            os.makedirs(self.root, exist_ok=True)


def s3_secret_sql(environ: Mapping[str, str] | None = None) -> str:
    """``CREATE OR REPLACE SECRET`` for DuckDB's S3 access, from the standard AWS variables.

    An ``http://`` endpoint (a local S3-compatible server) gets ``USE_SSL false``; any
    custom endpoint gets path-style URLs, which every S3-compatible server understands.
    The result holds the credentials: run it, never log it.
    """
    environ = os.environ if environ is None else environ
    options = {"TYPE": "s3"}
    endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        options["ENDPOINT"] = sql_str(parsed.netloc + parsed.path.rstrip("/"))
        options["USE_SSL"] = "false" if parsed.scheme == "http" else "true"
        options["URL_STYLE"] = sql_str("path")
    for option, variable in (("KEY_ID", "AWS_ACCESS_KEY_ID"), ("SECRET", "AWS_SECRET_ACCESS_KEY"),
                             ("SESSION_TOKEN", "AWS_SESSION_TOKEN")):
        if environ.get(variable):
            options[option] = sql_str(environ[variable])
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if region:
        options["REGION"] = sql_str(region)
    body = ", ".join(f"{key} {value}" for key, value in options.items())
    return f"CREATE OR REPLACE SECRET embedding_store_s3 ({body})"
