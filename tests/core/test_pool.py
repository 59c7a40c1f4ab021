"""The multi-process encode pool: same results as one process, and it never hangs.

Pool start-up costs a few seconds per worker on this 2-core machine, so most tests share one
module-scoped pool of two CPU workers; the tests that break or abandon a pool start their own.
"""

from __future__ import annotations

import copy
import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from embedding_core import SentenceTransformer
from embedding_core.pool import (
    EncodePool,
    PoolClosedError,
    PoolWorkerError,
    WorkerDiedError,
)
from embedding_core.pool.planning import available_cores, plan_workers
from tests.core.conftest import assert_rows_match, signal_when_working

UNKNOWN_TOKEN = "qzxwvunseentoken"


@pytest.fixture(scope="module")
def pool(model):
    with model.start_multi_process_pool(["cpu", "cpu"]) as started:
        yield started


@pytest.fixture(scope="module")
def texts(parity_texts) -> list[str]:
    """64 real texts of every length, from a few words to past max_seq_length."""
    return parity_texts[::4][:64]


def single(model, texts, **options):
    """One-process ``encode`` with the workers' thread count, so the arithmetic is identical."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return model.encode(texts, **options)
    finally:
        torch.set_num_threads(previous)


def alive(pids) -> list[int]:
    living = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                living.append(pid)
        except psutil.NoSuchProcess:
            pass
    return living


def children() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


# ------------------------------------------------------------------------------- parity
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"normalize_embeddings": True, "truncate_dim": 128},
        {"prompt": "query: "},
        {"batch_size": 7, "chunk_size": 20},
        {"max_tokens_per_batch": 2048},
    ],
    ids=["default", "normalize+truncate", "prompt", "batch7-chunk20", "token-budget"],
)
def test_pool_matches_one_process(model, pool, texts, options):
    ours = model.encode(texts, pool=pool, **options)
    theirs = single(model, texts, **options)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    assert_rows_match(ours, theirs, min_cosine=0.99999)


def test_pool_restores_the_callers_order(model, pool, texts):
    forward = model.encode(texts, pool=pool)
    backward = model.encode(texts[::-1], pool=pool)
    np.testing.assert_allclose(backward[::-1], forward, atol=1e-6)


@pytest.mark.parametrize("precision", ["int8", "ubinary"])
def test_quantization_is_calibrated_over_the_whole_call(model, pool, texts, precision):
    # Tiny chunks: a per-chunk calibration would give other buckets than the whole call's.
    ours = model.encode(texts, pool=pool, precision=precision, batch_size=8, chunk_size=8)
    theirs = single(model, texts, precision=precision, batch_size=8)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)


def test_prompt_name_is_resolved_in_the_parent(model, pool, texts):
    named = copy.copy(model)  # same modules, own prompt settings
    named.prompts = {"query": "query: "}
    named.default_prompt_name = "query"
    ours = named.encode(texts[:40], pool=pool)
    assert_rows_match(ours, single(model, texts[:40], prompt="query: "))
    assert not np.allclose(ours, single(model, texts[:40]), atol=1e-3)


def test_tensor_single_text_and_empty_outputs(model, pool, texts):
    as_tensor = model.encode(texts[:10], pool=pool, convert_to_tensor=True)
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.shape == (10, 384)
    one = model.encode(texts[3], pool=pool)
    assert one.shape == (384,)
    np.testing.assert_allclose(one, as_tensor[3].numpy(), atol=1e-6)
    assert model.encode([], pool=pool).shape == (0, 384)
    legacy = model.encode_multi_process(texts[:10], pool)
    np.testing.assert_allclose(legacy, as_tensor.numpy(), atol=1e-6)


def test_token_embeddings_and_all_outputs_match_one_process(model, pool, texts):
    tokens = model.encode(texts[:30], pool=pool, output_value="token_embeddings")
    expected = single(model, texts[:30], output_value="token_embeddings")
    assert len(tokens) == 30
    for ours, theirs in zip(tokens, expected, strict=True):
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    features = model.encode(texts[:5], pool=pool, output_value=None)
    reference = single(model, texts[:5], output_value=None)
    for ours, theirs in zip(features, reference, strict=True):
        assert set(ours) == set(theirs)
        torch.testing.assert_close(ours["sentence_embedding"], theirs["sentence_embedding"], atol=1e-5, rtol=1e-5)
        assert torch.equal(ours["input_ids"], theirs["input_ids"])


def test_progress_bar_covers_the_whole_call(model, pool, texts, capsys):
    model.encode(texts[:50], pool=pool, show_progress_bar=True, chunk_size=10)
    assert "50/50" in capsys.readouterr().err


def test_workers_load_the_model_once_and_stay(model, pool, texts):
    assert isinstance(pool, EncodePool)
    pids = pool.pids
    for _ in range(3):
        model.encode(texts[:20], pool=pool)
    assert pool.pids == pids and alive(pids) == pids
    assert pool.devices == ["cpu", "cpu"] and pool.threads == [1, 1]
    assert pool.model_folder == model.snapshot_path


def test_two_threads_sharing_a_pool_each_get_their_own_results(model, pool, texts):
    first, second = texts[:40], texts[24:][::-1]
    results: dict[str, np.ndarray] = {}
    errors: list[BaseException] = []

    def encode(name, batch):
        try:
            results[name] = model.encode(batch, pool=pool, batch_size=4, chunk_size=4)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=encode, args=args) for args in (("first", first), ("second", second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors and set(results) == {"first", "second"}
    assert_rows_match(results["first"], single(model, first, batch_size=4))
    assert_rows_match(results["second"], single(model, second, batch_size=4))


def test_a_pool_started_for_another_model_is_refused(pool, tiny_bert_dir):
    other = SentenceTransformer(str(tiny_bert_dir), device="cpu")
    with pytest.raises(ValueError, match="another model"):
        other.encode(["some text"], pool=pool)


# ------------------------------------------------------------------------------- failures
@pytest.fixture(scope="module")
def failing_model(model):
    """The same weights with a tokenizer that knows one extra token: its id is past the
    embedding table, so the forward pass genuinely fails on texts that contain it."""
    broken = copy.deepcopy(model)
    broken.tokenizer.add_tokens([UNKNOWN_TOKEN])
    with pytest.raises(IndexError):
        broken.encode([f"one {UNKNOWN_TOKEN}"])
    return broken


def test_a_worker_exception_comes_back_with_its_traceback(failing_model, pool, texts):
    with pytest.raises(PoolWorkerError) as caught:
        failing_model.encode(texts[:40] + [f"a text with {UNKNOWN_TOKEN}"], pool=pool, chunk_size=4)
    message = str(caught.value)
    assert "on cpu" in message and "Worker traceback" in message and "IndexError" in message
    assert caught.value.device == "cpu" and "Traceback" in caught.value.worker_traceback
    # The pool survives a failed call.
    assert_rows_match(failing_model.encode(texts[:10], pool=pool), single(failing_model, texts[:10]))


def test_a_temporary_pool_is_closed_when_the_call_fails(failing_model):
    before = children()
    with pytest.raises(PoolWorkerError, match="IndexError"):
        failing_model.encode(["fine", UNKNOWN_TOKEN], device=["cpu"])
    assert children() <= before


def test_starting_on_bad_devices_fails_before_spawning(model):
    before = children()
    with pytest.raises(ValueError, match="'tpu'"):
        model.start_multi_process_pool(["tpu"])
    with pytest.raises(ValueError, match="'cuda:7'"):
        model.start_multi_process_pool(["cpu", "cuda:7"])
    assert children() == before


@pytest.mark.timeout(180)  # the behaviour is "no hang": a hang fails here, naming the test
def test_a_killed_worker_is_reported_by_device_and_the_pool_stops_cleanly(model, parity_texts):
    pool = model.start_multi_process_pool(["cpu", "cpu"])
    victim = pool.pids[0]
    killer = signal_when_working(pool, 0, signal.SIGKILL)
    with pytest.raises(WorkerDiedError) as caught:
        model.encode(parity_texts, pool=pool)
    killer.join()
    assert "on cpu" in str(caught.value) and "SIGKILL" in str(caught.value)
    assert caught.value.device == "cpu" and caught.value.exitcode == -signal.SIGKILL
    assert alive([victim]) == []
    assert pool.broken
    with pytest.raises(WorkerDiedError, match="broken"):
        model.encode(["another call"], pool=pool)
    model.stop_multi_process_pool(pool)
    assert alive(pool.pids) == [] and pool.closed
    with pytest.raises(PoolClosedError):
        model.encode(["after close"], pool=pool)


def test_a_model_changed_in_memory_is_sent_as_a_copy_and_an_abandoned_pool_is_cleaned_up(model, texts):
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.transformer.auto_model.embeddings.word_embeddings.weight.mul_(1.25)
    pool = changed.start_multi_process_pool(["cpu"])
    folder, pids = pool.model_folder, pool.pids
    assert folder != model.snapshot_path and os.path.isdir(folder)
    ours = changed.encode(texts[:20], pool=pool)
    assert_rows_match(ours, single(changed, texts[:20]))
    assert not np.allclose(ours, single(model, texts[:20]), atol=1e-3)
    del pool
    gc.collect()
    assert alive(pids) == [] and not os.path.exists(folder)


def test_a_model_built_from_modules_works_through_the_pool(model, texts):
    assembled = SentenceTransformer(modules=list(model), device="cpu")
    assert assembled.snapshot_path is None
    with assembled.start_multi_process_pool(["cpu"]) as pool:
        folder = pool.model_folder
        ours = assembled.encode(texts[:20], pool=pool, normalize_embeddings=True)
    assert not os.path.exists(folder)
    assert_rows_match(ours, single(model, texts[:20], normalize_embeddings=True))


# ------------------------------------------------------------------------------- entry points
def test_a_dagster_asset_encodes_through_a_pool(model, texts):
    import dagster as dg

    batch = texts[:40]
    captured: dict[str, np.ndarray] = {}

    @dg.asset
    def pooled_embeddings():  # no annotation: this module's annotations are strings
        with model.start_multi_process_pool(["cpu", "cpu"]) as step_pool:
            captured["vectors"] = model.encode(batch, pool=step_pool)
        return dg.MaterializeResult(metadata={"rows": len(batch)})

    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([pooled_embeddings], instance=instance)
    assert result.success
    assert_rows_match(captured["vectors"], single(model, batch))


SCRIPT_TEXTS = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
SCRIPT_HEADER = f"""
import sys
import numpy as np
from embedding_core import SentenceTransformer

