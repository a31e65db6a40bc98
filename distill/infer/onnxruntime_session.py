"""onnxruntime sessions: create one (threads, providers) and run it on a batch.

Owned here, in the runtime, because the onnxruntime backend runs packages with it; the
export's parity gate and INT8 calibration (:mod:`distill.export`) use the same two functions,
so what the gate measured is what a predictor runs. ``onnxruntime`` is imported only when a
session is made, so importing this module needs neither onnxruntime nor onnx.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distill.package import INPUT_NAME, OUTPUT_NAME


def onnxruntime_session(
    data: bytes | str | Path, threads: int | None = None, providers: Sequence[Any] = ("CPUExecutionProvider",)
):
    """An onnxruntime session with all graph optimisations and ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    source = data if isinstance(data, bytes) else str(data)
    return ort.InferenceSession(source, options, providers=list(providers))


def run_onnxruntime(session, images: np.ndarray) -> np.ndarray:
    """Logits ``(B, K, *S)`` float32 from a session for images ``(B, C, *S)``."""
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)})[0]


__all__ = ["onnxruntime_session", "run_onnxruntime"]
