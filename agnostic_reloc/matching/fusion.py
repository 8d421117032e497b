"""Fusion of LightGlue matches with classic Hamming matches of the keypoints LightGlue left unmatched."""

from __future__ import annotations

import numpy as np


def fuse_matches(lg: np.ndarray, lg_scores: np.ndarray, nn: np.ndarray, nn_scores: np.ndarray,
                 nn_weight: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """LightGlue matches plus the Hamming matches of keypoints LightGlue left unmatched on both sides.

    Hamming scores are down-weighted so that a score-ordered RANSAC tries LightGlue's first.
    """
    used0 = set(lg[:, 0].tolist())
    used1 = set(lg[:, 1].tolist())
    extra = np.array([k for k, (i, j) in enumerate(nn) if i not in used0 and j not in used1], np.int64)
    if len(extra) == 0:
        return lg, lg_scores
    return (np.concatenate([lg, nn[extra]]).astype(np.int64),
            np.concatenate([lg_scores, nn_weight * nn_scores[extra]]).astype(np.float32))
