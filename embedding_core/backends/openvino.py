"""OpenVINO encoder for the Transformer module: convert once, cache, run on CPU.

Three backends share one converted graph (PyTorch -> OpenVINO IR with ``ov.convert_model``,
from the weights already loaded; nothing is downloaded):

- ``openvino``: float32 end to end. Same vectors as PyTorch (row cosine >= 0.99999).
- ``openvino-bf16``: the float32 graph run with bfloat16 matrix products, on CPUs with
  native bf16 (AVX512-BF16 or AMX). Row cosine ~0.99996 against float32.
- ``openvino-int8``: the graph statically quantized by NNCF: every matrix product of the
  encoder, attention's included, runs in int8 (VNNI), with activation ranges calibrated
  once on ``embedding_core/data/calibration_texts.jsonl`` (real text held out from the
  benchmark corpora); what stays in floating point runs in bf16 where the CPU has it.

IRs are cached under ``<cache>/openvino/<model key>/<fp32|int8-...>/model.xml`` (see
``common.model_key``; the int8 folder name also hashes the calibration texts and the NNCF
version). Entries are built once under an inter-process lock and carry a manifest of file
sizes (``backends.cache``): a partial or truncated entry is rebuilt. A compiled graph is
checked against PyTorch on a probe batch before use; a cached one that fails to load or
fails the probe is rebuilt once, and a fresh one that fails raises ``OpenVinoBackendError``
(the caller falls back to PyTorch). Conversion warnings and NNCF's progress bars are
silenced (one log line each instead).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import logging
import os
import threading
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import embedding_core.backends.cache as cache
from embedding_core.backends.common import (
    BackendError,
    EncoderOutput,
    cache_root,
    int64_feeds,
    model_key,
    probe_agreement,
    probe_expected,
    quiet_transformers,
    source_key,
)

logger = logging.getLogger(__name__)

# Bump when the conversion or quantization steps change, so cached IRs are rebuilt.
# 2: the fp32 entry keeps PyTorch's output on the probe batch (``probe.npz``).
_RECIPE = 2
PROBE_FILE = "probe.npz"
CALIBRATION_FILE = Path(__file__).resolve().parent.parent / "data" / "calibration_texts.jsonl"
# Calibration batches: texts per batch (padded to the longest of each batch).
_CALIBRATION_BATCH = 8
# Compiled kernels kept per input shape (OpenVINO's default is 5000): every (batch, length)
# pair is a new shape, and a long run over varied text grew RSS by ~50 MB per 5000 texts
# with the default; 100 measured as fast and flat (docs/performance.md).
_RUNTIME_CACHE_CAPACITY = 100
# How close the probe batch's token embeddings must be to PyTorch's (mean per-token cosine).
_MIN_PROBE_COSINE = {"openvino": 0.99999, "openvino-bf16": 0.999, "openvino-int8": 0.95}


class OpenVinoBackendError(BackendError):
    """The model could not be run through OpenVINO (conversion, quantization or check failed)."""


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin reports native bfloat16 on this machine."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoEncoder:
    """Runs ``input_ids`` + ``attention_mask`` through a compiled OpenVINO model on CPU.

    Calls return the last hidden state as a float32 CPU tensor that the caller owns; each
    thread gets its own infer requests. The model is compiled for throughput: the cores are
    split into OpenVINO "streams" (on 2 cores: 2 streams of 1 thread), and ``imap`` keeps
    one batch per stream in flight, so the cores stay busy between small batches and while
    Python pads and pools. A single call (or a lone batch in ``imap``) is split over the
    streams, so a small encode uses every core too.
    """

    def __init__(self, path: str | os.PathLike, backend: str, threads: int | None = None) -> None:
        import openvino as ov

        self.path = str(path)
        self.backend = backend
        bf16 = backend != "openvino" and cpu_has_bf16()
        if backend == "openvino-bf16" and not bf16:
            raise OpenVinoBackendError(
                "backend='openvino-bf16' needs a CPU with native bf16 (AVX512-BF16 or AMX)"
            )
        self.precision = "bf16" if bf16 else "f32"
        self.threads = int(threads or torch.get_num_threads())
        self.config = config = {
            "INFERENCE_PRECISION_HINT": self.precision,
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "THROUGHPUT",
            "CPU_RUNTIME_CACHE_CAPACITY": _RUNTIME_CACHE_CAPACITY,
        }
        self.compiled = ov.Core().compile_model(self.path, "CPU", config)
        self.streams = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._local = threading.local()
        self._lock = threading.Lock()
        self._latency: Any = None

    def _requests(self) -> list:
        """This thread's infer requests: one per stream, and at least two, so that with one
        stream (a pool worker's single thread) the next batch waits queued while Python pools
        the last one, instead of the core idling between them."""
        requests = getattr(self._local, "requests", None)
        if requests is None:
            count = max(2, self.streams)
            requests = self._local.requests = [self.compiled.create_infer_request() for _ in range(count)]
        return requests

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One batch on all the cores: its rows split over the streams, a single row through
        a latency-compiled copy of the model (built on first need)."""
        rows = int(input_ids.shape[0])
        parts = min(self.streams, rows)
        if parts <= 1:
            request = self._single_request() if self.streams > 1 else self._requests()[0]
            result = request.infer(int64_feeds(input_ids, attention_mask), share_inputs=True, share_outputs=False)
            return torch.from_numpy(result[0])
        started = []
        for request, ids, mask in zip(self._requests()[:parts], input_ids.tensor_split(parts), attention_mask.tensor_split(parts)):
            feeds = int64_feeds(ids, mask)
            request.start_async(feeds, share_inputs=True)
            started.append((request, feeds))  # keeps the shared inputs alive until done
        outputs = []
        for request, _feeds in started:
            request.wait()
            outputs.append(torch.from_numpy(request.get_output_tensor(0).data.copy()))
        return torch.cat(outputs)

    def _single_request(self):
        """This thread's infer request on the model compiled for latency (one stream, all threads)."""
        request = getattr(self._local, "single", None)
        if request is None:
            with self._lock:
                if self._latency is None:
                    import openvino as ov

                    config = {**self.config, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
                    self._latency = ov.Core().compile_model(self.path, "CPU", config)
            request = self._local.single = self._latency.create_infer_request()
        return request

    def imap(self, items: Iterable[tuple[Any, torch.Tensor, torch.Tensor]]) -> Iterator[tuple[Any, torch.Tensor]]:
        """``(context, input_ids, attention_mask)`` -> ``(context, last hidden state)``, in order.

        Up to one batch per stream runs at a time; results come back in the order given. A
        lone batch is split over the streams instead (``__call__``).
        """
        items = iter(items)
        head = list(itertools.islice(items, 2))
        if len(head) == 1:
            context, input_ids, attention_mask = head[0]
            yield context, self(input_ids, attention_mask)
            return
        items = itertools.chain(head, items)
        free = list(self._requests())
        pending: deque = deque()

        def collect():
            request, context, _feeds = pending.popleft()
            request.wait()
            hidden = torch.from_numpy(request.get_output_tensor(0).data.copy())
            free.append(request)
            return context, hidden

        try:
            for context, input_ids, attention_mask in items:
                if not free:
                    yield collect()
                request = free.pop()
                feeds = int64_feeds(input_ids, attention_mask)
                # The inputs are shared, not copied: ``pending`` keeps them alive until done.
                request.start_async(feeds, share_inputs=True)
                pending.append((request, context, feeds))
            while pending:
                yield collect()
        finally:
            for request, _context, _feeds in pending:  # abandoned early: let them finish
                request.wait()


def load_openvino_encoder(
    transformer: Any,
    backend: str,
    revision: str | None = None,
    cache_folder: str | os.PathLike | None = None,
    threads: int | None = None,
    calibration_texts: Sequence[str] | None = None,
) -> OpenVinoEncoder:
    """Build (or reuse from the cache) the IR ``backend`` needs for ``transformer`` and compile it.

    ``transformer`` is the ``modules.Transformer`` (its tokenizer prepares the calibration
    batches of ``openvino-int8``; ``calibration_texts`` replaces the bundled ones, e.g. a
    sample of the corpus about to be encoded). Raises ``OpenVinoBackendError`` when
    openvino (or nncf, for int8) is missing, the build fails, or the compiled graph
    disagrees with PyTorch on a probe batch.
    """
    if backend not in _MIN_PROBE_COSINE:
        raise ValueError(f"Unknown OpenVINO backend {backend!r}; expected one of {list(_MIN_PROBE_COSINE)}.")
    try:
        import openvino

        if backend == "openvino-int8":
            import nncf
    except ImportError as error:
        raise OpenVinoBackendError(
            f"backend={backend!r} needs openvino (and nncf for int8): "
            f"pip install 'embedding-pipeline[openvino]' ({error})"
        ) from error
    toolchain = f"openvino {openvino.__version__}|{_RECIPE}"
    if revision and not getattr(transformer, "torch_loaded", True):
        # Loaded from an immutable revision and not touched since: the revision names the
        # weights, so a cached graph is found without loading the PyTorch model at all.
        key = source_key(transformer.auto_config, transformer.model_kwargs, revision, toolchain)
    else:
        key = model_key(transformer.auto_model, revision, toolchain)
    folder = (Path(cache_folder) if cache_folder else cache_root() / "openvino") / key
    int8_texts: list[str] = []
    if backend == "openvino-int8":
        int8_texts = list(calibration_texts) if calibration_texts is not None else bundled_calibration_texts()
        if not int8_texts:
            raise OpenVinoBackendError("calibration_texts is empty")
    if backend == "openvino-bf16" and not cpu_has_bf16():
        raise OpenVinoBackendError("backend='openvino-bf16' needs a CPU with native bf16 (AVX512-BF16 or AMX)")
    fp32 = folder / "fp32"
    for attempt in (1, 2):
        fresh: list[Path] = []
        path = fp32
        try:
            # Building needs the PyTorch model (``transformer.auto_model`` loads it on first use).
            if cache.ensure(fp32, lambda target: _convert(transformer.auto_model, target), "OpenVINO fp32 model"):
                fresh.append(fp32)
            if backend == "openvino-int8":
                digest = hashlib.sha256(json.dumps([nncf.__version__, transformer.max_seq_length, int8_texts]).encode())
                path = folder / f"int8-{digest.hexdigest()[:12]}"
                if cache.ensure(path, lambda target: _quantize(fp32 / "model.xml", transformer, int8_texts,
                                                               target / "model.xml"), "OpenVINO int8 model"):
                    fresh.append(path)
            return _compiled_and_checked(path / "model.xml", backend, threads, fp32 / PROBE_FILE)
        except Exception as error:  # the converter, NNCF and the plugin raise many kinds of errors
            if attempt == 1 and fp32 not in fresh:
                # Cached files that will not load, quantize or pass the probe are damaged
                # (the manifest checks sizes only): build them again, once.
                logger.warning("The cached OpenVINO model at %s failed (%s: %s); rebuilding it.",
                               path, type(error).__name__, error)
                if path != fp32:
                    cache.discard(path)
                cache.discard(fp32)
                continue
            if isinstance(error, OpenVinoBackendError):
                raise
            raise OpenVinoBackendError(
                f"Could not build the {backend} model: {type(error).__name__}: {error}") from error
    raise AssertionError("unreachable")


def _compiled_and_checked(path: Path, backend: str, threads: int | None, probe: Path) -> OpenVinoEncoder:
    """The compiled model at ``path``, if it agrees with PyTorch on the probe batch (PyTorch's
    output was recorded in ``probe`` when the fp32 graph was built from the same weights)."""
    encoder = OpenVinoEncoder(path, backend, threads)
    with np.load(probe) as recorded:
        cosine = probe_agreement(encoder, *(torch.from_numpy(recorded[name])
                                            for name in ("input_ids", "attention_mask", "expected")))
    if not cosine >= _MIN_PROBE_COSINE[backend]:
        raise OpenVinoBackendError(
            f"The {backend} model at {encoder.path} disagrees with PyTorch on a probe batch "
            f"(mean token cosine {cosine:.6f} < {_MIN_PROBE_COSINE[backend]})."
        )
    return encoder


def bundled_calibration_texts() -> list[str]:
    with open(CALIBRATION_FILE, encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh if line.strip()]


def _convert(auto_model: nn.Module, folder: Path) -> None:
    """``folder``/model.xml (+ .bin): the fp32 graph; ``folder``/probe.npz: PyTorch's output
    on the probe batch, which every later load of this entry (or its int8 copy) is checked
    against."""
    import openvino as ov

    target = folder / "model.xml"
    input_ids, attention_mask, expected = probe_expected(auto_model)
    np.savez(folder / PROBE_FILE, input_ids=input_ids.numpy(), attention_mask=attention_mask.numpy(),
             expected=expected.float().numpy())

    vocab = int(getattr(auto_model.config, "vocab_size", 1000))
    input_ids = torch.randint(5, max(6, min(vocab, 1000)), (2, 16), dtype=torch.long)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 10:] = 0
    # Tracing warns about Python control flow in transformers' masking code and about
    # deprecated torch.jit APIs; the probe check against PyTorch is what decides.
    with torch.no_grad(), warnings.catch_warnings(), quiet_transformers():
        warnings.simplefilter("ignore")
        converted = ov.convert_model(
            EncoderOutput(auto_model).eval(),
            example_input=(input_ids, attention_mask),
            input=[("input_ids", [-1, -1], ov.Type.i64), ("attention_mask", [-1, -1], ov.Type.i64)],
        )
    ov.save_model(converted, str(target), compress_to_fp16=False)


def _quantize(source: Path, transformer: Any, texts: list[str], target: Path) -> None:
    import nncf
    import openvino as ov

    tokenizer = transformer.tokenizer
    batches = []
    for start in range(0, len(texts), _CALIBRATION_BATCH):
        encoded = tokenizer(
            texts[start : start + _CALIBRATION_BATCH],
            truncation=True,
            max_length=transformer.max_seq_length,
            padding=True,
            return_tensors="np",
        )
        batches.append({name: encoded[name].astype(np.int64) for name in ("input_ids", "attention_mask")})
    nncf_logger = logging.getLogger("nncf")
    level = nncf_logger.level
    nncf_logger.setLevel(logging.WARNING)
    # NNCF draws progress bars (rich) on stdout; one log line says what happens instead.
    logger.info("Quantizing %s to int8 with NNCF on %d calibration texts", source, len(texts))
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            quantized = nncf.quantize(
                ov.Core().read_model(str(source)),
                nncf.Dataset(batches),
                model_type=nncf.ModelType.TRANSFORMER,
                subset_size=len(batches),
            )
    finally:
        nncf_logger.setLevel(level)
    ov.save_model(quantized, str(target), compress_to_fp16=False)
