"""The sentence-transformers folder format: ``modules.json``, one folder per module, and the
model's own ``config_sentence_transformers.json``. sentence-transformers reads what
``save_folder`` writes, and ``load_folder`` reads what it writes."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

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


def save_folder(path: str, modules: Sequence[nn.Module], config: dict[str, Any]) -> None:
    """Write each module to its folder, ``modules.json`` and the model config."""
    with writing(path):
        os.makedirs(path, exist_ok=True)
    entries = []
    for index, module in enumerate(modules):
        type_name = saved_type_name(module)
        class_name = type(module).__name__
        if type_name is None:
            raise TypeError(f"Module {index} ({class_name}) cannot be saved in the sentence-transformers format.")
        folder = "" if index == 0 and isinstance(module, Transformer) else f"{index}_{class_name}"
        module_path = os.path.join(path, folder)
        with writing(module_path):
            os.makedirs(module_path, exist_ok=True)
            module.save(module_path)
        entries.append({"idx": index, "name": str(index), "path": folder, "type": type_name})
    for name, content in ((MODULES_FILE, entries), (MODEL_CONFIG_FILE, config)):
        target = os.path.join(path, name)
        with writing(target), open(target, "w", encoding="utf-8") as fh:
            json.dump(content, fh, indent=2)


def write_model_card(path: str, name: str, facts: dict[str, object]) -> None:
    """A short README.md naming the model and ``facts``, unless the folder has one."""
    readme = os.path.join(path, "README.md")
    if os.path.exists(readme):
        return
    lines = "".join(f"- {key}: {value}\n" for key, value in facts.items())
    with writing(readme), open(readme, "w", encoding="utf-8") as fh:
        fh.write(
            f"# {name}\n\nA sentence embedding model saved by embedding_core in the sentence-transformers "
            f"folder format.\n\n{lines}"
        )
