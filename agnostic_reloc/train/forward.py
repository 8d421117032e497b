"""Training forward of kornia's LightGlue: every layer's log-assignment (deep supervision) + token confidences.

No early exit and no pruning: all layers run on all valid points. Pairs of a batch have different keypoint
counts, so inputs are padded and `mask0` / `mask1` say which entries are real.

Padding and gradients: `inference.lightglue_runtime.run_layer` masks padded points out as keys, which leaves each
padded *query* row with nothing to attend to. The forward output is fine (kornia replaces the NaN of such a row by
0) but the backward of softmax over an all-masked row is NaN and poisons the weight gradients. With padding, this
module therefore appends one dummy padded token to each side and lets padded tokens attend only to padded tokens
(real tokens still see only real tokens, so their values are exactly those of `run_layer`). Without padding (e.g.
batch size 1) `run_layer` itself is used.
"""

from __future__ import annotations

import torch
from kornia.feature import LightGlue

from ..inference.lightglue_runtime import cross_attention, run_layer
from ..matching.lightglue import assignment, normalize_keypoints


def _masked_layer(layer, x0: torch.Tensor, x1: torch.Tensor, enc0: torch.Tensor, enc1: torch.Tensor,
                  v0: torch.Tensor, v1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One self+cross layer where real tokens see real tokens and padded tokens see padded tokens.

    x0 [B x M x C], x1 [B x N x C], enc* [2 x B x 1 x * x E], v0 [B x M], v1 [B x N] (each side has >= 1 padded).
    """
    def same(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ((a[:, :, None] & b[:, None, :]) | (~a[:, :, None] & ~b[:, None, :]))[:, None]

    x0 = layer.self_attn(x0, enc0, same(v0, v0))
    x1 = layer.self_attn(x1, enc1, same(v1, v1))
    return cross_attention(layer.cross_attn, x0, x1, same(v0, v1))


def forward_train(net: LightGlue, data: dict, confidence: bool = True) -> dict:
    """Run all layers of `net` on a padded batch.

    Args:
        net: kornia LightGlue (e.g. from `matching.lightglue.build_network`).
        data: keypoints0 [B x M x 2], keypoints1 [B x N x 2] (pixels), descriptors0 [B x M x D],
            descriptors1 [B x N x D], image_size0 / image_size1 [B x 2] (W, H), and optionally
            mask0 [B x M], mask1 [B x N] (bool, True = real keypoint; default all True).
        confidence: also return the token confidences of layers 0..L-2.
    Returns:
        log_assignment: list of L tensors [B x M+1 x N+1] (log-probabilities, last row/column = dustbins);
        confidence0 / confidence1: lists of L-1 tensors [B x M] / [B x N] in (0, 1) (empty if not asked);
        mask0, mask1: the validity masks used.
    """
    kp0, kp1 = data["keypoints0"], data["keypoints1"]
    b, m, n = kp0.shape[0], kp0.shape[1], kp1.shape[1]
    v0 = data.get("mask0")
    v1 = data.get("mask1")
    v0 = torch.ones(b, m, dtype=torch.bool, device=kp0.device) if v0 is None else v0.bool()
    v1 = torch.ones(b, n, dtype=torch.bool, device=kp1.device) if v1 is None else v1.bool()
    padded = not (bool(v0.all()) and bool(v1.all()))
    d0, d1 = data["descriptors0"], data["descriptors1"]
    if padded:  # one dummy padded token per side, see the module docstring
        kp0, kp1 = torch.cat([kp0, kp0.new_zeros(b, 1, 2)], 1), torch.cat([kp1, kp1.new_zeros(b, 1, 2)], 1)
        d0, d1 = torch.cat([d0, d0.new_zeros(b, 1, d0.shape[-1])], 1), torch.cat([d1, d1.new_zeros(b, 1, d1.shape[-1])], 1)
        w0, w1 = torch.cat([v0, v0.new_zeros(b, 1)], 1), torch.cat([v1, v1.new_zeros(b, 1)], 1)
    else:
        w0, w1 = v0, v1
    enc0 = net.posenc(normalize_keypoints(kp0, data["image_size0"]))
    enc1 = net.posenc(normalize_keypoints(kp1, data["image_size1"]))
    x0, x1 = net.input_proj(d0), net.input_proj(d1)
    scores, conf0, conf1 = [], [], []
    n_layers = net.conf.n_layers
    for i in range(n_layers):
        if padded:
            x0, x1 = _masked_layer(net.transformers[i], x0, x1, enc0, enc1, w0, w1)
        else:
            x0, x1 = run_layer(net.transformers[i], x0, x1, enc0, enc1, w0, w1)
        scores.append(assignment(net, i, x0[:, :m], x1[:, :n], v0, v1))
        if confidence and i < n_layers - 1:
            c0, c1 = net.token_confidence[i](x0[:, :m], x1[:, :n])
            conf0.append(c0.float())
            conf1.append(c1.float())
    return {"log_assignment": scores, "confidence0": conf0, "confidence1": conf1, "mask0": v0, "mask1": v1}
