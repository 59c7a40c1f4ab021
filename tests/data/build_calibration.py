"""Write embedding_core/data/calibration_texts.jsonl: the texts ``openvino-int8`` calibrates on.

Static int8 quantization needs a few hundred real inputs to measure activation ranges.
They are drawn from the bundled demo corpus (Python documentation paragraphs, PyPI
package summaries, standard-library docstrings: see build_corpora.py), leaving out every
text of the benchmark corpora in tests/data, so the fast path is never tuned on the text
it is measured on. Deterministic: every n-th eligible row. From the repository root:

    .venv/bin/python tests/data/build_calibration.py
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "embedding_assets" / "sample_corpus"
TARGET = ROOT / "embedding_core" / "data" / "calibration_texts.jsonl"
# How many texts of each kind: mostly paragraphs (10 to 400 words), some one-liners.
COUNTS = {"python_docs": 200, "package_summaries": 60, "stdlib_docstrings": 40}


def jsonl_texts(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh if line.strip()]


def every_nth(items: list[str], count: int) -> list[str]:
    step = max(1, len(items) // count)
    return items[::step][:count]


def main() -> None:
    held_out = set(jsonl_texts(ROOT / "tests" / "data" / "short_texts.jsonl"))
    held_out |= set(jsonl_texts(ROOT / "tests" / "data" / "mixed_texts.jsonl"))
    with open(SAMPLE / "package_summaries.csv", encoding="utf-8", newline="") as fh:
        summaries = [row["text"] for row in csv.DictReader(fh)]
    sources = {
        "python_docs": jsonl_texts(SAMPLE / "python_docs.jsonl"),
        "package_summaries": summaries,
        "stdlib_docstrings": (SAMPLE / "stdlib_docstrings.txt").read_text(encoding="utf-8").splitlines(),
    }
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    with open(TARGET, "w", encoding="utf-8") as out:
        for source, count in COUNTS.items():
            eligible = [text for text in sources[source] if text.strip() and text not in held_out]
            for text in every_nth(eligible, count):
                out.write(json.dumps({"source": source, "text": text}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
