"""Scalar (int8/uint8) and binary (binary/ubinary) quantization of embeddings."""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch

logger = logging.getLogger(__name__)

Precision = Literal["float32", "int8", "uint8", "binary", "ubinary"]
PRECISIONS: tuple[str, ...] = ("float32", "int8", "uint8", "binary", "ubinary")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; expected one of {list(PRECISIONS)}.")


def quantization_ranges(calibration_embeddings: np.ndarray) -> np.ndarray:
    """Per-dimension ``[min, max]`` (shape ``[2, dim]``) of a representative set of embeddings."""
    calibration = np.asarray(calibration_embeddings, dtype=np.float32)
    if calibration.ndim != 2 or calibration.shape[0] < 2:
        raise ValueError(
            "int8/uint8 ranges need at least two embeddings to calibrate from; pass `ranges` or "
            "`calibration_embeddings` computed over a representative set."
        )
    if calibration.shape[0] < 100:
        logger.warning("Calibrating int8/uint8 buckets on only %d embeddings.", calibration.shape[0])
    return np.vstack((calibration.min(axis=0), calibration.max(axis=0)))


def quantize_embeddings(
    embeddings: np.ndarray | torch.Tensor | list,
    precision: Precision,
    ranges: np.ndarray | None = None,
    calibration_embeddings: np.ndarray | None = None,
) -> np.ndarray | list[np.ndarray]:
    """Quantize float embeddings (a list of per-text token matrices: a list, one entry each).

    * ``int8`` / ``uint8``: each dimension's ``[min, max]`` (from ``ranges``, else from
      ``calibration_embeddings``, else from ``embeddings`` themselves) is cut into 256
      buckets.
    * ``binary`` / ``ubinary``: one bit per dimension (value > 0), packed 8 to a byte, so a
      ``dim``-wide vector becomes ``ceil(dim / 8)`` bytes; ``binary`` is offset by -128 to int8.

    Example::

        >>> q = quantize_embeddings(np.array([[0.5, -1.0], [1.0, 0.0]]), "ubinary")
        >>> q.tolist()
        [[128], [128]]
    """
    check_precision(precision)
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().to("cpu", torch.float32).numpy()
    elif isinstance(embeddings, list):
        if not embeddings:
            return []
        rows = [e.detach().cpu().float().numpy() if isinstance(e, torch.Tensor) else np.asarray(e) for e in embeddings]
        if rows[0].ndim == 2:
            # Per-text token matrices of unequal lengths: one list entry each, shared buckets.
            return quantize_token_embeddings(rows, precision, ranges, calibration_embeddings)
        embeddings = np.stack(rows)
    embeddings = np.asarray(embeddings)
    if embeddings.dtype in (np.int8, np.uint8):
        raise TypeError("Embeddings to quantize must be floats, not already-quantized int8/uint8 values.")
    single = embeddings.ndim == 1
    matrix = embeddings.reshape(1, -1) if single else embeddings
    dim = matrix.shape[1] if matrix.ndim == 2 else 0

    if precision == "float32":
        result = matrix.astype(np.float32)
    elif precision in ("binary", "ubinary"):
        packed = np.packbits(matrix > 0, axis=-1)
        result = (packed.astype(np.int16) - 128).astype(np.int8) if precision == "binary" else packed
    elif matrix.shape[0] == 0:
        result = np.zeros((0, dim), dtype=np.int8 if precision == "int8" else np.uint8)
    else:
        if ranges is None:
            if calibration_embeddings is None and single:
                raise ValueError(
                    f"Cannot calibrate {precision} buckets from a single embedding; pass `ranges` or "
                    "`calibration_embeddings`."
                )
            ranges = quantization_ranges(matrix if calibration_embeddings is None else calibration_embeddings)
        ranges = np.asarray(ranges, dtype=np.float32)
        if ranges.shape != (2, dim):
            raise ValueError(f"ranges must have shape (2, {dim}), got {ranges.shape}.")
        starts = ranges[0]
        steps = (ranges[1] - starts) / 255
        steps = np.where(steps == 0, 1, steps)
        buckets = np.clip(np.floor((matrix - starts) / steps), 0, 255)
        result = buckets.astype(np.uint8) if precision == "uint8" else (buckets - 128).astype(np.int8)
    return result[0] if single else result


def quantize_token_embeddings(
    matrices: list,
    precision: Precision,
    ranges: np.ndarray | None = None,
    calibration_embeddings: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Quantize per-text token matrices (``(tokens, dim)`` each) with buckets shared by all of
    them: ``ranges``, else calibrated over ``calibration_embeddings``, else over every token of
    the call, as sentence-transformers does."""
    check_precision(precision)
    arrays = [m.detach().to("cpu", torch.float32).numpy() if isinstance(m, torch.Tensor) else np.asarray(m)
              for m in matrices]
    if not arrays:
        return []
    if precision in ("int8", "uint8") and ranges is None:
        calibration = np.concatenate(arrays, axis=0) if calibration_embeddings is None else calibration_embeddings
        ranges = quantization_ranges(calibration)
    return [quantize_embeddings(matrix, precision, ranges=ranges) for matrix in arrays]
