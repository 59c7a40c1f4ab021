"""Is a candidate version set as good as the serving one? The retrieval evaluation of a
rollout (`embedding_core.evaluation`) run on the store: the same queries against both,
each encoded with its version's own snapshot and parameters and searched in its own
vectors (through its vector index when one is built).

    >>> comparison = compare_with_serving(store, store.version_set(key, model), config,
    ...                                   [store_known_item_queries(store)], tolerance=0.01)
    >>> comparison.passed, comparison.describe()
    (False, 'version 1f0c5bb2-3e9d6a41 is worse than serving 9a8b7c6d-3e9d6a41 by more than 0.01: ...')

What the Dagster gate (`embedding_assets.assets.serving_version`) and a person comparing
versions by hand both use.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from embedding_core.backends import LOSSY_BACKENDS
from embedding_core.evaluation import (
    METRICS,
    EvaluationResult,
    QuerySet,
    evaluate,
    metric_deltas,
    regressions,
)
from embedding_core.hub import folder_content_hash
from embedding_core.snapshot import EncoderConfig, EncodingSession, require_current_snapshot
from embedding_core.store import EmbeddingStore, ModelSnapshot, VersionSet, version_key

__all__ = ["Comparison", "QuerySetComparison", "RolloutError", "compare_with_serving", "configured_version",
           "evaluate_version", "query_session"]


class RolloutError(RuntimeError):
    """A version cannot be evaluated (its model is gone, its vectors are not searchable);
    the message names the version and what to do."""


def configured_version(store: EmbeddingStore, config: EncoderConfig) -> VersionSet | None:
    """The version set `config` writes (the store's current snapshot of its model and its
    parameters), once it has vectors; None before. `SnapshotNotCurrentError` when no snapshot
    of the configured model and revision is recorded (materialize model_snapshot)."""
    snapshot = require_current_snapshot(store, config.model_name, config.revision)
    key = version_key(snapshot.revision, config.params(snapshot).params_hash)
    return next((s for s in store.version_sets(snapshot.model) if s.key == key), None)


def version_model(store: EmbeddingStore, version: VersionSet) -> ModelSnapshot:
    """The recorded snapshot of a version set's revision, checked to still be that revision:
    a local folder whose files changed since (weights replaced in place) holds another model,
    and encoding queries with it would judge the version with the wrong encoder."""
    snapshot = store.version_snapshot(version)
    if snapshot is None:
        raise RolloutError(f"version {version.key} of {version.model}: no model snapshot of revision "
                           f"{version.revision} is recorded; materialize model_snapshot at that revision")
    if snapshot.source in {"local", "bundled"} and os.path.isdir(snapshot.path):
        now = folder_content_hash(snapshot.path)
        if now != snapshot.revision:
            raise RolloutError(
                f"version {version.key} of {version.model} was embedded with revision {snapshot.revision}, but "
                f"the folder {snapshot.path} now holds {now}: its queries cannot be encoded with its own "
                "model. Keep each revision in a folder of its own (or a hub revision), or promote by hand "
                "(`embedding-store promote KEY --force`)")
    return snapshot


def query_session(config: EncoderConfig, snapshot: ModelSnapshot, version: VersionSet) -> EncodingSession:
    """An encoding session for queries searched in `version`: its parameters (normalization,
    truncate_dim, a lossy backend's own numerics) with float32 output, the snapshot's
    ``query`` prompt when it has one (as `embedding-search` encodes), whole (a query is not
    chunked). `config` gives the device and batch size."""
    params = version.embedding_params
    if version.dtype != "float32":
        raise RolloutError(f"version {version.key} of {version.model} stores {params.precision} vectors; "
                           "search, and so the evaluation, reads float32 versions only")
    prompt_name = "query" if "query" in snapshot.prompts else params.prompt_name
    query_params = replace(params, prompt_name=prompt_name,
                           prompt=snapshot.prompts.get(prompt_name) if prompt_name else None,
                           chunk_tokens=None, chunk_overlap=None)
    # A lossy version's queries go through its own backend; an exact one's through an exact one.
    backend = params.backend or (config.backend if config.backend not in LOSSY_BACKENDS else "auto")
    version_config = replace(config, model_name=snapshot.model_key, revision=snapshot.requested_revision,
                             precision="float32", backend=backend,
                             chunk_tokens=None, chunk_overlap=0, target_devices=None)
    return version_config.session(snapshot, query_params)


def evaluate_version(store: EmbeddingStore, version: VersionSet, config: EncoderConfig,
                     query_sets: Sequence[QuerySet]) -> list[EvaluationResult]:
    """`evaluate` each query set against `version`: queries encoded with its own snapshot
    and parameters (`query_session`), searched in its vectors (its index when built)."""
    snapshot = version_model(store, version)
    searcher = store.searcher(version.model, snapshot.similarity_fn, version=version.key, snapshot=snapshot)
    with query_session(config, snapshot, version) as session:
        session.encode(["warm-up"])  # the model loads here: the timings are per query, not per load
        return [evaluate(query_set, session.encode, lambda vectors, k: searcher.search_batch(vectors, k))
                for query_set in query_sets]


@dataclass(frozen=True)
class QuerySetComparison:
    """Candidate and serving scores on one query set, the deltas (candidate - serving) and
    the metrics worse by more than the tolerance."""

    candidate: EvaluationResult
    serving: EvaluationResult
    deltas: dict[str, float]
    regressions: dict[str, float]

    @property
    def query_set(self) -> str:
        return self.candidate.query_set


@dataclass(frozen=True)
class Comparison:
    """The retrieval evaluation of a candidate against the serving version: `passed` when no
    metric of any query set is worse by more than `tolerance` (absolute)."""

    model: str
    candidate_key: str
    serving_key: str
    tolerance: float
    query_sets: list[QuerySetComparison] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not any(compared.regressions for compared in self.query_sets)

    @property
    def queries(self) -> int:
        return sum(compared.candidate.queries for compared in self.query_sets)

    @property
    def seconds(self) -> float:
        """Encoding and searching every query for both versions."""
        return sum(compared.candidate.seconds + compared.serving.seconds for compared in self.query_sets)

    @property
    def seconds_per_1000_queries(self) -> float:
        """What one version costs per 1,000 queries (encode + search), averaged over both."""
        return 1000.0 * self.seconds / (2 * self.queries) if self.queries else 0.0

    def metrics(self) -> dict:
        """A JSON-able record of every score and delta (what a promotion records)."""
        return {"candidate": self.candidate_key, "serving": self.serving_key, "tolerance": self.tolerance,
                "queries": self.queries, "seconds_per_1000_queries": round(self.seconds_per_1000_queries, 2),
                "query_sets": {c.query_set: {"queries": c.candidate.queries,
                                             **{f"{m} candidate": round(c.candidate.metrics[m], 4) for m in METRICS},
                                             **{f"{m} serving": round(c.serving.metrics[m], 4) for m in METRICS},
                                             **{f"{m} delta": round(c.deltas[m], 4) for m in METRICS}}
                               for c in self.query_sets}}

    def describe(self) -> str:
        """One sentence: passed, or by how much each metric fell short."""
        if self.passed:
            worst = min((delta for c in self.query_sets for delta in c.deltas.values()), default=0.0)
            return (f"version {self.candidate_key} is no worse than serving {self.serving_key} beyond "
                    f"{self.tolerance} on {self.queries} queries (worst delta {worst:+.4f})")
        shortfalls = "; ".join(
            f"{metric} {delta:+.4f} ({c.candidate.metrics[metric]:.4f} vs {c.serving.metrics[metric]:.4f}) "
            f"on {c.query_set}"
            for c in self.query_sets for metric, delta in c.regressions.items())
        return (f"version {self.candidate_key} is worse than serving {self.serving_key} by more than "
                f"{self.tolerance}: {shortfalls}")


def compare_with_serving(store: EmbeddingStore, candidate: VersionSet, config: EncoderConfig,
                         query_sets: Sequence[QuerySet], tolerance: float) -> Comparison:
    """Evaluate `candidate` and the serving version of its model on the same `query_sets`."""
    serving = store.serving_version(candidate.model)
    if serving is None or serving.key == candidate.key:
        raise RolloutError(f"version {candidate.key} of {candidate.model} is the serving one: nothing to compare")
    candidate_results = evaluate_version(store, candidate, config, query_sets)
    serving_results = evaluate_version(store, serving, config, query_sets)
    return Comparison(candidate.model, candidate.key, serving.key, tolerance, [
        QuerySetComparison(mine, theirs, metric_deltas(mine, theirs), regressions(mine, theirs, tolerance))
        for mine, theirs in zip(candidate_results, serving_results, strict=True)])
