"""Inference backends for the frozen networks: torch (CUDA fp16 / CPU), OpenVINO, ONNX Runtime.

    runner = DenseMapRunner(aliked.model, backend="auto")   # ALIKED dense maps
    layers = LayerRunner(lightglue.net, backend="auto")      # LightGlue transformer layers
"""

from .aliked_runtime import DenseMapRunner
from .backends import BACKENDS, cache_dir, resolve_backend
from .lightglue_runtime import LayerRunner

__all__ = ["BACKENDS", "DenseMapRunner", "LayerRunner", "cache_dir", "resolve_backend"]
