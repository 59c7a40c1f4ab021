"""Model rollouts through the real pipeline: a candidate version set is built beside the
serving one, the blocking check `candidate_retrieval_quality` evaluates it against the
serving version, and `serving_version` promotes it, or does not.

The model is the bundled MiniLM laid out as a hub repository with immutable revisions (as
a pinned hub model is): A, B (A's weights with a slight change: as good) and C (A's weights
with noise: worse), so every revision stays loadable to encode its own queries."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dagster import (
    AssetCheckKey,
    AssetCheckSeverity,
    AssetKey,
    AssetRecordsFilter,
    AssetSelection,
    DagsterInstance,
    Definitions,
    instance_for_test,
    materialize,
)
from safetensors.torch import load_file, save_file

from embedding_assets.assets.serving_version import GATE_KEY
from embedding_assets.backfill import landing_partitions, materialize_selection
from embedding_assets.definitions import build_definitions
from embedding_assets.resources import EncoderResource, PromotionGateResource
from embedding_core.hub import bundled_model_path
from embedding_core.landing import bucket_of
from embedding_core.rollout import configured_version
from embedding_core.snapshot import load_snapshot_model
from tests.assets.conftest import write_sample_slice

REPO = "acme/minilm-rollout"
COMMIT_A = "a" * 40
COMMIT_B = "b" * 40
COMMIT_C = "c" * 40
ROWS = 30  # per landing file: 23 known-item queries (a single sentence makes none)
DOCS_BUCKET = bucket_of("python_docs.jsonl", 16)
# Several revisions embedded and judged through Dagster with the real model: end to end.
pytestmark = pytest.mark.slow


def write_revision(cache: Path, commit: str, noise: float) -> None:
    """The bundled model as snapshot `commit` of `REPO` in a hub cache, with Gaussian noise of
    `noise` times each weight matrix's own standard deviation added to it (0: unchanged)."""
    source = Path(bundled_model_path())
    target = cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / commit
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("model.safetensors"))
    tensors = load_file(source / "model.safetensors")
    generator = torch.Generator().manual_seed(int(commit[:8], 16) % 2**31)
    for name, tensor in tensors.items():
        if noise and tensor.ndim == 2 and tensor.dtype.is_floating_point:
            tensors[name] = tensor + noise * tensor.std() * torch.randn(tensor.shape, generator=generator)
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("hub")
    write_revision(cache, COMMIT_A, 0.0)
    write_revision(cache, COMMIT_B, 0.001)
    write_revision(cache, COMMIT_C, 0.6)
    return cache


class Rollout:
    """One store, landing folder and instance; Definitions per encoder configuration."""

    def __init__(self, store_root: Path, landing: Path, cache: Path, instance: DagsterInstance) -> None:
        self.store_root, self.landing, self.cache, self.instance = str(store_root), str(landing), cache, instance

    def defs(self, revision: str = COMMIT_A, gate: PromotionGateResource | None = None, backend: str = "torch",
             **encoding) -> Definitions:
        encoder = EncoderResource(model_name=REPO, revision=revision, cache_folder=str(self.cache),
                                  local_files_only=True, backend=backend, **encoding)
        return build_definitions(store_root=self.store_root, landing_dir=self.landing, encoder=encoder,
                                 promotion_gate=gate)

    def embed(self, defs: Definitions, buckets: list[str] | None = None) -> None:
        """model_snapshot, then corpus + embeddings of `buckets` (all by default)."""
        results = materialize_selection(defs, self.instance, [AssetKey("model_snapshot")])
        results += materialize_selection(defs, self.instance, [AssetKey("corpus"), AssetKey("embeddings")],
                                         buckets or landing_partitions())
        assert all(result.success for result in results)

    def promote(self, defs: Definitions, selection: AssetSelection | None = None):
        """The promote_candidate job: vector_index (+ its checks) and serving_version; or only
        `selection` of the graph."""
        if selection is None:
            return defs.resolve_job_def("promote_candidate").execute_in_process(instance=self.instance,
                                                                                 raise_on_error=False)
        return materialize([*defs.assets, *defs.asset_checks], instance=self.instance, resources=defs.resources,
                           selection=selection, raise_on_error=False)

    def gate(self):
        """The latest evaluation of the blocking check."""
        return self.instance.get_latest_asset_check_evaluation_record(GATE_KEY).event.asset_check_evaluation

    def serving_event(self):
        records = self.instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey("serving_version")),
                                                       limit=1).records
        return records[0].asset_materialization if records else None


