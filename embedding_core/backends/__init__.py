"""Runtimes that can stand in for the Transformer's PyTorch encoder on CPU.

``SentenceTransformer(..., backend=...)`` picks one:

- ``"torch"`` (default): the Hugging Face model in PyTorch, float32, any device.
- ``"onnx"``: the same float32 weights through ONNX Runtime with fused attention,
  LayerNorm and GELU kernels; vectors match the torch path (row cosine >= 0.99999).
- ``"onnx-int8"``: the fused graph with its matrix products dynamically quantized to int8.
  Several times faster on CPUs with VNNI, at a small, measured cost in accuracy
  (see docs/performance.md).

The ONNX backends need ``onnxruntime`` and ``onnx`` (``pip install embedding-pipeline[fast]``).
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8")


def check_backend(backend: str) -> str:
    """``backend`` if it is known, else a ``ValueError`` that lists the known ones."""
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; expected one of {list(BACKENDS)}.")
    return backend


def attach_backend(transformer: Any, backend: str, revision: str | None = None) -> str:
    """Give ``transformer`` the encoder ``backend`` asks for; returns the backend in effect.

    ONNX backends run on CPU only: on another device, or when the graph cannot be built or
    fails its check against PyTorch, a warning is logged and PyTorch stays in charge.
    """
    check_backend(backend)
    transformer.onnx_encoder = None
    if backend == "torch":
        return "torch"
    device = next(transformer.parameters()).device
    if device.type != "cpu":
        logger.warning("backend=%r runs on CPU only; the model is on %s, so PyTorch is used.", backend, device)
        return "torch"
    from embedding_core.backends.onnx import OnnxBackendError, load_onnx_encoder

    try:
        transformer.onnx_encoder = load_onnx_encoder(transformer.auto_model, backend, revision=revision)
    except OnnxBackendError as error:
        logger.warning("%s; PyTorch is used instead.", error)
        return "torch"
    return backend
