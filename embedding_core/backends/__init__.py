"""Runtimes that can stand in for the Transformer's PyTorch encoder on CPU.

``SentenceTransformer(..., backend=...)`` picks one:

- ``"torch"`` (default): the Hugging Face model in PyTorch, float32, any device.
- ``"onnx"``: the same float32 weights through ONNX Runtime with fused attention,
  LayerNorm and GELU kernels; vectors match the torch path (row cosine >= 0.99999).
- ``"onnx-int8"``: the fused graph with its projections dynamically quantized to int8.
- ``"openvino"``: the float32 weights through OpenVINO; same vectors (row cosine >= 0.99999),
  the fastest exact path on CPU.
- ``"openvino-bf16"``: the same graph with bf16 matrix products, on CPUs with native bf16;
  row cosine ~0.99996.
- ``"openvino-int8"``: statically quantized int8 (attention included), calibrated once on
  bundled text; the fastest path, at a small measured cost in accuracy.

See docs/performance.md for the measured speed and accuracy of each. OpenVINO is a core
dependency; ``openvino-int8`` also needs NNCF (``pip install 'embedding-pipeline[openvino]'``)
to quantize, and the ONNX backends ``pip install 'embedding-pipeline[fast]'``.

Pipelines (``snapshot.EncoderConfig``) also take ``"auto"`` (``resolve_backend``) and
``"torch-fp16"`` / ``"torch-bf16"`` (the model cast to half precision, for GPUs); the
``LOSSY_BACKENDS`` enter the embedding parameters, so their vectors form their own version.
"""

from __future__ import annotations

import logging
from typing import Any

from embedding_core.backends.common import BackendError, Runtime

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8", "openvino", "openvino-bf16", "openvino-int8")
# What a pipeline (``EncoderConfig.backend``) may ask for: ``BACKENDS``, ``"auto"``, and the
# PyTorch model cast to half precision (GPU only: CPU half-precision matmuls are slow).
PIPELINE_BACKENDS = ("auto", *BACKENDS, "torch-fp16", "torch-bf16")
# Backends whose vectors differ from float32 PyTorch's by more than rounding (row cosine
# < 0.99999): they make their own embedding version. The others are exact and share one.
LOSSY_BACKENDS = ("onnx-int8", "openvino-bf16", "openvino-int8", "torch-fp16", "torch-bf16")

__all__ = ["BACKENDS", "LOSSY_BACKENDS", "PIPELINE_BACKENDS", "BackendError", "Runtime", "check_backend",
           "load_runtime", "resolve_backend", "runs_on"]


def check_backend(backend: str) -> str:
    """``backend`` if it is known, else a ``ValueError`` that lists the known ones."""
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; expected one of {list(BACKENDS)}.")
    return backend


def resolve_backend(backend: str, device: str | None = None) -> str:
    """The backend ``backend`` names for a model on ``device`` (``None``: CUDA if available).

    ``"auto"`` is the fastest exact one: PyTorch on CUDA (or MPS), OpenVINO float32 on CPU
    when ``openvino`` imports, else PyTorch. Any other name in ``PIPELINE_BACKENDS`` is
    returned as is; an unknown name raises ``ValueError`` listing the known ones.
    """
    if backend not in PIPELINE_BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; expected one of {list(PIPELINE_BACKENDS)}.")
    if backend != "auto":
        return backend
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not str(device).startswith("cpu"):
        return "torch"
    try:
        import openvino  # noqa: F401
    except ImportError:
        logger.info("openvino is not installed; backend='auto' uses PyTorch on CPU.")
        return "torch"
    return "openvino"


def runs_on(backend: str, device: Any) -> bool:
    """Whether ``backend`` can serve a model on ``device``; warns when it cannot."""
    if backend == "torch" or str(device).startswith("cpu"):
        return True
    logger.warning("backend=%r runs on CPU only; the model is on %s, so PyTorch is used.", backend, device)
    return False


def load_runtime(transformer: Any, backend: str, revision: str | None = None) -> tuple[Runtime | None, str]:
    """The runtime ``backend`` asks for to stand in for ``transformer``'s PyTorch encoder,
    and the backend in effect.

    The ONNX and OpenVINO backends run on CPU only: on another device, or when the graph
    cannot be built or fails its check against PyTorch, a warning is logged and PyTorch
    stays in charge (``(None, "torch")``).
    """
    check_backend(backend)
    # ``Transformer.device`` answers without loading a deferred PyTorch model.
    device = getattr(transformer, "device", None) or next(transformer.parameters()).device
    if backend == "torch" or not runs_on(backend, device):
        return None, "torch"
    try:
        if backend.startswith("openvino"):
            from embedding_core.backends import openvino

            return openvino.load_openvino_encoder(transformer, backend, revision=revision), backend
        from embedding_core.backends import onnx

        return onnx.load_onnx_encoder(transformer.auto_model, backend, revision=revision), backend
    except BackendError as error:
        logger.warning("%s; PyTorch is used instead.", error)
        return None, "torch"
