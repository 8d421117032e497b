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
import torch.nn.functional as F
from kornia.feature import LightGlue

from ..conf import merge_conf
from .backends import AUTO_ORDER, compile_module, default_runtime_conf, export_onnx, runtime_threads, to_numpy


def cross_attention(block: torch.nn.Module, x0: torch.Tensor, x1: torch.Tensor,
                    mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """kornia's `CrossBlock.forward` with each direction as one fused scaled-dot-product attention.

    kornia computes the [M x N] similarity once on CPU, then two softmaxes (one over a transposed copy) and two
    matmuls; the fused kernel computes it once per direction without storing it: the same result to float rounding
    (~2e-6), ~1.7x faster for 1000 x 700 points on one CPU core.
    x0 [B x M x C], x1 [B x N x C]; mask: [B x 1 x M x N] bool (True: the pair may attend), or None.
    """
    qk0, qk1 = block.to_qk(x0), block.to_qk(x1)
    v0, v1 = block.to_v(x0), block.to_v(x1)
    qk0, qk1, v0, v1 = (t.unflatten(-1, (block.heads, -1)).transpose(1, 2) for t in (qk0, qk1, v0, v1))
    m0 = F.scaled_dot_product_attention(qk0, qk1, v1, attn_mask=mask, scale=block.scale)
    m1 = F.scaled_dot_product_attention(qk1, qk0, v0, scale=block.scale,
                                        attn_mask=None if mask is None else mask.transpose(-1, -2))
    if mask is not None:  # a point with nothing to attend to gets no message (kornia's convention)
        m0, m1 = m0.nan_to_num(), m1.nan_to_num()
    m0, m1 = (block.to_out(t.transpose(1, 2).flatten(start_dim=-2)) for t in (m0, m1))
    return x0 + block.ffn(torch.cat([x0, m0], -1)), x1 + block.ffn(torch.cat([x1, m1], -1))


def run_layer(layer: torch.nn.Module, x0: torch.Tensor, x1: torch.Tensor, enc0: torch.Tensor, enc1: torch.Tensor,
              v0: torch.Tensor | None = None, v1: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One LightGlue transformer layer (self-attention on both sets, then cross-attention) in torch.

    x0 [B x M x C], x1 [B x N x C]; enc0, enc1: rotary encodings [2 x B x 1 x M|N x C/H]; v0 [B x M], v1 [B x N]:
    valid points (None: all), invalid (padded or pruned) points are masked out as keys.
    """
    if v0 is None or v1 is None or (bool(v0.all()) and bool(v1.all())):
        x0, x1 = layer.self_attn(x0, enc0), layer.self_attn(x1, enc1)
        return cross_attention(layer.cross_attn, x0, x1)
    x0 = layer.self_attn(x0, enc0, (v0[:, :, None] & v0[:, None, :])[:, None])
    x1 = layer.self_attn(x1, enc1, (v1[:, :, None] & v1[:, None, :])[:, None])
    return cross_attention(layer.cross_attn, x0, x1, (v0[:, :, None] & v1[:, None, :])[:, None])


class _Layer(torch.nn.Module):
    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x0, x1, enc0, enc1):
        return run_layer(self.layer, x0, x1, enc0, enc1)


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
        # auto: with one intra-op thread (each stage's share of a 2-core CPU) torch with fused attention is the
        # fastest, idle and with both cores busy elsewhere; with more threads OpenVINO holds up better under load
        # (README: latency; 1000 x 700 points, 2-core x86-64: 1 thread 814 / 894 ms idle, 1286 / 1441 ms loaded;
        # 2 threads 532 / 606 ms idle, 2046 / 1617 ms loaded, torch / OpenVINO)
        order = ("torch",) if runtime_threads(self.conf["threads"]) == 1 else AUTO_ORDER
        self.backend, self.graphs = compile_module(f"lightglue-h{net.conf.num_heads}-layers", net.transformers,
                                                   stems, self._export, self.conf, order)

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
            return run_layer(self.net.transformers[layer], x0, x1, enc0, enc1)
        y0, y1 = self.graphs[layer](to_numpy(x0), to_numpy(x1), to_numpy(enc0), to_numpy(enc1))
        return torch.from_numpy(y0), torch.from_numpy(y1)
