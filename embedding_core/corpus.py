"""Read a corpus file (JSONL, CSV, Parquet or plain text) into a normalized table.

The normalized table has the columns `id`, `text` and `text_sha256` (see
`embedding_core.store.corpus_table`). Rows that cannot be embedded are left out and
reported, each with its position in the file and the reason:

* ``invalid_json`` / ``not_an_object``: a JSONL line that is not a JSON object;
* ``missing_id``: no usable id;
* ``non_text`` / ``empty_text``: the text field is not a string, or only whitespace;
* ``text_too_long``: a text of more than `MAX_TEXT_CHARS` characters (every format);
* ``invalid_unicode``: a JSONL id or text holding a lone surrogate (``"\\ud800"``);
* ``too_deeply_nested``: a JSONL line nested deeper than the JSON parser can follow;
* ``unterminated_quote``: a CSV record whose quote never closes, or closes inside a field
  lines later; it is left out and reading resumes on the next line, so the rows it would
  have swallowed are kept.

Rows are split on ``\\n`` only (a trailing ``\\r`` is dropped): U+2028, U+0085 or a form
feed inside a line are part of the text.

An id used by more than one row is not a bad row but a bad file: which text is meant is
unknowable, so `read_corpus_file` raises `DuplicateIdError` naming the ids and their rows.

Example::

    shard = read_corpus_file("landing/python_docs.jsonl")
    shard.table.num_rows, shard.rejected_counts()
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from embedding_core.store import corpus_table

__all__ = [
    "SUPPORTED_SUFFIXES",
    "CorpusFormatError",
    "CorpusShard",
    "DuplicateIdError",
    "MAX_TEXT_CHARS",
    "RejectedRow",
    "read_corpus_file",
]

SUPPORTED_SUFFIXES = (".jsonl", ".ndjson", ".csv", ".parquet", ".txt")
# The longest text any format accepts (characters); longer ones are rejected rows.
MAX_TEXT_CHARS = 32 * 1024 * 1024


class CorpusFormatError(ValueError):
    """A corpus file that cannot be read at all (as opposed to single bad rows)."""


class DuplicateIdError(CorpusFormatError):
    """A corpus file in which some ids name more than one row.

    `duplicates` maps each repeated id to the 1-based rows (lines for JSONL and text,
    records for CSV and Parquet) that use it, in file order.
    """

    SHOWN = 5

    def __init__(self, source: str, duplicates: dict[str, tuple[int, ...]]) -> None:
        self.source = source
        self.duplicates = duplicates
        word = _position_word(source) + "s"
        shown = ", ".join(f"{row_id!r} ({word} {', '.join(map(str, rows))})"
                          for row_id, rows in list(duplicates.items())[: self.SHOWN])
        more = f", ... and {len(duplicates) - self.SHOWN} more" if len(duplicates) > self.SHOWN else ""
        super().__init__(
            f"{source}: {len(duplicates)} duplicate id(s), each used by more than one row: "
            f"{shown}{more}; ids must be unique within a file"
        )


@dataclass(frozen=True)
class RejectedRow:
    """A source row left out of the corpus: `row` is its 1-based line (JSONL, text) or record
    number (CSV, Parquet); `detail` says more where the reason alone does not."""

    row: int
    id: str | None
    reason: str
    detail: str | None = None


@dataclass(frozen=True)
class CorpusShard:
    """A normalized corpus table and the rows of the source file that were left out."""

    source: str
    table: pa.Table
    rejected: tuple[RejectedRow, ...]

    def rejected_counts(self) -> dict[str, int]:
        """Number of rejected rows per reason."""
        return dict(sorted(Counter(row.reason for row in self.rejected).items()))

    def rejection_report(self, limit: int = 10) -> str:
        """One line per rejected row (the first `limit`), naming the file, row and id."""
        lines = [
            f"{self.source} {_position_word(self.source)} {row.row}: {row.reason}"
            + (f" (id {row.id!r})" if row.id is not None else "")
            + (f": {row.detail}" if row.detail else "")
            for row in self.rejected[:limit]
        ]
        if len(self.rejected) > limit:
            lines.append(f"... and {len(self.rejected) - limit} more")
        return "\n".join(lines)


def read_corpus_file(
    path: str | os.PathLike, filesystem: pafs.FileSystem | None = None,
    id_field: str = "id", text_field: str = "text",
) -> CorpusShard:
    """Read one corpus file into a normalized `CorpusShard`.

    JSONL rows are objects with `id_field` and `text_field`; CSV files have a header
    naming them; Parquet files have such columns; a plain text file holds one text per
    line (blank lines skipped) and its ids are ``<file stem>:<line number>``. A file
    whose rows all lack the id field gets those line-number ids too.

    Raises `CorpusFormatError` naming the file when no row has the text field, the
    format is unknown, or the bytes are not UTF-8, and its subclass `DuplicateIdError`
    when an id names more than one row.
    """
    path = os.fspath(path)
    filesystem = filesystem or pafs.LocalFileSystem()
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise CorpusFormatError(
            f"{path}: unsupported corpus format {suffix or '(no suffix)'!r}; "
            f"expected one of {', '.join(SUPPORTED_SUFFIXES)}"
        )
    if suffix == ".parquet":
        records = _parquet_records(path, filesystem)
    else:
        content = _read_text(path, filesystem)
        if suffix == ".csv":
            records = _csv_records(path, content)
        elif suffix == ".txt":
            records = [(line_no, {text_field: line}) for line_no, line in _numbered_lines(content)]
        else:
            records = _jsonl_records(content)
    return _normalize(path, records, id_field, text_field)


def _position_word(path: str) -> str:
    return "line" if path.lower().endswith((".jsonl", ".ndjson", ".txt")) else "row"


def _read_text(path: str, filesystem: pafs.FileSystem) -> str:
    with filesystem.open_input_stream(path) as stream:
        data = stream.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise CorpusFormatError(
            f"{path}: not UTF-8 text (byte {error.start}: {error.reason})"
        ) from error


def _numbered_lines(content: str) -> list[tuple[int, str]]:
    """Non-blank lines split on ``\\n`` only (not `str.splitlines`, which also splits on
    U+2028, U+0085, form feed and other characters that are legal inside a text)."""
    lines = content.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [(number, line.removesuffix("\r")) for number, line in enumerate(lines, start=1)
            if line.strip()]


def _jsonl_records(content: str) -> list[tuple[int, object]]:
    records: list[tuple[int, object]] = []
    for line_no, line in _numbered_lines(content):
        try:
            records.append((line_no, json.loads(line)))
        except json.JSONDecodeError:
            records.append((line_no, _INVALID_JSON))
        except RecursionError:
            records.append((line_no, _TOO_DEEP))
    return records


def _csv_records(path: str, content: str) -> list[tuple[int, object]]:
    """CSV records as dicts by header name, numbered from 1. A record spanning lines whose
    quote never closes (it would swallow the rest of the file) or closes inside a field (it
    swallowed the next rows) is a `_Lost` record; reading resumes on the line after the one
    that started it, so the rows after it are kept."""
    lines = content.split("\n")
    lines = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    limit = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)  # texts are held to MAX_TEXT_CHARS, in every format
    try:
        parsed: list[tuple[int, list[str] | _Lost]] = []
        start = 0
        while start < len(lines):
            reader = csv.reader(iter(lines[start:]), strict=False)
            chunk: list[tuple[int, list[str] | _Lost]] = []
            first_line, lost = start, None
            for row in reader:
                end_line = start + reader.line_num
                if (end_line - first_line > 1 or end_line == len(lines)) and (
                        lost := _quote_error(lines[first_line:end_line], first_line)):
                    break
                chunk.append((first_line, row))
                first_line = end_line
            if lost is None:
                parsed += chunk
                break
            parsed += [*chunk, (first_line, lost)]
            start = first_line + 1
    except csv.Error as error:
        raise CorpusFormatError(f"{path}: malformed CSV: {error}") from error
    finally:
        csv.field_size_limit(limit)
    parsed = [(line, row) for line, row in parsed if row != []]
    if not parsed:
        return []
    if isinstance(parsed[0][1], _Lost):
        raise CorpusFormatError(f"{path}: the header's quote, opened on line 1, is never closed")
    header = parsed[0][1]
    return [(number, row if isinstance(row, _Lost) else dict(zip(header, row + [None] * len(header))))
            for number, (_, row) in enumerate(parsed[1:], start=1)]


@dataclass(frozen=True)
class _Lost:
    """A CSV record left out: it starts on line `line` and a quoted field in it never
    closes (`closed` False) or closes inside a field, on line `last`."""

    line: int
    last: int
    closed: bool

    def detail(self) -> str:
        what = (f"closes inside a field on line {self.last}" if self.closed
                else "is never closed")
        span = f"lines {self.line}-{self.last}" if self.last > self.line else f"line {self.line}"
        return (f"a quote in the record starting on line {self.line} {what} (it would take "
                f"{span} as one text); reading resumed on line {self.line + 1}")


def _quote_error(record_lines: list[str], first_line: int) -> _Lost | None:
    """A `_Lost` when the CSV record of ``record_lines`` (which starts on 0-based line
    `first_line`) fails strict quoting: unterminated, or spanning lines with text after a
    closing quote. Such a text on one line alone stays accepted as before."""
    try:
        next(csv.reader(iter(record_lines), strict=True), None)
    except csv.Error as error:
        unterminated = "unexpected end of data" in str(error)
        if unterminated or len(record_lines) > 1:
            return _Lost(first_line + 1, first_line + len(record_lines), closed=not unterminated)
    return None


def _parquet_records(path: str, filesystem: pafs.FileSystem) -> list[tuple[int, object]]:
    try:
        table = pq.read_table(path, filesystem=filesystem)
    except (pa.ArrowInvalid, OSError) as error:
        raise CorpusFormatError(f"{path}: not a readable Parquet file: {error}") from error
    return list(enumerate(table.to_pylist(), start=1))


_INVALID_JSON = object()
_TOO_DEEP = object()


def _valid_unicode(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _normalize(path: str, records: list[tuple[int, object]], id_field: str, text_field: str) -> CorpusShard:
    objects = [record for _, record in records if isinstance(record, dict)]
    if objects and not any(text_field in record for record in objects):
        fields = sorted({key for record in objects for key in record})
        raise CorpusFormatError(
            f"{path}: no row has the text field {text_field!r} (fields found: {fields})"
        )
    generate_ids = not any(record.get(id_field) not in (None, "") for record in objects)
    stem = os.path.splitext(os.path.basename(path))[0]

    ids: list[str] = []
    texts: list[str] = []
    rows_by_id: dict[str, list[int]] = {}
    rejected: list[RejectedRow] = []
    for row, record in records:
        if record is _INVALID_JSON or record is _TOO_DEEP:
            rejected.append(RejectedRow(row, None, "invalid_json" if record is _INVALID_JSON
                                        else "too_deeply_nested"))
            continue
        if isinstance(record, _Lost):
            rejected.append(RejectedRow(row, None, "unterminated_quote", record.detail()))
            continue
        if not isinstance(record, dict):
            rejected.append(RejectedRow(row, None, "not_an_object"))
            continue
        raw_id = f"{stem}:{row}" if generate_ids else record.get(id_field)
        if isinstance(raw_id, bool) or not isinstance(raw_id, str | int) or raw_id == "":
            rejected.append(RejectedRow(row, None, "missing_id"))
            continue
        row_id = str(raw_id)
        if not _valid_unicode(row_id):
            rejected.append(RejectedRow(row, None, "invalid_unicode", "the id holds a lone surrogate"))
            continue
        rows_by_id.setdefault(row_id, []).append(row)
        text = record.get(text_field)
        if not isinstance(text, str):
            rejected.append(RejectedRow(row, row_id, "non_text"))
        elif not text.strip():
            rejected.append(RejectedRow(row, row_id, "empty_text"))
        elif len(text) > MAX_TEXT_CHARS:
            rejected.append(RejectedRow(row, row_id, "text_too_long",
                                        f"{len(text):,} characters, more than {MAX_TEXT_CHARS:,}"))
        elif not _valid_unicode(text):
            rejected.append(RejectedRow(row, row_id, "invalid_unicode", "the text holds a lone surrogate"))
        else:
            ids.append(row_id)
            texts.append(text)
    # Rows left out for their text count too: the file still says two things about the id.
    duplicates = {row_id: tuple(rows) for row_id, rows in rows_by_id.items() if len(rows) > 1}
    if duplicates:
        raise DuplicateIdError(path, duplicates)
    return CorpusShard(source=path, table=corpus_table(ids, texts), rejected=tuple(rejected))