@pytest.fixture(scope="module")
def serving_a(tmp_path_factory, hub_cache) -> tuple[Path, Path]:
    """(landing folder, store) with every bucket embedded by revision A, which serves: each
    test starts from a copy of that store (a store copied whole is the same store)."""
    folder = tmp_path_factory.mktemp("serving_a")
    landing = write_sample_slice(folder / "landing", rows=ROWS)
    with instance_for_test() as instance:
        rollout = Rollout(folder / "store", landing, hub_cache, instance)
        rollout.embed(rollout.defs(COMMIT_A))
    return landing, folder / "store"


@pytest.fixture
def rollout(tmp_path, serving_a, hub_cache, instance) -> Rollout:
    landing, store = serving_a
    shutil.copytree(store, tmp_path / "store")
    return Rollout(tmp_path / "store", landing, hub_cache, instance)


def metrics_table(evaluation) -> dict[tuple[str, str], dict]:
    table = evaluation.metadata["metrics"].value
    return {(record.data["query_set"], record.data["metric"]): record.data for record in table.records}


def write_beir_set(folder: Path) -> Path:
    """Three questions about the slice's Python-doc paragraphs, graded (2: the answer, 1: related)."""
    (folder / "qrels").mkdir(parents=True)
    queries = {"q1": "how does unpacking into a starred target work",
               "q2": "what is called when attribute lookup fails with AttributeError",
               "q3": "async with statement and asynchronous context managers"}
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\tpydoc-assignment-5\t2\nq1\tpydoc-assignment-6\t1\n"
        "q2\tpydoc-attribute-access-2\t2\nq2\tpydoc-attribute-access-1\t1\nq3\tpydoc-async-8\t2\n")
    return folder


