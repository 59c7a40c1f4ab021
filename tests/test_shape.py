"""The shape of the code, checked: embedding_core stands alone (no dagster), its modules
import each other without a cycle, no source file grows past 400 lines, and neither package
imports sentence-transformers."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "embedding_core"
MAX_LINES = 400
# One-off generators of the committed test data, not code the project runs.
EXEMPT_FOLDERS_FROM_SIZE = {ROOT / "tests" / "data"}
SOURCE_FOLDERS = ("embedding_core", "embedding_assets", "deploy", "tests", "benchmarks", "scripts")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def core_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(CORE.rglob("*.py"))}


def imported_names(path: Path) -> list[str]:
    """Every module the file at ``path`` imports (see :func:`imports_of`)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    return imports_of(path.read_text(encoding="utf-8"), package)


def imports_of(source: str, package: str) -> list[str]:
    """Every module ``source`` (a module of ``package``) imports, at any depth: function-level
    imports included; a ``from package import name`` counts as importing ``package.name`` too."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def import_graph() -> dict[str, set[str]]:
    modules = core_modules()
    return {
        name: {imported for imported in imported_names(path) if imported in modules and imported != name}
        for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as the list of modules around it), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_embedding_core_imports_no_dagster():
    offenders = {name: sorted(n for n in imported_names(path) if n.split(".")[0] == "dagster")
                 for name, path in core_modules().items()}
    assert {name: names for name, names in offenders.items() if names} == {}


def test_embedding_core_has_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_the_cycle_check_sees_function_level_and_relative_imports():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    source = "import os\n\ndef load():\n    from embedding_core.model import SentenceTransformer\n    from . import hub\n"
    assert {"embedding_core.model", "embedding_core.hub"} <= set(imports_of(source, "embedding_core"))


def test_the_pool_never_imports_the_model():
    pool_imports = {name for module, targets in import_graph().items()
                    if module.startswith("embedding_core.pool") for name in targets}
    assert "embedding_core.model" not in pool_imports and "embedding_core.chain" not in pool_imports


def test_no_source_file_is_over_400_lines():
    long_files = {
        str(path.relative_to(ROOT)): count
        for folder in SOURCE_FOLDERS
        for path in sorted((ROOT / folder).rglob("*.py"))
        if not EXEMPT_FOLDERS_FROM_SIZE & set(path.parents)
        and (count := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long_files == {}


def test_neither_package_imports_sentence_transformers():
    """sentence-transformers is the reference the tests compare with, never a dependency:
    importing every module of both packages leaves it unimported."""
    script = (
        "import importlib, pkgutil, sys\n"
        "import embedding_core, embedding_assets\n"
        "names = []\n"
        "for package in (embedding_core, embedding_assets):\n"
        "    for info in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "        names.append(info.name)\n"
        "print(len(names), sorted(m for m in sys.modules if m.split('.')[0] == 'sentence_transformers'))\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                               timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert completed.returncode == 0, completed.stderr[-3000:]
    imported, loaded = completed.stdout.split()[0], completed.stdout.split(maxsplit=1)[1].strip()
    assert int(imported) >= len(core_modules()) - 1  # every module was imported (less the package)
    assert loaded == "[]"
