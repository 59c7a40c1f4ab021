"""Regenerate the real-text test data and the bundled demo corpus.

Every text written by this script is real prose that nobody on this team wrote
(so tests exercise real vocabulary, punctuation and length spread rather than
synthetic strings); it is taken from material already on a development machine:

* PyPI package summaries: the one-line "summary" field that each package's
  authors published on the Python Package Index, read from a TSV snapshot of the
  index (columns: name, version, month, rank_among_15000_most_downloaded,
  summary).  These are short, noisy, mostly English descriptions, typical of the
  short queries/documents an embedding model sees.
  -> tests/data/short_texts.jsonl            (3000 rows, id "pypi-<name>")
  -> embedding_assets/sample_corpus/package_summaries.csv  (1200 other rows)

* Python's own documentation, shipped with the interpreter:
  - ``pydoc_data.topics.topics``: the Language Reference help topics that
    ``help("if")`` etc. print;
  - docstrings of standard-library modules, classes, functions and methods
    (``inspect.cleandoc(obj.__doc__)``; inherited docstrings are not repeated),
    for every public module in ``sys.stdlib_module_names`` and its public
    submodules, minus EXCLUDED_MODULES (import side effects, GUI, tests, codecs).
  These are split into paragraphs, and consecutive paragraphs of the same topic
  or module are joined to get texts from ~10 to 500+ words.
  -> tests/data/mixed_texts.jsonl             (2000 rows, id "pydoc-<source>-<n>",
     paragraphs joined by a blank line; >=10% over 200 words, 50 over 500)
  -> embedding_assets/sample_corpus/python_docs.jsonl      (1200 rows, about
     half also in mixed_texts.jsonl: the docs are not big enough for both)
  -> embedding_assets/sample_corpus/stdlib_docstrings.txt  (600 first paragraphs,
     one per line)

The selection is deterministic (sorted inputs, fixed random seeds), so running
the script again with the same interpreter (CPython 3.11.7) and the same TSV
snapshot reproduces the files byte for byte.  Usage, from the repository root:

    .venv/bin/python tests/data/build_corpora.py [--pypi-tsv PATH]
"""

from __future__ import annotations

import argparse
import csv
import importlib
import inspect
import json
import pkgutil
import random
import re
import statistics
import sys
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "tests" / "data"
CORPUS_DIR = REPO_ROOT / "embedding_assets" / "sample_corpus"
DEFAULT_PYPI_TSV = Path("/work/.library/env/packages/pypi.tsv")

SEED = 20240607

N_SHORT = 3000
N_CORPUS_SUMMARIES = 1200
N_MIXED = 2000
N_CORPUS_DOCS = 1200
N_CORPUS_DOCSTRINGS = 600

# Standard-library modules whose docstrings are harvested: every public top-level
# module of this interpreter (``sys.stdlib_module_names``) and the public submodules
# of its packages, except modules with import-time side effects (``this``,
# ``antigravity``), GUI/IDE code, the regression-test suite, codec tables,
# and distutils (which setuptools may replace, making the output environment-bound).
EXCLUDED_MODULES = frozenset(
    "this antigravity tkinter turtle turtledemo idlelib test lib2to3 ensurepip venv "
    "pydoc_data distutils encodings ctypes curses".split()
)

STOPWORDS = frozenset(
    "a an the and or for of to in on with from by is are that this your you it as be "
    "can into using use based which at".split()
)
WORD_RE = re.compile(r"^[(\"'\[]?[A-Za-z][A-Za-z0-9'’./+#-]*[)\"'\],.;:!?]*$")
RULE_RE = re.compile(r"^\s*([*=~^-])\1{2,}\s*$")


# ---------------------------------------------------------------- helpers
def words(text: str) -> list[str]:
    return text.split()


def squash(text: str) -> str:
    """Collapse every run of whitespace to one space."""
    return " ".join(text.split())


