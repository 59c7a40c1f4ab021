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
