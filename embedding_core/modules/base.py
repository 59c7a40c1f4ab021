"""What every module of the chain shares: its config keys, config load/save, a registry.

A sentence-transformers folder names each module's class in ``modules.json``; the loader
looks the class up in the registry and calls its ``load``. Adding a module is one file that
subclasses :class:`Module` and is decorated with :func:`register`; no other file changes.
"""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar, TypeVar

from torch import nn

ModuleType = TypeVar("ModuleType", bound=type)

# Class name -> class. modules.json names classes by dotted path
# (``sentence_transformers.models.Pooling``, or
# ``sentence_transformers.sentence_transformer.modules.pooling.Pooling`` in newer releases):
# the class name alone picks ours.
REGISTRY: dict[str, type[Module]] = {}


def register(cls: ModuleType) -> ModuleType:
    """Class decorator: make ``cls`` loadable from a ``modules.json`` entry of its name."""
    REGISTRY[cls.__name__] = cls
    return cls


def module_class(type_name: str, where: str) -> type[Module]:
    """The registered class of a ``modules.json`` type; ``where`` names the entry in errors."""
    cls = REGISTRY.get(str(type_name).rsplit(".", 1)[-1])
    if cls is None:
        raise ValueError(
            f"{where} has type {type_name!r}, which embedding_core does not implement "
            f"(known: {sorted(REGISTRY)})."
        )
    return cls


def saved_type_name(module: nn.Module) -> str | None:
    """What ``modules.json`` records for ``module``: the spelling every sentence-transformers
    release reads, or ``None`` for a module that cannot be saved in that format."""
    name = type(module).__name__
    return f"sentence_transformers.models.{name}" if REGISTRY.get(name) is type(module) else None


class Module(nn.Module):
    """A link of the chain: ``forward`` maps a features dict to a features dict.

    ``config_keys`` are the attributes written to ``config_file`` in the module's folder
    (override ``get_config_dict`` for values that need converting).
    """

    config_keys: ClassVar[tuple[str, ...]] = ()
    config_file: ClassVar[str] = "config.json"

    def get_config_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.config_keys}

    def save_config(self, output_path: str) -> None:
        os.makedirs(output_path, exist_ok=True)
        with open(os.path.join(output_path, self.config_file), "w", encoding="utf-8") as fh:
            json.dump(self.get_config_dict(), fh, indent=2)

    @classmethod
    def load_config(cls, input_path: str) -> dict[str, Any]:
        """The module's config file as a dict; ``{}`` when the folder has none."""
        config_path = os.path.join(input_path, cls.config_file)
        if not os.path.exists(config_path):
            return {}
        with open(config_path, encoding="utf-8") as fh:
            return json.load(fh)

    def save(self, output_path: str, safe_serialization: bool = True) -> None:
        """Write the module's config (and weights, for modules that have any) to ``output_path``."""
        self.save_config(output_path)

    @classmethod
    def load(cls, input_path: str, **context: Any) -> Module:
        """Build the module from its folder. ``context`` carries what the loader knows:
        ``dimension`` (the previous module's output width), ``trust_remote_code``,
        ``model_kwargs``, ``backend`` and ``revision``; each module takes what it needs."""
        raise NotImplementedError

    def output_dimension(self, input_dimension: int | None) -> int | None:
        """Width of the embeddings this module hands on, given the width it receives."""
        return input_dimension
