"""The sentence-transformers folder format: ``modules.json``, one folder per module, and the
model's own ``config_sentence_transformers.json``. sentence-transformers reads what
``save_folder`` writes, and ``load_folder`` reads what it writes."""

from __future__ import annotations

import json
import logging
import os
import platform
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from torch import nn

from embedding_core.fs import writing
from embedding_core.modules import Pooling, Transformer, module_class, saved_type_name

logger = logging.getLogger(__name__)

MODEL_CONFIG_FILE = "config_sentence_transformers.json"
MODULES_FILE = "modules.json"


def load_folder(path: str, **context: Any) -> tuple[list[nn.Module], dict[str, Any]]:
    """The module chain described by ``modules.json`` (or Transformer + mean pooling for a
    plain transformers folder), and the model config. ``context`` reaches every module's
    ``load`` (``trust_remote_code``, ``model_kwargs``, ``backend``, ``revision``)."""
    config: dict[str, Any] = {}
    config_path = os.path.join(path, MODEL_CONFIG_FILE)
    if os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as fh:
            config = json.load(fh)

    check_requirements(config.get("requirements"), source=path)

    modules_path = os.path.join(path, MODULES_FILE)
    if not os.path.exists(modules_path):
        logger.warning(
            "%s has no modules.json: loading it as a plain transformers model with mean pooling.", path
        )
        transformer = Transformer.load(path, **context)
        return [transformer, Pooling(transformer.get_word_embedding_dimension(), "mean")], config

    with open(modules_path, encoding="utf-8") as fh:
        entries = json.load(fh)
    modules: list[nn.Module] = []
    dimension: int | None = None
    for entry in sorted(entries, key=lambda item: item.get("idx", 0)):
        where = f"{modules_path}: module {entry.get('name', entry.get('idx'))}"
        cls = module_class(entry["type"], where)
        module = cls.load(os.path.join(path, entry.get("path", "")), dimension=dimension, **context)
        dimension = module.output_dimension(dimension)
        modules.append(module)
    return modules, config


def check_requirements(requirements: Any, source: str) -> None:
    """Fail to load a model whose ``requirements`` (package -> PEP 440 specifier, or
    ``{"specifier", "reason"}``; ``python`` means the interpreter) the installed packages do
    not meet, naming each unmet one. A specifier that cannot be read is warned about, not fatal."""
    if not requirements:
        return
    if not isinstance(requirements, dict):
        logger.warning("Ignoring the requirements of %s: expected a dict of version specifiers.", source)
        return
    unmet = []
    for package, requirement in requirements.items():
        package = {"pytorch": "torch"}.get(package, package)
        specifier = requirement.get("specifier", "") if isinstance(requirement, dict) else requirement
        reason = requirement.get("reason", "") if isinstance(requirement, dict) else ""
        try:
            wanted = SpecifierSet(specifier)
        except (InvalidSpecifier, TypeError):
            logger.warning("Cannot read the %r requirement of %s on %s; not checked.", specifier, source, package)
            continue
        if package == "python":
            installed: str | None = platform.python_version()
        else:
            try:
                installed = metadata.version(package)
            except metadata.PackageNotFoundError:
                installed = None
        if installed is None or not wanted.contains(installed, prereleases=True):
            have = f"{installed} is installed" if installed else "it is not installed"
            unmet.append(f"{package}{specifier} ({have}{'; ' + reason if reason else ''})")
    if unmet:
        raise ImportError(f"{source} requires {', '.join(unmet)}.")


def save_folder(path: str, modules: Sequence[nn.Module], config: dict[str, Any], safe_serialization: bool = True) -> None:
    """Write each module to its folder, ``modules.json`` and the model config.

    A module of another library (a sentence-transformers module, say) is saved by its own
    ``save`` under its qualified class name, as sentence-transformers records it."""
    with writing(path):
        os.makedirs(path, exist_ok=True)
    entries = []
    for index, module in enumerate(modules):
        class_name = type(module).__name__
        type_name = saved_type_name(module)
        if type_name is None:
            if not callable(getattr(module, "save", None)):
                raise TypeError(f"Module {index} ({class_name}) has no `save` method: it cannot be saved.")
            type_name = f"{type(module).__module__}.{class_name}"
        folder = "" if index == 0 and class_name == "Transformer" else f"{index}_{class_name}"
        module_path = os.path.join(path, folder)
        with writing(module_path):
            os.makedirs(module_path, exist_ok=True)
            _save_module(module, module_path, safe_serialization)
        entries.append({"idx": index, "name": str(index), "path": folder, "type": type_name})
    for name, content in ((MODULES_FILE, entries), (MODEL_CONFIG_FILE, config)):
        target = os.path.join(path, name)
        with writing(target), open(target, "w", encoding="utf-8") as fh:
            json.dump(content, fh, indent=2)


def _save_module(module: nn.Module, module_path: str, safe_serialization: bool) -> None:
    """``module.save(path, safe_serialization=...)``, or without the flag for a module whose
    ``save`` does not take it."""
    try:
        module.save(module_path, safe_serialization=safe_serialization)
    except TypeError as error:
        if "safe_serialization" not in str(error):
            raise
        module.save(module_path)