TEXTS = {SCRIPT_TEXTS!r}
"""


def run_script(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    script = tmp_path / "encode_script.py"
    script.write_text(SCRIPT_HEADER + textwrap.dedent(body), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(script), str(tmp_path / "vectors.npy")],
        capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path,
    )


def test_a_plain_script_with_a_main_guard_uses_the_default_pool(tmp_path, model):
    default_devices = [spec.device for spec in plan_workers(
        None, torch.cuda.device_count() if torch.cuda.is_available() else 0, available_cores())]
    completed = run_script(tmp_path, """
        if __name__ == "__main__":
            model = SentenceTransformer()
            pool = model.start_multi_process_pool()
            print("devices", pool.devices)
            np.save(sys.argv[1], model.encode(TEXTS, pool=pool))
            model.stop_multi_process_pool(pool)
    """)
    assert completed.returncode == 0, completed.stderr
    assert f"devices {default_devices}" in completed.stdout  # the planner's choice for this machine
    assert_rows_match(np.load(tmp_path / "vectors.npy"), single(model, SCRIPT_TEXTS))


def test_a_script_without_a_main_guard_gets_a_clear_error_not_a_hang(tmp_path):
    completed = run_script(tmp_path, """
        model = SentenceTransformer()
        np.save(sys.argv[1], model.encode(TEXTS, device=["cpu"]))
    """)
    assert completed.returncode != 0
    assert 'if __name__ == "__main__":' in completed.stderr
    assert "PoolStartError" in completed.stderr and "encode_script.py" in completed.stderr

