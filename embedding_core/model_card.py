"""What a saved model's README.md says: the model card's data and its text."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from embedding_core.fs import writing

# The placeholder sentence-transformers writes where the model's hub id is not known yet.
PLACEHOLDER_MODEL_ID = "sentence_transformers_model_id"


@dataclass
class ModelCardData:
    """Facts for the model card written by ``SentenceTransformer.save``.

    ``model_id`` is the name the card's usage snippet loads the model by (set from a hub
    name on load, or from ``save(..., model_name=...)``); the others are free text for the card.
    """

    model_id: str | None = None
    model_name: str | None = None
    base_model: str | None = None
    base_model_revision: str | None = None
    language: str | list[str] | None = None
    license: str | None = None
    tags: list[str] = field(default_factory=lambda: ["sentence-transformers", "feature-extraction"])
    generate_widget_examples: bool = True


def write_model_card(path: str, card: ModelCardData, facts: dict[str, object]) -> None:
    """README.md in ``path``: the model's name, ``facts`` and how to load and use it,
    unless the folder has one."""
    readme = os.path.join(path, "README.md")
    if os.path.exists(readme):
        return
    model_id = card.model_id or PLACEHOLDER_MODEL_ID
    title = card.model_name or card.model_id or os.path.basename(os.path.normpath(path))
    lines = "".join(f"- {key}: {value}\n" for key, value in facts.items())
    tags = "".join(f"- {tag}\n" for tag in card.tags)
    base = f"base_model: {card.base_model}\n" if card.base_model else ""
    with writing(readme), open(readme, "w", encoding="utf-8") as fh:
        fh.write(
            f"---\ntags:\n{tags}{base}library_name: sentence-transformers\n---\n\n"
            f"# {title}\n\nA sentence embedding model saved by embedding_core in the sentence-transformers "
            f"folder format.\n\n{lines}\n"
            "## Usage\n\n```python\nfrom sentence_transformers import SentenceTransformer\n\n"
            f'model = SentenceTransformer("{model_id}")\n'
            'embeddings = model.encode(["The weather is lovely today.", "It\'s so sunny outside!"])\n'
            "similarities = model.similarity(embeddings, embeddings)\n```\n"
        )