def test_a_half_finished_rollout_serves_a_then_the_gate_promotes_b_and_search_switches(rollout, tmp_path):
    a = rollout.defs(COMMIT_A)
    store = a.resources["embedding_store"].open()
    key_a = configured_version(store, a.resources["encoder"].open()).key
    assert store.serving_version(REPO).key == key_a  # a fresh store serves its first version

    # Revision B, but the backfill stopped after the first bucket. The gate also runs the user's BEIR set.
    b = rollout.defs(COMMIT_B, gate=PromotionGateResource(beir_dir=str(write_beir_set(tmp_path / "beir"))))
    rollout.embed(b, [DOCS_BUCKET])
    candidate = configured_version(store, b.resources["encoder"].open())
    assert (candidate.partitions_covered, candidate.partitions_total, candidate.complete) == (1, 3, False)
    # The gate and the promotion say so, and do nothing.
    assert rollout.promote(b, AssetSelection.checks(GATE_KEY) | AssetSelection.assets("serving_version")).success
    gate = rollout.gate()
    assert (gate.passed, gate.severity) == (False, AssetCheckSeverity.WARN)
    assert gate.description.startswith(f"candidate {candidate.key} covers 1 of 3 partitions: not evaluated")
    assert rollout.serving_event().metadata["action"].value == "not promoted: candidate covers 1 of 3 partitions"
    assert store.serving_version(REPO).key == key_a
    with store.connect() as con:
        assert con.execute("SELECT DISTINCT revision FROM embeddings").fetchall() == [(COMMIT_A,)]
    # The second file's own text finds itself, encoded with A (the serving snapshot) and searched in A.
    snapshot_a = store.version_snapshot(store.serving_version(REPO))
    text = store.read_corpus(store.corpus_version("stdlib_docstrings.txt")).column("text")[5].as_py()
    hit = store.search(load_snapshot_model(snapshot_a, backend="torch").encode([text])[0], REPO, top_k=1,
                       snapshot=snapshot_a)[0]
    assert (hit.partition, hit.text) == ("stdlib_docstrings.txt", text) and hit.score == pytest.approx(1.0, abs=1e-4)

    # The rollout completes: B's index is built, the gate compares, B is promoted in one commit.
    rollout.embed(b)
    result = rollout.promote(b)
    assert result.success
    gate = rollout.gate()
    assert gate.passed and gate.severity == AssetCheckSeverity.ERROR
    metadata = {key: value.value for key, value in gate.metadata.items()}
    assert (metadata["candidate"], metadata["serving"], metadata["tolerance"]) == (candidate.key, key_a, 0.01)
    assert metadata["queries"] == 23 + 3 and metadata["seconds_per_1000_queries"] > 0
    table = metrics_table(gate)
    assert set(table) == {(query_set, m) for query_set in ("known-item (seed 0)", "BEIR beir (test)")
                          for m in ("recall@10", "mrr@10", "ndcg@10")}
    assert table[("BEIR beir (test)", "ndcg@10")]["serving"] > 0.5  # graded: the answers rank high
    for row in table.values():
        assert row["delta"] == pytest.approx(row["candidate"] - row["serving"], abs=2e-4)
        assert row["within_tolerance"] and row["delta"] >= -0.01
    assert table[("known-item (seed 0)", "recall@10")]["serving"] >= 0.9  # a sentence finds its document
    event = rollout.serving_event()
    assert event.metadata["action"].value == f"promoted {candidate.key} over {key_a}"
    vector_index_recall = rollout.instance.get_latest_asset_check_evaluation_record(
        AssetCheckKey(AssetKey("vector_index"), "recall_at_10")).event.asset_check_evaluation
    assert vector_index_recall.passed
    assert vector_index_recall.metadata[f"recall_at_10 {REPO} {candidate.key}"].value >= 0.95
    assert store.serving_version(REPO).key == candidate.key
    promotion = store.promotions(REPO)[-1]
    assert (promotion.from_key, promotion.to_key, promotion.forced) == (key_a, candidate.key, False)
    assert promotion.metrics["query_sets"]["known-item (seed 0)"]["recall@10 serving"] == pytest.approx(
        table[("known-item (seed 0)", "recall@10")]["serving"])
    # Search answers with B, from B's index, built before the promotion.
    searcher = store.searcher(REPO, "cosine")
    assert (searcher.version_key, searcher.revision, searcher.uses_index) == (candidate.key, COMMIT_B, True)
    with store.connect() as con:
        assert con.execute("SELECT DISTINCT revision FROM embeddings").fetchall() == [(COMMIT_B,)]

    # Materialized again: already serving, nothing done.
    assert rollout.promote(b).success
    assert rollout.serving_event().metadata["action"].value == "already serving"
    assert len(store.promotions(REPO)) == 1


def test_a_candidate_with_noise_in_its_weights_is_held_back_and_a_lossy_backend_is_judged_alike(rollout):
    a = rollout.defs(COMMIT_A)
    store = a.resources["embedding_store"].open()
    key_a = store.serving_version(REPO).key

    c = rollout.defs(COMMIT_C)
    rollout.embed(c)
    candidate = configured_version(store, c.resources["encoder"].open())
    assert candidate.complete and not candidate.serving
    result = rollout.promote(c)
    assert not result.success
    gate = rollout.gate()
    assert (gate.passed, gate.severity) == (False, AssetCheckSeverity.ERROR)
    table = metrics_table(gate)
    recall = table[("known-item (seed 0)", "recall@10")]
    mrr = table[("known-item (seed 0)", "mrr@10")]
    assert recall["serving"] >= 0.9 and recall["delta"] < -0.1 and not recall["within_tolerance"]
    assert gate.metadata["delta mrr@10"].value == mrr["delta"] < -0.1
    assert gate.description.startswith(f"version {candidate.key} is worse than serving {key_a} by more than 0.01: ")
    assert f"mrr@10 {mrr['delta']:+.4f} ({mrr['candidate']:.4f} vs {mrr['serving']:.4f})" in gate.description
    # The check blocked the promotion: serving_version did not run, A serves, no promotion recorded.
    assert rollout.serving_event() is None
    assert store.serving_version(REPO).key == key_a and store.promotions(REPO) == []
    with store.connect() as con:
        assert con.execute("SELECT DISTINCT revision FROM embeddings").fetchall() == [(COMMIT_A,)]

    # serving_version alone (the check not in the run) does not step around the failed gate.
    alone = rollout.promote(c, AssetSelection.assets("serving_version"))
    assert not alone.success
    failure = next(e for e in alone.all_events if e.is_step_failure)
    assert f"the gate failed for candidate {candidate.key}" in str(failure.step_failure_data.user_failure_data
                                                                    .description)
    assert store.serving_version(REPO).key == key_a

    # A lossy backend (ONNX int8) is a candidate of its own, judged by the same gate (its queries
    # encoded with that backend too).
    lossy = rollout.defs(COMMIT_A, backend="onnx-int8")
    rollout.embed(lossy)
    int8 = configured_version(store, lossy.resources["encoder"].open())
    assert int8.params["backend"] == "onnx-int8" and int8.key not in {key_a, candidate.key}
    result = rollout.promote(lossy)
    gate = rollout.gate()
    assert (gate.metadata["candidate"].value, gate.metadata["serving"].value) == (int8.key, key_a)
    # ONNX int8 loses no metric by more than the tolerance: promoted. (Its deltas are 0 on one
    # run and -0.00x on another: int8 vectors move with the runtime's kernels, so no exact value.)
    assert result.success and gate.passed
    assert all(row["within_tolerance"] and row["delta"] >= -0.01 for row in metrics_table(gate).values())
    assert store.serving_version(REPO).key == int8.key
    assert [(p.from_key, p.to_key) for p in store.promotions(REPO)] == [(key_a, int8.key)]


