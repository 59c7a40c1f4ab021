"""What is particular to the OpenVINO backends: streams, threads, bf16, int8 calibration, cache.

Parity (fp32) and int8 quality are checked with the other backends in test_fast_path.py.
Speed is checked by benchmarks/bench_encode.py, never here; these tests prove the vectors.
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from embedding_core import SentenceTransformer
from embedding_core.backends import openvino as ov_backend
from tests.conftest import read_jsonl_texts
from tests.core.conftest import assert_rows_match, row_cosines


@pytest.fixture(scope="module")
def ov_model(load_backend):
    return load_backend("openvino")


@pytest.fixture(scope="module")
def ov_int8_model(load_backend):
    return load_backend("openvino-int8")


# ------------------------------------------------------------------------------------ fp32
def test_encoder_outputs_are_owned_by_the_caller_and_thread_safe(ov_model, model, parity_texts):
    """Each call returns its own buffer; two threads at once get their own results."""
    batches = [model.tokenize(parity_texts[start : start + 6]) for start in (0, 60)]
    encoder = ov_model.transformer.runtime
    expected = [encoder(batch["input_ids"], batch["attention_mask"]) for batch in batches]
    assert not np.shares_memory(expected[0].numpy(), expected[1].numpy())
    results: dict[int, list[torch.Tensor]] = {0: [], 1: []}

    def work(index):
        for _ in range(5):
            batch = batches[index]
            results[index].append(encoder(batch["input_ids"], batch["attention_mask"]))

    threads = [threading.Thread(target=work, args=(index,)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index in (0, 1):
        for result in results[index]:
            torch.testing.assert_close(result, expected[index], rtol=0, atol=1e-5)


def test_imap_keeps_batches_in_flight_and_returns_them_in_order(ov_model, model, parity_texts):
    """The streamed path gives each batch's own result, in order, and survives being abandoned."""
    encoder = ov_model.transformer.runtime
    batches = [model.tokenize(parity_texts[start : start + 5]) for start in range(0, 60, 5)]
    items = [(index, batch["input_ids"], batch["attention_mask"]) for index, batch in enumerate(batches)]
    results = list(encoder.imap(iter(items)))
    assert [index for index, _ in results] == list(range(len(batches)))
    for (_, hidden), batch in zip(results, batches, strict=True):
        assert hidden.shape == (*batch["input_ids"].shape, 384)
        torch.testing.assert_close(hidden, encoder(batch["input_ids"], batch["attention_mask"]), rtol=0, atol=1e-4)
    abandoned = encoder.imap(iter(items))
    next(abandoned)
    abandoned.close()  # waits for the batches still running, then frees their requests
    again = list(encoder.imap(iter(items[:3])))
    torch.testing.assert_close(again[2][1], results[2][1], rtol=0, atol=1e-4)


def test_pool_with_the_openvino_backend_matches_one_process(ov_model, parity_texts):
    """Two single-thread workers (one stream each, two requests queued) give the one-process vectors."""
    texts = parity_texts[::4][:48]
    with ov_model.start_multi_process_pool(["cpu", "cpu"]) as pool:
        pooled = ov_model.encode(texts, pool=pool)
        assert len(pool.threads) == 2
    single = ov_model.encode(texts)
    assert_rows_match(pooled, single)
    np.testing.assert_allclose(pooled, single, rtol=0, atol=1e-5)


