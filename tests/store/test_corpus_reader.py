"""read_corpus_file: every supported format, and bad rows reported by file, line and id."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from embedding_core.corpus import CorpusFormatError, DuplicateIdError, read_corpus_file
from embedding_core.store import text_sha256

SAMPLE_CORPUS = Path(__file__).parents[2] / "embedding_assets" / "sample_corpus"


def test_sample_corpus_files_read_completely_with_their_ids():
    docs = read_corpus_file(SAMPLE_CORPUS / "python_docs.jsonl")
    packages = read_corpus_file(SAMPLE_CORPUS / "package_summaries.csv")
    docstrings = read_corpus_file(SAMPLE_CORPUS / "stdlib_docstrings.txt")
    assert (docs.table.num_rows, packages.table.num_rows, docstrings.table.num_rows) == (1200, 1200, 600)
    assert docs.rejected == packages.rejected == docstrings.rejected == ()

    first_line = json.loads((SAMPLE_CORPUS / "python_docs.jsonl").read_text().splitlines()[0])
    assert docs.table.slice(0, 1).to_pylist()[0] == {
        "id": first_line["id"], "text": first_line["text"], "text_sha256": text_sha256(first_line["text"])}
    assert packages.table.column("id")[0].as_py() == "pypi-aaiopay"
    first_docstring = (SAMPLE_CORPUS / "stdlib_docstrings.txt").read_text().splitlines()[0]
    assert docstrings.table.slice(0, 1).to_pylist()[0]["id"] == "stdlib_docstrings:1"
    assert docstrings.table.column("text")[0].as_py() == first_docstring


def test_bad_jsonl_rows_are_left_out_and_reported_by_line_and_reason(tmp_path):
    path = tmp_path / "shard.jsonl"
    path.write_text("\n".join([
        json.dumps({"id": "a", "text": "first"}),
        "{not json",
        json.dumps({"id": "b", "text": "   "}),
        json.dumps({"id": "d", "text": "fourth"}),
        "",
        json.dumps({"id": "c", "text": 42}),
        json.dumps(["a", "list"]),
        json.dumps({"text": "no id"}),
        json.dumps({"id": 7, "text": "integer id"}),
    ]) + "\n")
    shard = read_corpus_file(path)
    assert shard.table.column("id").to_pylist() == ["a", "d", "7"]
    assert [(r.row, r.id, r.reason) for r in shard.rejected] == [
        (2, None, "invalid_json"), (3, "b", "empty_text"),
        (6, "c", "non_text"), (7, None, "not_an_object"), (8, None, "missing_id"),
    ]
    assert shard.rejected_counts() == {"empty_text": 1, "invalid_json": 1,
                                       "missing_id": 1, "non_text": 1, "not_an_object": 1}
    assert f"{path} line 3: empty_text (id 'b')" in shard.rejection_report()


def test_duplicate_ids_are_an_error_naming_the_file_ids_and_lines(tmp_path):
    path = tmp_path / "shard.jsonl"
    rows = [{"id": "a", "text": "first"}, {"id": "b", "text": "second"},
            {"id": "a", "text": "first again"}, {"id": "c", "text": "third"},
            {"id": "b", "text": ""}, {"id": "a", "text": "first, a third time"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DuplicateIdError) as raised:
        read_corpus_file(path)
    assert isinstance(raised.value, CorpusFormatError)
    # The empty text of 'b' is still a second row claiming the id.
    assert raised.value.duplicates == {"a": (1, 3, 6), "b": (2, 5)}
    assert str(raised.value) == (
        f"{path}: 2 duplicate id(s), each used by more than one row: 'a' (lines 1, 3, 6), "
        "'b' (lines 2, 5); ids must be unique within a file")


def test_many_duplicate_ids_show_the_first_few_and_the_total(tmp_path):
    path = tmp_path / "shard.csv"
    path.write_text("id,text\n" + "".join(f"id-{i % 8},text {i}\n" for i in range(16)))
    with pytest.raises(DuplicateIdError, match=(
        r"shard.csv: 8 duplicate id\(s\), each used by more than one row: 'id-0' \(rows 1, 9\), "
        r"'id-1' \(rows 2, 10\), .*'id-4' \(rows 5, 13\), \.\.\. and 3 more; ids must be unique"
    )) as raised:
        read_corpus_file(path)
    assert len(raised.value.duplicates) == 8 and "'id-5'" not in str(raised.value)


def test_csv_parquet_and_remote_filesystems_read_alike(tmp_path):
    (tmp_path / "shard.csv").write_text('id,text\nx,"a text, with a comma"\ny,"two\nlines"\n')
    pq.write_table(pa.table({"id": ["x", "y"], "text": ["a text, with a comma", "two\nlines"]}),
                   tmp_path / "shard.parquet")
    from_csv = read_corpus_file(tmp_path / "shard.csv")
    from_parquet = read_corpus_file(tmp_path / "shard.parquet")
    assert from_csv.table.equals(from_parquet.table)
    assert from_csv.table.column("text").to_pylist() == ["a text, with a comma", "two\nlines"]

    filesystem, root = pafs.FileSystem.from_uri("mock:///landing")
    filesystem.create_dir(root)
    with filesystem.open_output_stream(f"{root}/shard.csv") as sink:
        sink.write((tmp_path / "shard.csv").read_bytes())
    assert read_corpus_file(f"{root}/shard.csv", filesystem=filesystem).table.equals(from_csv.table)


def test_configured_field_names_are_used(tmp_path):
    path = tmp_path / "shard.jsonl"
    path.write_text(json.dumps({"key": "k1", "body": "hello"}) + "\n")
    shard = read_corpus_file(path, id_field="key", text_field="body")
    assert shard.table.to_pylist()[0]["id"] == "k1"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("shard.csv", "id,summary\nx,hello\n", r"shard.csv: no row has the text field 'text' \(fields found: \['id', 'summary'\]\)"),
        ("shard.xml", "<a/>", r"shard.xml: unsupported corpus format '.xml'"),
        ("shard.parquet", "not parquet", r"shard.parquet: not a readable Parquet file"),
    ],
)
def test_unreadable_files_raise_an_error_naming_the_file(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(CorpusFormatError, match=message):
        read_corpus_file(tmp_path / name)


def test_non_utf8_file_names_the_byte(tmp_path):
    (tmp_path / "shard.txt").write_bytes(b"fine\n\xff\xfe broken\n")
    with pytest.raises(CorpusFormatError, match=r"shard.txt: not UTF-8 text \(byte 5"):
        read_corpus_file(tmp_path / "shard.txt")


def test_jsonl_rows_split_only_on_newline_keeping_u2028_and_u0085_in_texts(tmp_path):
    # json.dumps(ensure_ascii=False) writes U+2028 and U+0085 raw; str.splitlines split on them.
    rows = [{"id": "a", "text": "one\u2028two"}, {"id": "b", "text": "next\x85line"}]
    path = tmp_path / "shard.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\r\n" for row in rows)
                    + "{broken\n" + json.dumps({"id": "c", "text": "last"}) + "\n", encoding="utf-8")
    shard = read_corpus_file(path)
    assert shard.table.column("text").to_pylist() == ["one\u2028two", "next\x85line", "last"]
    assert [(r.row, r.reason) for r in shard.rejected] == [(3, "invalid_json")]  # its real line


def test_a_form_feed_does_not_split_a_text_line(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("page one\fstill line one\nline two\x0bwith a vertical tab\n", encoding="utf-8")
    shard = read_corpus_file(path)
    assert shard.table.column("id").to_pylist() == ["notes:1", "notes:2"]
    assert shard.table.column("text").to_pylist() == ["page one\fstill line one",
                                                      "line two\x0bwith a vertical tab"]


def test_lone_surrogates_and_deep_nesting_are_rejected_rows_named_by_file_and_line(tmp_path):
    path = tmp_path / "shard.jsonl"
    path.write_text("\n".join([
        json.dumps({"id": "a", "text": "fine"}),
        '{"id": "s", "text": "half a pair \\ud800"}',
        '{"id": "\\udfff", "text": "bad id"}',
        "[" * 200_000 + "]" * 200_000,
        json.dumps({"id": "d", "text": "also fine"}),
    ]) + "\n")
    shard = read_corpus_file(path)
    assert shard.table.column("id").to_pylist() == ["a", "d"]
    assert [(r.row, r.id, r.reason) for r in shard.rejected] == [
        (2, "s", "invalid_unicode"), (3, None, "invalid_unicode"), (4, None, "too_deeply_nested")]
    report = shard.rejection_report()
    assert f"{path} line 2: invalid_unicode (id 's'): the text holds a lone surrogate" in report
    assert f"{path} line 4: too_deeply_nested" in report


def test_csv_rows_after_an_unterminated_quote_are_kept_and_the_lost_record_reported(tmp_path):
    path = tmp_path / "shard.csv"
    path.write_text('id,text\na,first\nb,"broken\nc,third\nd,fourth\n')
    shard = read_corpus_file(path)  # before: b's text was "broken\nc,third\nd,fourth\n"
    assert shard.table.column("id").to_pylist() == ["a", "c", "d"]
    assert shard.table.column("text").to_pylist() == ["first", "third", "fourth"]
    assert [(r.row, r.reason) for r in shard.rejected] == [(2, "unterminated_quote")]
    assert shard.rejection_report() == (
        f"{path} row 2: unterminated_quote: a quote in the record starting on line 3 is never "
        "closed (it would take lines 3-5 as one text); reading resumed on line 4")
    # A stray quote that closes lines later, inside a field: before, b's text was 'broken\nc,third"'.
    path.write_text('id,text\na,first\nb,"broken\nc,"third"\nd,fourth\n')
    shard = read_corpus_file(path)
    assert shard.table.column("text").to_pylist() == ["first", "third", "fourth"]
    assert [(r.row, r.reason, r.detail) for r in shard.rejected] == [(2, "unterminated_quote", (
        "a quote in the record starting on line 3 closes inside a field on line 4 (it would take "
        "lines 3-4 as one text); reading resumed on line 4"))]
    # A quoted text spanning lines, closed properly, is still one text.
    path.write_text('id,text\na,"two\nlines"\nb,"x"\n')
    assert read_corpus_file(path).table.column("text").to_pylist() == ["two\nlines", "x"]


def test_every_format_has_the_same_text_size_limit(tmp_path, monkeypatch):
    import csv

    import embedding_core.corpus as corpus

    big = "word " * 40_000  # 200,000 characters: over csv's default 131,072 field limit
    (tmp_path / "big.csv").write_text(f"id,text\na,{big}\nb,small\n")
    (tmp_path / "big.jsonl").write_text(json.dumps({"id": "a", "text": big}) + "\n"
                                        + json.dumps({"id": "b", "text": "small"}) + "\n")
    pq.write_table(pa.table({"id": ["a", "b"], "text": [big, "small"]}), tmp_path / "big.parquet")
    tables = [read_corpus_file(tmp_path / f"big.{ext}").table for ext in ("csv", "jsonl", "parquet")]
    assert tables[0].column("text").to_pylist() == [big, "small"]
    assert tables[0].equals(tables[1]) and tables[0].equals(tables[2])
    assert csv.field_size_limit() == 131_072  # the process-wide limit is left as it was

    monkeypatch.setattr(corpus, "MAX_TEXT_CHARS", 100_000)
    (tmp_path / "big.txt").write_text(f"{big}\nsmall\n")
    for ext in ("csv", "jsonl", "parquet", "txt"):
        shard = read_corpus_file(tmp_path / f"big.{ext}")
        assert shard.table.column("text").to_pylist() == ["small"], ext
        assert [(r.row, r.reason, r.detail) for r in shard.rejected] == [
            (1, "text_too_long", "200,000 characters, more than 100,000")], ext