def alpha_ratio(tokens: list[str]) -> float:
    if not tokens:
        return 0.0
    return sum(1 for t in tokens if WORD_RE.match(t)) / len(tokens)


def write_jsonl(path: Path, rows: Iterable[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def check_rows(rows: list[dict[str, str]]) -> None:
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "duplicate ids"
    assert all(r["text"].strip() for r in rows), "empty text"


# ---------------------------------------------------------------- PyPI summaries
def english_summary(name: str, summary: str) -> str | None:
    """Return the cleaned summary if it looks like a short English description."""
    text = squash(summary)
    if not text or not text.isascii() or not text.isprintable():
        return None
    tokens = words(text)
    if not 3 <= len(tokens) <= 40:
        return None
    low = text.lower()
    if "unknown" in low or "http://" in low or "https://" in low or "www." in low:
        return None
    if low.rstrip(".") == name.lower():
        return None
    if alpha_ratio(tokens) < 0.8:
        return None
    if not any(t.lower().strip(".,;:()") in STOPWORDS for t in tokens):
        return None
    return text


def load_pypi_summaries(tsv: Path) -> list[dict[str, str]]:
    rows: dict[str, str] = {}
    with tsv.open(encoding="utf-8", errors="replace", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        i_name, i_summary = header.index("name"), header.index("summary")
        for rec in reader:
            if len(rec) <= i_summary:
                continue
            name, summary = rec[i_name].strip(), rec[i_summary]
            text = english_summary(name, summary)
            if text and name and name not in rows:
                rows[name] = text
    seen: set[str] = set()
    out = []
    for name in sorted(rows):
        key = rows[name].casefold().rstrip(".")
        if key in seen:
            continue
        seen.add(key)
        out.append({"id": f"pypi-{name}", "text": rows[name]})
    return out


# ---------------------------------------------------------------- Python docs
def split_paragraphs(doc: str) -> list[str]:
    """Split a help text / docstring on blank lines; drop rules and code-only blocks."""
    paras = []
    for block in re.split(r"\n\s*\n", doc):
        lines = [ln for ln in block.splitlines() if not RULE_RE.match(ln)]
        text = squash(" ".join(lines))
        if not text:
            continue
        tokens = words(text)
        if text.startswith(">>>") or alpha_ratio(tokens) < 0.6:
            continue
        paras.append(text)
    return paras


def merge_short(paras: list[str], min_words: int = 10) -> list[str]:
    """Attach headings and other tiny paragraphs to the paragraph that follows."""
    out: list[str] = []
    carry = ""
    for p in paras:
        p = f"{carry} {p}".strip() if carry else p
        if len(words(p)) < min_words:
            carry = p
            continue
        carry = ""
        out.append(p)
    if carry and out:
        out[-1] = f"{out[-1]}\n\n{carry}"
    return out


def iter_docstrings(module_name: str) -> Iterator[tuple[str, str]]:
    """Yield (qualified name, docstring) for a module and what it defines."""
    try:
        mod = importlib.import_module(module_name)
    except Exception:  # pragma: no cover - depends on the interpreter build
        return
    if isinstance(mod.__doc__, str):
        yield module_name, inspect.cleandoc(mod.__doc__)
    for attr in sorted(vars(mod)):
        if attr.startswith("_"):
            continue
        obj = vars(mod)[attr]
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if getattr(obj, "__module__", None) not in (module_name, f"_{module_name}"):
            if module_name != "builtins":
                continue
        if isinstance(getattr(obj, "__doc__", None), str):
            yield f"{module_name}.{attr}", inspect.cleandoc(obj.__doc__)
        if inspect.isclass(obj):
            for meth in sorted(vars(obj)):
                if meth.startswith("_") and meth != "__init__":
                    continue
                member = vars(obj)[meth]
                func = getattr(member, "__func__", member)
                doc = getattr(func, "__doc__", None)
                if callable(func) and isinstance(doc, str):
                    yield f"{module_name}.{attr}.{meth}", inspect.cleandoc(doc)


def stdlib_modules() -> list[str]:
    """Sorted names of the public, side-effect-free standard-library modules."""
    names = []
    for top in sorted(sys.stdlib_module_names):
        if top.startswith("_") or top in EXCLUDED_MODULES:
            continue
        try:
            mod = importlib.import_module(top)
        except Exception:  # platform-specific modules (winreg, msvcrt, ...)
            continue
        names.append(top)
        for info in pkgutil.iter_modules(getattr(mod, "__path__", []), f"{top}."):
            parts = info.name.split(".")
            if any(p.startswith("_") or "test" in p for p in parts[1:]):
                continue
            names.append(info.name)
    return sorted(names)


def doc_sources() -> list[tuple[str, list[tuple[str, str]]]]:
    """Groups of (label, paragraph) in a fixed order: one group per topic/module."""
    from pydoc_data.topics import topics

    groups = []
    for key in sorted(topics):
        paras = merge_short(split_paragraphs(topics[key]))
        groups.append((key, [(key, p) for p in paras]))
    seen_docs: set[str] = set()
    for module_name in stdlib_modules():
        items = []
        for qualname, doc in iter_docstrings(module_name):
            if doc in seen_docs:
                continue
            seen_docs.add(doc)
            for p in merge_short(split_paragraphs(doc)):
                items.append((qualname, p))
        groups.append((module_name, items))
    return groups


def first_paragraphs() -> list[tuple[str, str]]:
    """First paragraph of each stdlib docstring, flattened to a single line."""
    out: dict[str, str] = {}
    for module_name in stdlib_modules():
        for qualname, doc in iter_docstrings(module_name):
            paras = split_paragraphs(doc)
            if not paras:
                continue
            text = paras[0]
            n = len(words(text))
            if 6 <= n <= 120 and "(" not in text.split()[0]:
                out.setdefault(qualname, text)
    return sorted(out.items())


def chunk_docs(rng: random.Random) -> list[dict[str, str]]:
    """Join consecutive paragraphs of one topic/module into texts of varied length."""
    targets = [0, 60, 140, 280, 600]  # 0: a single paragraph
    weights = [70, 10, 8, 8, 4]
    chunks: list[dict[str, str]] = []
    seen: set[str] = set()
    counters: dict[str, int] = {}
    for _group, items in doc_sources():
        i = 0
        while i < len(items):
            target = rng.choices(targets, weights)[0]
            label = items[i][0]
            parts = [items[i][1]]
            i += 1
            n = len(words(parts[0]))
            while n < target and i < len(items):
                parts.append(items[i][1])
                n += len(words(items[i][1]))
                i += 1
            text = "\n\n".join(parts)
            key = squash(text).casefold()
            if n < 10 or key in seen:
                continue
            seen.add(key)
            counters[label] = counters.get(label, 0) + 1
            chunks.append({"id": f"pydoc-{label}-{counters[label]}", "text": text})
    return chunks


def stratified_pick(
    pool: list[dict[str, str]],
    quotas: list[tuple[int, int, int]],
    rng: random.Random,
    avoid: frozenset[str] = frozenset(),
) -> list[dict[str, str]]:
    """Pick `count` rows with lo <= words < hi for each (lo, hi, count) quota.

    Rows whose id is in `avoid` are only used when a band has too few others.
    """
    picked = []
    for lo, hi, count in quotas:
        band = [r for r in pool if lo <= len(words(r["text"])) < hi]
        fresh = [r for r in band if r["id"] not in avoid]
        reused = [r for r in band if r["id"] in avoid]
        take = rng.sample(fresh, min(count, len(fresh)))
        picked += take + rng.sample(reused, min(count - len(take), len(reused)))
    return picked


# ---------------------------------------------------------------- main
def describe(name: str, texts: list[str], path: Path) -> str:
    lens = sorted(len(words(t)) for t in texts)
    p90 = lens[int(0.9 * (len(lens) - 1))]
    over200 = sum(n > 200 for n in lens)
    over500 = sum(n > 500 for n in lens)
    return (
        f"{name:48s} n={len(lens):5d} words min/median/p90/max="
        f"{lens[0]}/{statistics.median(lens):g}/{p90}/{lens[-1]} "
        f">200w={over200} >500w={over500} size={path.stat().st_size / 1024:.0f} KiB"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pypi-tsv", type=Path, default=DEFAULT_PYPI_TSV)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # deprecation warnings from importing old modules

    # --- PyPI summaries: one shuffled order, disjoint slices for the two files.
    summaries = load_pypi_summaries(args.pypi_tsv)
    rng = random.Random(SEED)
    rng.shuffle(summaries)
    short = sorted(summaries[:N_SHORT], key=lambda r: r["id"])
    corpus_summaries = sorted(
        summaries[N_SHORT : N_SHORT + N_CORPUS_SUMMARIES], key=lambda r: r["id"]
    )

    # --- Python docs: chunks of varied length, stratified by word count.
    pool = chunk_docs(random.Random(SEED + 1))
    rng = random.Random(SEED + 2)
    mixed = stratified_pick(
        pool,
        [(10, 40, 830), (40, 100, 600), (100, 200, 300), (200, 500, 220), (500, 10**6, 50)],
        rng,
    )
    # The demo corpus draws its own, mostly shorter, sample from the same pool,
    # preferring chunks not in mixed_texts.jsonl (the pool is too small for the
    # two to be fully disjoint; sharing some texts is harmless).
    corpus_docs = stratified_pick(
        pool,
        [(10, 40, 500), (40, 100, 450), (100, 200, 200), (200, 400, 50)],
        rng,
        avoid=frozenset(r["id"] for r in mixed),
    )
    order = {r["id"]: i for i, r in enumerate(pool)}
    mixed.sort(key=lambda r: order[r["id"]])
    corpus_docs.sort(key=lambda r: order[r["id"]])

    # --- Docstring first paragraphs, one per line.
    firsts = first_paragraphs()
    seen: set[str] = set()
    uniq = []
    for qualname, text in firsts:
        if text.casefold() not in seen:
            seen.add(text.casefold())
            uniq.append((qualname, text))
    picked = random.Random(SEED + 3).sample(uniq, min(N_CORPUS_DOCSTRINGS, len(uniq)))
    docstring_lines = [text for _q, text in sorted(picked)]

    for rows in (short, corpus_summaries, mixed, corpus_docs):
        check_rows(rows)

    outputs = {
        DATA_DIR / "short_texts.jsonl": short,
        DATA_DIR / "mixed_texts.jsonl": mixed,
        CORPUS_DIR / "python_docs.jsonl": corpus_docs,
    }
    for path, rows in outputs.items():
        write_jsonl(path, rows)
    csv_path = CORPUS_DIR / "package_summaries.csv"
    with csv_path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerow(["id", "text"])
        writer.writerows([r["id"], r["text"]] for r in corpus_summaries)
    txt_path = CORPUS_DIR / "stdlib_docstrings.txt"
    txt_path.write_text("\n".join(docstring_lines) + "\n", encoding="utf-8")

    report = [
        describe(str(p.relative_to(REPO_ROOT)), [r["text"] for r in rows], p)
        for p, rows in outputs.items()
    ]
    report.append(
        describe(
            str(csv_path.relative_to(REPO_ROOT)), [r["text"] for r in corpus_summaries], csv_path
        )
    )
    report.append(describe(str(txt_path.relative_to(REPO_ROOT)), docstring_lines, txt_path))
    print("\n".join(report))
    print(
        f"candidates: {len(summaries)} pypi summaries, {len(pool)} doc chunks, "
        f"{len(uniq)} docstring first paragraphs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
