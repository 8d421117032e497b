"""ALIKED's backbone and dense map on torch, OpenVINO or ONNX Runtime.

Only the image-sized networks leave torch: they are where the time goes (one per pyramid level for
octave-aware description) and they export with dynamic height and width. The SDDH head that samples
descriptors at keypoints stays in torch: exported with a variable keypoint count it silently fixes the
count. `BackboneRunner` serves description at given keypoints (`features.aliked_sparse`),
`DenseMapRunner` ALIKED's own detection (it needs the full-resolution score map).
"""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path

import torch
from kornia.feature import ALIKED

from ..conf import merge_conf
from ..features.aliked_sparse import AlikedBackbone, size_max
from .backends import (
    AUTO_ORDER,
    compile_module,
    default_runtime_conf,
    export_onnx,
    to_numpy,
)

# kornia modules whose forward calls Python's max() on image sizes
_SIZE_MAX_MODULES = ("kornia.feature.aliked.aliked", "kornia.feature.aliked.deform_conv2d")


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
        module.max = size_max  # module globals shadow the builtin
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


class _AlikedGraphRunner:
    """One ALIKED sub-network on the chosen backend, exported from the model's own (local) weights with
    dynamic batch, height and width, so one export serves every pyramid level and camera."""

    default_conf = {
        **default_runtime_conf,
        "export_size": (480, 640),  # (H, W) of the example image the graph is traced with
    }
    suffix = ""  # graph family in the cache: <model name>-<suffix>
    outputs: tuple[str, ...] = ()
    auto_order: tuple[str, ...] = AUTO_ORDER  # what backend 'auto' runs on CPU, first usable wins

    def __init__(self, model: ALIKED, **conf) -> None:
        self.conf = merge_conf(self.default_conf, conf, f"{type(self).__name__} options")
        self.model = model
        self.net = self.module()  # the torch module (run in torch, exported for the runtimes)
        self.backend, graphs = compile_module(f"{model.model_name}-{self.suffix}", model, [self.suffix],
                                              self._export, self.conf, self.auto_order)
        self.graph = graphs[0] if graphs else None

    def module(self) -> torch.nn.Module:
        raise NotImplementedError

    def _export(self, folder: Path) -> None:
        h, w = self.conf["export_size"]
        axes = {0: "batch", 2: "height", 3: "width"}
        with traceable_size_max():
            export_onnx(self.net, (torch.rand(1, 3, h, w),), folder / f"{self.suffix}.onnx", ["images"],
                        list(self.outputs), {name: axes for name in ("images", *self.outputs)})

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The sub-network's outputs for [B x 3 x H x W] float RGB in [0, 1] on the model's device: on the
        model's device and dtype for torch, float32 CPU tensors for the runtimes."""
        if self.graph is None:
            return self.net(images)
        return tuple(torch.from_numpy(x) for x in self.graph(to_numpy(images)))


class DenseMapRunner(_AlikedGraphRunner):
    """ALIKED's `extract_dense_map` (any H, W): features [B x D x H x W] L2-normalised (D = 128 for
    aliked-n16) and scores [B x 1 x H x W] in (0, 1). Needed for ALIKED's own detection; descriptors at
    given keypoints only need the backbone (`BackboneRunner`)."""

    suffix, outputs = "dense", ("features", "scores")

    def module(self) -> torch.nn.Module:
        return _DenseMap(self.model)


class BackboneRunner(_AlikedGraphRunner):
    """ALIKED's backbone without upsampling and score head (`features.aliked_sparse.AlikedBackbone`) on
    [B x 3 x Hp x Wp] images padded to multiples of 32: (x1, x2, x3, x4) at 1, 1/2, 1/8 and 1/32 resolution."""

    suffix, outputs = "backbone", ("x1", "x2", "x3", "x4")
    # measured on a 2-core x86-64 CPU, 640x480, idle, 2 threads: torch 81 ms, ONNX Runtime 130, OpenVINO 141; a whole
    # 8-level description with 1 thread and one core busy elsewhere: torch 570 ms, ONNX Runtime 810, OpenVINO 870.
    auto_order = ("torch",)

    def module(self) -> torch.nn.Module:
        return AlikedBackbone(self.model)
