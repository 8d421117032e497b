"""LightGlue's transformer layers on torch, OpenVINO or ONNX Runtime, one graph per layer.

Each layer (self-attention on both sets, then cross-attention) is its own graph with dynamic
point counts, and the matcher keeps its control flow in Python: adaptive depth (a confident pair
stops early), adaptive width (pruned points are dropped before the next layer), token
confidence, matchability and the final assignment stay in torch. The runtime therefore computes
exactly what torch computes, layer by layer, and the accelerated matcher keeps early exit; a
single exported 9-layer graph would always run every layer at full width.

The graphs take unmasked inputs: pairs matched one at a time (the CPU path, batch 1, where
`compact` drops pruned points) never need a mask. Padded batches (CUDA) stay in torch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from kornia.feature import LightGlue

from ..conf import merge_conf
from .backends import compile_module, default_runtime_conf, export_onnx, to_numpy


class _Layer(torch.nn.Module):
    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x0, x1, enc0, enc1):
        return self.layer(x0, x1, enc0, enc1)


class LayerRunner:
    """LightGlue's transformer layers on the chosen backend, called one layer at a time.

    Works with any weights loaded into `net` (official or fine-tuned): the graphs are exported
    from the module itself and cached under the hash of its weights.
    """

    default_conf = {
        **default_runtime_conf,
        "export_points": (384, 320),  # (M, N) point counts of the example the graphs are traced with
    }

    def __init__(self, net: LightGlue, **conf) -> None:
        self.conf = merge_conf(self.default_conf, conf, "LayerRunner options")
        self.net = net
        self.n_layers = len(net.transformers)
        stems = [f"layer{i}" for i in range(self.n_layers)]
        self.backend, self.graphs = compile_module(f"lightglue-h{net.conf.num_heads}-layers", net.transformers,
                                                   stems, self._export, self.conf)

    def _export(self, folder: Path) -> None:
        m, n = self.conf["export_points"]
        dim, heads = self.net.conf.descriptor_dim, self.net.conf.num_heads
        example = (torch.randn(1, m, dim), torch.randn(1, n, dim),
                   torch.randn(2, 1, 1, m, dim // heads), torch.randn(2, 1, 1, n, dim // heads))
        axes = {"x0": {0: "batch", 1: "m"}, "x1": {0: "batch", 1: "n"},
                "enc0": {1: "batch", 3: "m"}, "enc1": {1: "batch", 3: "n"},
                "y0": {0: "batch", 1: "m"}, "y1": {0: "batch", 1: "n"}}
        for i, layer in enumerate(self.net.transformers):
            export_onnx(_Layer(layer), example, folder / f"layer{i}.onnx",
                        ["x0", "x1", "enc0", "enc1"], ["y0", "y1"], axes)

    @torch.inference_mode()
    def __call__(self, layer: int, x0: torch.Tensor, x1: torch.Tensor,
                 enc0: torch.Tensor, enc1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One transformer layer on all points (no masks).

        Args:
            layer: layer index in [0, n_layers).
            x0, x1: [B x M x C], [B x N x C] point states (C = 256).
            enc0, enc1: [2 x B x 1 x M x C/H], [2 x B x 1 x N x C/H] rotary encodings (net.posenc).
        Returns:
            The updated states [B x M x C], [B x N x C]: on the inputs' device and dtype for torch,
            float32 CPU tensors for the runtimes.
        """
        if self.graphs is None:
            return self.net.transformers[layer](x0, x1, enc0, enc1)
        y0, y1 = self.graphs[layer](to_numpy(x0), to_numpy(x1), to_numpy(enc0), to_numpy(enc1))
        return torch.from_numpy(y0), torch.from_numpy(y1)
