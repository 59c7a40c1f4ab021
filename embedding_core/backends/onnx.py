"""ONNX Runtime encoder for the Transformer module: export once, cache, run on CPU.

The Hugging Face encoder is exported with PyTorch's exporter (attention in its plain
"eager" form, which ONNX Runtime's BERT optimizer recognises), its attention, LayerNorm,
residual adds and GELU are fused into single kernels, and for ``onnx-int8`` its matrix
products are quantized dynamically (int8 weights per output channel, activations per
batch). Nothing is downloaded: the graph is built from the weights already loaded.

The result is cached under ``<cache>/onnx/<model key>/<backend>.onnx``: the key is the
model's revision plus a hash of its config and weights, and of the versions of torch,
transformers and onnxruntime, so a changed model or toolchain builds a new file and
never reuses a stale one. ``<cache>`` is ``EMBEDDING_CORE_CACHE``, else
``~/.cache/embedding_core``. Files appear under their final name only when complete.

Before it is used, a freshly loaded graph is checked against the PyTorch encoder on a
probe batch; a graph that cannot be built or that disagrees raises ``OnnxBackendError``
and the caller falls back to PyTorch.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from embedding_core.backends.common import (
    BackendError,
    EncoderOutput,
    OneBatchAtATime,
    cache_root,
    int64_feeds,
    probe_cosine,
    quiet_transformers,
)
from embedding_core.backends.common import model_key as _model_key
from embedding_core.fs import writing

logger = logging.getLogger(__name__)

_OPSET = 17
# Bump when the build steps below change, so cached graphs are rebuilt.
_RECIPE = 2
# ONNX Runtime's fused SkipLayerNormalization CPU kernel measured ~6x slower than a plain
# Add + LayerNormalization here (19% of int8 encode time vs 3%), so that fusion stays off.
_DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]
# Model types whose attention ONNX Runtime's BERT optimizer fuses.
_BERT_LIKE = {"bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "mpnet"}
# How close the probe batch's token embeddings must be to PyTorch's (mean per-token cosine).
_MIN_PROBE_COSINE = {"onnx": 0.99999, "onnx-int8": 0.95}


class OnnxBackendError(BackendError):
    """The model could not be run through ONNX Runtime (export, optimization or check failed)."""


class OnnxEncoder(OneBatchAtATime):
    """Runs ``input_ids`` + ``attention_mask`` through an ONNX Runtime session on CPU.

    Returns the last hidden state as a float32 CPU tensor, like the PyTorch encoder's
    ``last_hidden_state``.
    """

    def __init__(self, path: str | os.PathLike, backend: str, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.path = str(path)
        self.backend = backend
        self.session = ort.InferenceSession(
            self.path,
            options,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=_DISABLED_OPTIMIZERS,
        )
        self.input_names = {item.name for item in self.session.get_inputs()}

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        (hidden,) = self.session.run(["last_hidden_state"], int64_feeds(input_ids, attention_mask))
        return torch.from_numpy(hidden)


def model_key(auto_model: nn.Module, revision: str | None) -> str:
    """Folder name for a model's graphs: readable revision prefix + hash of weights and tools."""
    import onnxruntime

    return _model_key(
        auto_model, revision, f"onnxruntime {onnxruntime.__version__}|{_OPSET}|{_RECIPE}"
    )


def load_onnx_encoder(
    auto_model: nn.Module,
    backend: str,
    revision: str | None = None,
    cache_folder: str | os.PathLike | None = None,
    threads: int | None = None,
) -> OnnxEncoder:
    """Build (or reuse from the cache) the ``backend`` graph of ``auto_model`` and load it.

    Raises ``OnnxBackendError`` when onnxruntime/onnx are missing, the export fails, or
    the graph's output disagrees with PyTorch's on a probe batch.
    """
    if backend not in _MIN_PROBE_COSINE:
        raise ValueError(
            f"Unknown ONNX backend {backend!r}; expected one of {list(_MIN_PROBE_COSINE)}."
        )
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise OnnxBackendError(
            f"backend={backend!r} needs onnxruntime and onnx: pip install 'embedding-pipeline[fast]' ({error})"
        ) from error
    folder = Path(cache_folder) if cache_folder else cache_root() / "onnx"
    folder = folder / model_key(auto_model, revision)
    path = folder / f"{backend}.onnx"
    if not path.exists():
        try:
            _build(auto_model, backend, path)
        except OnnxBackendError:
            raise
        except Exception as error:  # the exporter and optimizer raise many kinds of errors
            raise OnnxBackendError(
                f"Could not build the {backend} graph: {type(error).__name__}: {error}"
            ) from error
    encoder = OnnxEncoder(path, backend, threads)
    _check_against_torch(encoder, auto_model, backend)
    return encoder


