"""LightGlue's training loss: NLL of the assignment at every layer, plus the optional confidence-head loss.

Ground truth per point: gt_matches0 [B x M] = index into keypoints1, -1 = unmatched (its dustbin is the
target), -2 = ignored (ambiguous, padded or without ground truth); gt_matches1 [B x N] likewise.

Per pair and layer (as in LightGlue / glue-factory):
    nll_pos = mean over matched pairs (i, j) of -log P[i, j]
    nll_neg = mean over unmatched points of both images of -log P[i, dustbin] / -log P[dustbin, j]
    nll     = balancing * nll_pos + (1 - balancing) * nll_neg
Pairs without positives (or negatives) use only the other term. Layers are combined by a weighted average
with weights gamma ** (L - 1 - l): gamma = 1 (default) weighs all layers equally, like LightGlue's training;
gamma < 1 favours the last layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

default_conf = {
    "gamma": 1.0,  # layer l weighs gamma ** (L - 1 - l) in the average over layers (1 = equal weights)
    "balancing": 0.5,  # weight of the matched-pair term vs the unmatched (dustbin) term
    "train_confidence": False,  # add the token-confidence (adaptive depth) BCE loss; off: early exit unused
    "confidence_weight": 1.0,  # weight of the confidence loss when trained
}


def nll_per_pair(log_assignment: torch.Tensor, gt_matches0: torch.Tensor, gt_matches1: torch.Tensor,
                 balancing: float = 0.5) -> torch.Tensor:
    """NLL of one layer for each pair: log_assignment [B x M+1 x N+1], gt_matches0 [B x M], gt_matches1 [B x N] -> [B]."""
    b, m1, n1 = log_assignment.shape
    m, n = m1 - 1, n1 - 1
    la = log_assignment.float()
    pos0 = gt_matches0 >= 0
    idx = gt_matches0.clamp(min=0)
    pos_ll = la[:, :m, :n].gather(2, idx[..., None]).squeeze(-1)  # [B x M]
    num_pos = pos0.sum(1)
    nll_pos = -(pos_ll * pos0).sum(1) / num_pos.clamp(min=1)
    neg0, neg1 = gt_matches0 == -1, gt_matches1 == -1
    num_neg = neg0.sum(1) + neg1.sum(1)
    nll_neg = -((la[:, :m, -1] * neg0).sum(1) + (la[:, -1, :n] * neg1).sum(1)) / num_neg.clamp(min=1)
    has_pos, has_neg = (num_pos > 0).float(), (num_neg > 0).float()
    w_pos, w_neg = balancing * has_pos, (1 - balancing) * has_neg
    return (w_pos * nll_pos + w_neg * nll_neg) / (w_pos + w_neg).clamp(min=1e-6)


def layer_weights(n_layers: int, gamma: float) -> torch.Tensor:
    """[L] weights gamma ** (L - 1 - l), normalised to sum 1."""
    w = torch.tensor([gamma ** (n_layers - 1 - i) for i in range(n_layers)], dtype=torch.float32)
    return w / w.sum()


def prediction(log_assignment: torch.Tensor, mask0: torch.Tensor, mask1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each point's best column/row including the dustbin: ([B x M] in 0..N, [B x N] in 0..M); N/M = dustbin."""
    la = log_assignment.detach()
    return la[:, :-1, :].argmax(2), la[:, :, :-1].argmax(1)


