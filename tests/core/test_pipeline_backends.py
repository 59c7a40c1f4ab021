"""Which backend a pipeline encodes with, and which embedding version its vectors belong to.

``EncoderConfig.backend`` ("auto" by default) picks the fastest exact backend; exact backends
share one version, lossy ones (``backends.LOSSY_BACKENDS``) enter the parameters and make their
own. These tests write real vectors from the bundled model into a real store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import asdict, replace

import numpy as np
import pytest

from embedding_core.backends import LOSSY_BACKENDS, resolve_backend
from embedding_core.corpus import read_corpus_file
from embedding_core.hub import DEFAULT_MODEL_NAME
from embedding_core.snapshot import EncoderConfig
from embedding_core.store import EmbeddingParams, EmbeddingStore
from embedding_core.store.records import sha256_json
from tests.core.conftest import row_cosines

SAMPLE_CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "embedding_assets",
                             "sample_corpus", "python_docs.jsonl")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_python(code: str, cache: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO, "EMBEDDING_CORE_CACHE": cache, "PYTHONWARNINGS": "default"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=REPO)


# ------------------------------------------------------------------------------------ auto
def test_auto_is_openvino_on_cpu_and_torch_on_cuda():
    assert resolve_backend("auto", "cpu") == "openvino"
    assert resolve_backend("auto", "cuda") == "torch"
    assert resolve_backend("auto", "cuda:1") == "torch"
    assert resolve_backend("openvino-int8", "cpu") == "openvino-int8"  # a named one is taken as is
    with pytest.raises(ValueError, match="'openvino-int4'.*openvino-int8"):
        EncoderConfig(DEFAULT_MODEL_NAME, backend="openvino-int4")


def test_auto_loads_openvino_and_falls_back_to_torch_where_openvino_is_not_installed(backend_cache):
    """Same config in a process where ``import openvino`` fails: PyTorch, and the same version."""
    config = EncoderConfig(DEFAULT_MODEL_NAME, device="cpu")
    snapshot = config.resolve()
    model = config.load(snapshot)
    assert (config.resolved_backend, model.backend) == ("openvino", "openvino")
    texts = ["a short text", "another, somewhat longer text about Python's import system"]
    done = run_python(f"""
        import json, sys
        sys.modules["openvino"] = None  # what a missing package looks like to `import openvino`
        from embedding_core.snapshot import EncoderConfig
        config = EncoderConfig({DEFAULT_MODEL_NAME!r}, device="cpu")
        snapshot = config.resolve()
        model = config.load(snapshot)
        print(json.dumps([config.resolved_backend, model.backend, config.params(snapshot).params_hash,
                          model.encode({texts!r}).tolist()]))
        """, str(backend_cache))
    assert done.returncode == 0, done.stderr
    resolved, loaded, params_hash, vectors = json.loads(done.stdout.strip().splitlines()[-1])
    assert (resolved, loaded) == ("torch", "torch")
    assert params_hash == config.params(snapshot).params_hash  # exact backends: one version
    assert row_cosines(np.array(vectors), model.encode(texts)).min() >= 0.99999


# ------------------------------------------------------------------------------------ params
def test_exact_backends_keep_the_params_and_lossy_ones_enter_them(backend_cache):
    config = EncoderConfig(DEFAULT_MODEL_NAME, device="cpu")
    snapshot = config.resolve()
    exact = {replace(config, backend=name).params(snapshot) for name in ("auto", "torch", "openvino", "onnx")}
    assert len(exact) == 1
    (params,) = exact
    assert params.backend is None
    # Parameters without a backend (or chunking) hash as they did before either was recorded.
    assert (params.chunk_tokens, params.chunk_overlap) == (None, None)
    fields = {k: v for k, v in asdict(params).items() if k not in ("backend", "chunk_tokens", "chunk_overlap")}
    assert params.params_hash == sha256_json(fields)[:16]
    assert "backend" not in json.loads(params.to_json())
    lossy = {name: replace(config, backend=name).params(snapshot) for name in LOSSY_BACKENDS}
    assert {p.backend for p in lossy.values()} == set(LOSSY_BACKENDS)
    assert len({p.params_hash for p in lossy.values()} | {params.params_hash}) == len(LOSSY_BACKENDS) + 1
    assert json.loads(lossy["openvino-int8"].to_json())["backend"] == "openvino-int8"
    with pytest.raises(ValueError, match="backend ''"):
        EmbeddingParams(backend="")


def test_a_lossy_backend_makes_its_own_version_and_exact_ones_reuse_the_fp32_vectors(tmp_path, backend_cache):
    rows = read_corpus_file(SAMPLE_CORPUS).table
    store = EmbeddingStore(tmp_path / "store")
    docs = store.write_corpus("docs", rows.slice(0, 24))
    more = store.write_corpus("more", rows.slice(16, 16))  # 8 texts shared with docs, 8 new
    exact = EncoderConfig(DEFAULT_MODEL_NAME, device="cpu")  # auto: OpenVINO float32
    int8 = replace(exact, backend="openvino-int8")
    snapshot = store.record_model_snapshot(exact.resolve())

    def write(config, partition, corpus):
        params = config.params(snapshot)
        with config.session(snapshot, params) as session:
            return store.write_embeddings(partition, corpus, snapshot, params, session.encode)

    fp32 = write(exact, "docs", docs)
    assert (fp32.encoded_rows, fp32.version.params.get("backend")) == (24, None)

    lossy = write(int8, "docs", docs)
    assert lossy.created and (lossy.encoded_rows, lossy.reused_rows) == (24, 0)  # no fp32 vector reused
    assert lossy.version.version_id != fp32.version.version_id
    assert lossy.version.params["backend"] == "openvino-int8"  # the catalog records it
    assert lossy.version.params_hash != fp32.version.params_hash
    _, fp32_vectors = store.read_embeddings(fp32.version)
    _, int8_vectors = store.read_embeddings(lossy.version)
    cosines = row_cosines(int8_vectors, fp32_vectors)
    assert cosines.min() > 0.97 and cosines.max() < 0.99999  # near, yet not the same vectors

    # Back to an exact backend (PyTorch this time): the fp32 vectors are reused, not re-encoded.
    again = write(replace(exact, backend="torch"), "docs", docs)
    assert again.version.version_id == fp32.version.version_id and again.encoded_rows == 0
    shared = write(replace(exact, backend="torch"), "more", more)
    assert (shared.reused_rows, shared.encoded_rows) == (8, 8)
    assert shared.version.params_hash == fp32.version.params_hash
    # ... and the int8 version reuses only int8 vectors.
    shared_int8 = write(int8, "more", more)
    assert (shared_int8.reused_rows, shared_int8.encoded_rows) == (8, 8)
    _, more_int8 = store.read_embeddings(shared_int8.version)
    np.testing.assert_array_equal(more_int8[:8], int8_vectors[16:24])


def test_a_lossy_backend_that_cannot_run_here_is_refused_not_replaced(backend_cache):
    """Its version must hold its own vectors: no quiet fallback to float32 PyTorch."""
    config = EncoderConfig(DEFAULT_MODEL_NAME, device="cpu", backend="torch-fp16")
    snapshot = EncoderConfig(DEFAULT_MODEL_NAME, device="cpu").resolve()
    with pytest.raises(ValueError, match="'torch-fp16' runs on a GPU only"):
        config.load(snapshot)
    done = run_python(f"""
        import sys
        sys.modules["nncf"] = None  # openvino-int8 cannot be built or checked without NNCF
        from embedding_core.snapshot import EncoderConfig
        config = EncoderConfig({DEFAULT_MODEL_NAME!r}, device="cpu", backend="openvino-int8")
        config.load(config.resolve())
        """, str(backend_cache))
    assert done.returncode != 0
    assert "RuntimeError: backend 'openvino-int8' could not run here" in done.stderr
    assert "refusing to write its version with vectors from 'torch'" in done.stderr