def test_chunking_on_and_off_go_through_the_same_gate(rollout):
    a = rollout.defs(COMMIT_A)
    store = a.resources["embedding_store"].open()
    key_a = store.serving_version(REPO).key

    # Chunking on, from CI: the backfill command embeds every bucket, then --promote runs the gate
    # and the promotion (its own process and instance, the settings from EMBEDDING_*).
    env = {key: value for key, value in os.environ.items() if key != "DAGSTER_HOME"}
    env.update(EMBEDDING_STORE_ROOT=rollout.store_root, EMBEDDING_LANDING_DIR=rollout.landing,
               EMBEDDING_MODEL=REPO, EMBEDDING_MODEL_REVISION=COMMIT_A, EMBEDDING_BACKEND="torch",
               SENTENCE_TRANSFORMERS_HOME=str(rollout.cache), HF_HUB_OFFLINE="1",
               EMBEDDING_CHUNK_TOKENS="64", EMBEDDING_CHUNK_OVERLAP="16")
    backfill = subprocess.run([sys.executable, "-m", "embedding_assets.backfill", "--promote"], env=env,
                              capture_output=True, text=True, timeout=600)
    assert backfill.returncode == 0, (backfill.stdout + backfill.stderr)[-3000:]
    chunked = rollout.defs(COMMIT_A, chunk_tokens=64, chunk_overlap=16)
    key_chunked = configured_version(store, chunked.resources["encoder"].open()).key
    assert f"promotion: passed: version {key_chunked} is no worse than serving {key_a} beyond 0.01 on 23 " \
           f"queries" in backfill.stdout
    assert f"serving_version: promoted {key_chunked} over {key_a}" in backfill.stdout
    assert store.serving_version(REPO).key == key_chunked and store.serving_version(REPO).chunked
    with store.connect() as con:
        assert con.execute("SELECT max(chunk) FROM embeddings").fetchone()[0] >= 1

    # Chunking off again: A is a candidate again (its vectors are still there), judged the same way,
    # and found worse: with whole texts cut at 256 tokens, a sentence finds its document less often first.
    result = rollout.promote(a)
    assert not result.success
    gate = rollout.gate()
    assert (gate.passed, gate.metadata["candidate"].value, gate.metadata["serving"].value) == (
        False, key_a, key_chunked)
    mrr = metrics_table(gate)[("known-item (seed 0)", "mrr@10")]
    assert mrr["serving"] == 1.0 and mrr["delta"] < -0.01 and not mrr["within_tolerance"]
    assert f"mrr@10 {mrr['delta']:+.4f}" in gate.description
    assert store.serving_version(REPO).key == key_chunked
    # By hand, the previous version comes back at once: its vectors and index are still there.
    store.rollback(REPO, reason="back to whole texts")
    assert store.serving_version(REPO).key == key_a
    assert store.searcher(REPO, "cosine").uses_index
    assert [(p.from_key, p.to_key) for p in store.promotions(REPO)] == [(key_a, key_chunked), (key_chunked, key_a)]