def test_a_lone_batch_and_a_single_text_use_every_stream(ov_model, model, parity_texts):
    """A small call is split over the streams (or, for one row, run on the latency-compiled
    copy) and gives the vectors of the whole-batch path."""
    encoder = ov_model.transformer.runtime
    batch = model.tokenize(parity_texts[40:47])
    whole = encoder.compiled.create_infer_request().infer(
        {"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy()})[0]
    split = encoder(batch["input_ids"], batch["attention_mask"])
    np.testing.assert_allclose(split.numpy(), whole, rtol=0, atol=1e-4)
    ((_, lone),) = list(encoder.imap(iter([("only", batch["input_ids"], batch["attention_mask"])])))
    np.testing.assert_allclose(lone.numpy(), whole, rtol=0, atol=1e-4)
    one = model.tokenize(parity_texts[40:41])
    single = encoder(one["input_ids"], one["attention_mask"])
    if encoder.streams > 1:
        assert encoder._latency is not None  # the one-stream, all-threads copy ran it
    np.testing.assert_allclose(single.numpy()[0], whole[0, : single.shape[1]], rtol=0, atol=1e-4)
    assert_rows_match(ov_model.encode(parity_texts[40:47]), model.encode(parity_texts[40:47]))


# ------------------------------------------------------------------------------------ bf16
def test_openvino_bf16_is_near_fp32_or_refused_without_native_bf16(bundled_model_path, backend_cache, model, caplog):
    texts = read_jsonl_texts("mixed_texts.jsonl")[::8]
    with caplog.at_level(logging.WARNING):
        bf16 = SentenceTransformer(bundled_model_path, device="cpu", backend="openvino-bf16")
    if ov_backend.cpu_has_bf16():
        assert bf16.backend == "openvino-bf16"
        assert bf16.transformer.runtime.precision == "bf16"
        cosines = row_cosines(bf16.encode(texts), model.encode(texts))
        assert cosines.min() >= 0.9999, cosines.min()
    else:
        assert bf16.backend == "torch"
        assert "native bf16" in caplog.text


# ------------------------------------------------------------------------------------ int8
def test_int8_runs_its_matrix_products_in_int8(ov_int8_model):
    """Quantization really happened: the graph has int8 fake-quantize nodes around the matmuls."""
    import openvino as ov

    graph = ov.Core().read_model(ov_int8_model.transformer.runtime.path)
    kinds = [node.get_type_name() for node in graph.get_ops()]
    assert kinds.count("FakeQuantize") >= 6 * 6, kinds.count("FakeQuantize")  # 6 layers, >= 6 matmuls each


def test_calibration_texts_are_held_out_from_the_benchmark_corpora():
    calibration = ov_backend.bundled_calibration_texts()
    assert len(calibration) == 300
    benchmark = set(read_jsonl_texts("short_texts.jsonl")) | set(read_jsonl_texts("mixed_texts.jsonl"))
    assert not [text for text in calibration if text in benchmark]


# ------------------------------------------------------------------------------------ cache
def test_built_models_are_reused_from_the_cache(bundled_model_path, ov_model, ov_int8_model, backend_cache):
    # the bundled model's entry (the session's cache also holds other models' entries)
    entry = Path(ov_model.transformer.runtime.path).parent.parent
    assert entry == Path(ov_int8_model.transformer.runtime.path).parent.parent
    folders = sorted(path.parent.name for path in entry.rglob("model.xml"))
    assert len(folders) == 2 and folders[0] == "fp32" and folders[1].startswith("int8-"), folders
    built_at = {path: path.stat().st_mtime_ns for path in entry.rglob("model.*")}
    again = SentenceTransformer(bundled_model_path, device="cpu", backend="openvino-int8")
    assert again.transformer.runtime.path == ov_int8_model.transformer.runtime.path
    assert {path: path.stat().st_mtime_ns for path in entry.rglob("model.*")} == built_at
    assert not list(backend_cache.rglob(".build-*"))


def test_other_calibration_texts_build_another_int8_model(ov_int8_model, backend_cache, parity_texts):
    transformer = ov_int8_model.transformer
    encoder = ov_backend.load_openvino_encoder(transformer, "openvino-int8", calibration_texts=parity_texts[:40])
    assert encoder.path != transformer.runtime.path
    assert len([p for p in backend_cache.rglob("model.xml") if p.parent.name.startswith("int8-")]) == 2


def test_empty_calibration_is_refused(ov_int8_model):
    with pytest.raises(ov_backend.OpenVinoBackendError, match="calibration_texts is empty"):
        ov_backend.load_openvino_encoder(ov_int8_model.transformer, "openvino-int8", calibration_texts=[])


def test_missing_openvino_falls_back_to_torch(bundled_model_path, reference, parity_texts, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with caplog.at_level(logging.WARNING):
        model = SentenceTransformer(bundled_model_path, device="cpu", backend="openvino")
    assert model.backend == "torch"
    assert "pip install 'embedding-pipeline[openvino]'" in caplog.text
    texts = parity_texts[::20]
    assert_rows_match(model.encode(texts), reference.encode(texts))