def confidence_loss(conf0: list[torch.Tensor], conf1: list[torch.Tensor], log_assignments: list[torch.Tensor],
                    mask0: torch.Tensor, mask1: torch.Tensor) -> torch.Tensor:
    """BCE between layer l's token confidence and [layer l's prediction for the point == the final layer's].

    conf0[l] [B x M], conf1[l] [B x N] for l < L-1; averaged over valid points and layers -> [B].
    """
    final0, final1 = prediction(log_assignments[-1], mask0, mask1)
    losses = []
    for c0, c1, la in zip(conf0, conf1, log_assignments[:-1]):
        p0, p1 = prediction(la, mask0, mask1)
        t0, t1 = (p0 == final0).float(), (p1 == final1).float()
        l0 = F.binary_cross_entropy(c0.float().clamp(1e-6, 1 - 1e-6), t0, reduction="none")
        l1 = F.binary_cross_entropy(c1.float().clamp(1e-6, 1 - 1e-6), t1, reduction="none")
        num = (mask0.sum(1) + mask1.sum(1)).clamp(min=1)
        losses.append(((l0 * mask0).sum(1) + (l1 * mask1).sum(1)) / num)
    return torch.stack(losses, 0).mean(0)


class LightGlueLoss:
    """Deep-supervised NLL (+ confidence BCE): outputs of `forward.forward_train` + ground truth -> losses."""

    def __init__(self, conf: dict | None = None) -> None:
        unknown = set(conf or {}) - set(default_conf)
        if unknown:
            raise ValueError(f"unknown loss options {sorted(unknown)}; known: {sorted(default_conf)}")
        self.conf = {**default_conf, **(conf or {})}
        if not 0 < self.conf["gamma"] <= 1:
            raise ValueError(f"loss gamma must be in (0, 1], got {self.conf['gamma']}")
        if not 0 <= self.conf["balancing"] <= 1:
            raise ValueError(f"loss balancing must be in [0, 1], got {self.conf['balancing']}")

    def __call__(self, pred: dict, gt_matches0: torch.Tensor, gt_matches1: torch.Tensor) -> dict:
        """Returns total (scalar, batch mean), nll_layers [L] (batch means, detached), nll_last, confidence."""
        las = pred["log_assignment"]
        gt0 = gt_matches0.masked_fill(~pred["mask0"], -2)
        gt1 = gt_matches1.masked_fill(~pred["mask1"], -2)
        per_layer = torch.stack([nll_per_pair(la, gt0, gt1, self.conf["balancing"]) for la in las], 0)  # [L x B]
        w = layer_weights(len(las), self.conf["gamma"]).to(per_layer.device)
        total = (w[:, None] * per_layer).sum(0)  # [B]
        out = {"nll_layers": per_layer.mean(1).detach(), "nll_last": per_layer[-1].mean().detach()}
        if self.conf["train_confidence"]:
            if not pred["confidence0"]:
                raise ValueError("train_confidence needs the forward to return token confidences")
            closs = confidence_loss(pred["confidence0"], pred["confidence1"], las, pred["mask0"], pred["mask1"])
            total = total + self.conf["confidence_weight"] * closs
            out["confidence"] = closs.mean().detach()
        out["total"] = total.mean()
        return out


@torch.no_grad()
def match_metrics(log_assignment: torch.Tensor, gt_matches0: torch.Tensor, mask0: torch.Tensor,
                  mask1: torch.Tensor, threshold: float = 0.1) -> dict[str, float]:
    """Recall / precision of the mutual-best matches (score > threshold) of one layer on the batch.

    recall = correct / ground-truth matches; precision = correct / predicted matches on points not ignored.
    """
    s = log_assignment[:, :-1, :-1].detach().float()
    s = s.masked_fill(~(mask0[:, :, None] & mask1[:, None, :]), float("-inf"))
    best0, best1 = s.max(2), s.max(1)
    ar = torch.arange(s.shape[1], device=s.device)[None]
    mutual = best1.indices.gather(1, best0.indices) == ar
    pred = mutual & (best0.values.exp() > threshold) & mask0
    gt = gt_matches0
    correct = pred & (best0.indices == gt)
    considered = pred & (gt != -2)
    n_gt = int((gt >= 0).sum())
    return {"recall": float(correct.sum()) / max(n_gt, 1),
            "precision": float(correct.sum()) / max(int(considered.sum()), 1)}