def _build(auto_model: nn.Module, backend: str, path: Path) -> None:
    """Export -> fuse -> (quantize) into a temporary folder, then rename into place."""
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".build-") as scratch:
            exported = Path(scratch) / "exported.onnx"
            _export(auto_model, exported)
            fused = Path(scratch) / "fused.onnx"
            _fuse(auto_model, exported, fused)
            final = fused
            if backend == "onnx-int8":
                final = Path(scratch) / "int8.onnx"
                _quantize(fused, final)
            with open(final, "rb") as fh:
                os.fsync(fh.fileno())
            # Same filesystem, so the rename is atomic: readers see no file or a whole one.
            os.replace(final, path)
    logger.info("Built the %s graph at %s", backend, path)


def _export(auto_model: nn.Module, path: Path) -> None:
    config = auto_model.config
    previous = getattr(config, "_attn_implementation", None)
    # Plain matmul-softmax-matmul attention is the pattern the BERT fusion recognises.
    auto_model.set_attn_implementation("eager")
    try:
        vocab = int(getattr(config, "vocab_size", 1000))
        input_ids = torch.randint(5, max(6, min(vocab, 1000)), (2, 16), dtype=torch.long)
        attention_mask = torch.ones_like(input_ids)
        attention_mask[1, 10:] = 0
        # The TorchScript exporter is deprecated in torch 2.9+ and tracing warns about
        # transformers' control flow; the check against PyTorch decides, so keep quiet.
        with torch.no_grad(), warnings.catch_warnings(), quiet_transformers():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                EncoderOutput(auto_model).eval(),
                (input_ids, attention_mask),
                str(path),
                input_names=["input_ids", "attention_mask"],
                output_names=["last_hidden_state"],
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "sequence"},
                    "attention_mask": {0: "batch", 1: "sequence"},
                    "last_hidden_state": {0: "batch", 1: "sequence"},
                },
                opset_version=_OPSET,
                dynamo=False,
            )
    finally:
        if previous is not None:
            auto_model.set_attn_implementation(previous)


def _fuse(auto_model: nn.Module, source: Path, target: Path) -> None:
    config = auto_model.config
    if getattr(config, "model_type", "") not in _BERT_LIKE:
        # ONNX Runtime still fuses LayerNorm and GELU itself when the session loads.
        shutil.copyfile(source, target)
        return
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_skip_layer_norm = False
    optimized = optimize_model(
        str(source),
        model_type="bert",
        num_heads=int(config.num_attention_heads),
        hidden_size=int(config.hidden_size),
        optimization_options=options,
        opt_level=0,
    )
    optimized.save_model_to_file(str(target))


def _quantize(source: Path, target: Path) -> None:
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source),
        str(target),
        op_types_to_quantize=["MatMul", "Attention"],
        per_channel=True,
        weight_type=QuantType.QInt8,
        # The fused ops come from onnxruntime's own domain, which shape inference cannot type.
        extra_options={"DefaultTensorType": TensorProto.FLOAT},
    )


def _check_against_torch(encoder: OnnxEncoder, auto_model: nn.Module, backend: str) -> None:
    """Token embeddings of a padded probe batch must agree with PyTorch's."""
    cosine = probe_cosine(encoder, auto_model)
    if not cosine >= _MIN_PROBE_COSINE[backend]:
        raise OnnxBackendError(
            f"The {backend} graph at {encoder.path} disagrees with PyTorch on a probe batch "
            f"(mean token cosine {cosine:.6f} < {_MIN_PROBE_COSINE[backend]})."
        )
