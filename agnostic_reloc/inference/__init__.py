"""Inference backends for the frozen networks: torch (CUDA fp16 / CPU), OpenVINO, ONNX Runtime.

    backbone = BackboneRunner(aliked.model, backend="auto")  # ALIKED backbone (description at keypoints)
    runner = DenseMapRunner(aliked.model, backend="auto")   # ALIKED dense maps (detection)
    layers = LayerRunner(lightglue.net, backend="auto")      # LightGlue transformer layers
"""

from .aliked_runtime import BackboneRunner, DenseMapRunner
from .backends import BACKENDS, cache_dir, resolve_backend
from .lightglue_runtime import LayerRunner

__all__ = ["BACKENDS", "BackboneRunner", "DenseMapRunner", "LayerRunner", "cache_dir", "resolve_backend"]
