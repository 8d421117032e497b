"""ALIKED's dense map (backbone + score head) on torch, OpenVINO or ONNX Runtime.

Only the dense map leaves torch: it is where the time goes (8 maps per image for octave-aware
description) and it exports with dynamic height and width. The SDDH head that samples descriptors
at keypoints stays in torch: exported with a variable keypoint count it silently fixes the count.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
from pathlib import Path

import torch
from kornia.feature import ALIKED

from ..conf import merge_conf
from .backends import compile_module, default_runtime_conf, export_onnx, to_numpy

# kornia modules whose forward calls Python's max() on image sizes
_SIZE_MAX_MODULES = ("kornia.feature.aliked.aliked", "kornia.feature.aliked.deform_conv2d")


def _size_max(a, b):
    """max() that stays a graph op when a traced size is involved (plain max() otherwise)."""
    if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
        return builtins.max(a, b)
    if not isinstance(a, torch.Tensor):
        a, b = b, a
    return torch.maximum(a, b) if isinstance(b, torch.Tensor) else a.clamp(min=b)


@contextlib.contextmanager
def traceable_size_max():
    """Make kornia's ALIKED export correctly with dynamic height and width.

    Its deformable convolutions clamp offsets by `max(h, w) / 4` and sample indices by
    `max(H - 1, 0)`. Traced, Python's max() keeps the *branch* taken at the export size, so a
    graph exported from a landscape image computes the bound from the width on portrait images
    too (measured: 0.06 max error on the feature map instead of 6e-6). During export, max() in
    those modules is replaced by a graph op.
    """
    modules = [importlib.import_module(name) for name in _SIZE_MAX_MODULES]
    for module in modules:
        module.max = _size_max  # module globals shadow the builtin
    try:
        yield
    finally:
        for module in modules:
            del module.max


class _DenseMap(torch.nn.Module):
    def __init__(self, model: ALIKED) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.extract_dense_map(images)


class DenseMapRunner:
    """ALIKED's `extract_dense_map` on the chosen backend; a drop-in for `AlikedExtractor.dense_maps`.

    The graph is exported from the model's own (local) weights with dynamic batch, height and
    width, so one export serves every pyramid level and camera.
    """

    default_conf = {
        **default_runtime_conf,
        "export_size": (480, 640),  # (H, W) of the example image the graph is traced with
    }

    def __init__(self, model: ALIKED, **conf) -> None:
        self.conf = merge_conf(self.default_conf, conf, "DenseMapRunner options")
        self.model = model
        self.backend, graphs = compile_module(f"{model.model_name}-dense", model, ["dense"], self._export, self.conf)
        self.graph = graphs[0] if graphs else None

    def _export(self, folder: Path) -> None:
        h, w = self.conf["export_size"]
        axes = {0: "batch", 2: "height", 3: "width"}
        with traceable_size_max():
            export_onnx(_DenseMap(self.model), (torch.rand(1, 3, h, w),), folder / "dense.onnx",
                        ["images"], ["features", "scores"],
                        {"images": axes, "features": axes, "scores": axes})

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense maps of a batch of images.

        Args:
            images: [B x 3 x H x W] float RGB in [0, 1], on the model's device (any H, W).
        Returns:
            features: [B x D x H x W] L2-normalised feature map (D = 128 for aliked-n16).
            scores: [B x 1 x H x W] keypoint score map in (0, 1).
            On the model's device and dtype for torch, float32 CPU tensors for the runtimes.
        """
        if self.graph is None:
            return self.model.extract_dense_map(images)
        features, scores = self.graph(to_numpy(images))
        return torch.from_numpy(features), torch.from_numpy(scores)
