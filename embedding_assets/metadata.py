"""Small helpers that turn stored data into Dagster UI metadata."""

from __future__ import annotations

from collections.abc import Sequence

from dagster import MetadataValue


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]], max_chars: int = 80) -> MetadataValue:
    """A markdown table for a preview; long cells are cut to `max_chars`."""

    def cell(value: object) -> str:
        text = str(value).replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= max_chars else text[: max_chars - 1] + "…"

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return MetadataValue.md("\n".join(lines))
