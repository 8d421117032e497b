"""Remedies for clustered keypoints (multi-scale ORB puts near-duplicates on several octaves,
which confuses LightGlue's attention). All functions return indices into the ORIGINAL keypoints."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from agnostic_reloc.features.keypoints import Keypoints

SUPPRESSION_MODES = ("none", "radius", "octave")


def _priority(kpts: Keypoints) -> np.ndarray:
    """Visiting order: decreasing response, then lower octave, then lower index."""
    idx = np.arange(len(kpts))
    return np.lexsort((idx, kpts.octave, -kpts.response.astype(np.float64)))


def radius_nms(kpts: Keypoints, radius: float) -> np.ndarray:
    """Greedy NMS across all octaves; returns kept indices in ascending order.

    Keypoints are visited by decreasing response (ties: lower octave, then lower index); one is
    kept unless an already kept keypoint lies strictly closer than `radius` px. Kept keypoints
    are therefore pairwise >= `radius` apart; radius 0 keeps everything.
    """
    n = len(kpts)
    if n == 0 or radius <= 0:
        return np.arange(n, dtype=np.int64)
    xy = kpts.xy.astype(np.float64)
    pairs = cKDTree(xy).query_pairs(radius, output_type="ndarray")
    if len(pairs):
        d = np.linalg.norm(xy[pairs[:, 0]] - xy[pairs[:, 1]], axis=1)
        pairs = pairs[d < radius]
    if len(pairs) == 0:
        return np.arange(n, dtype=np.int64)
    # Symmetric neighbour lists in CSR form.
    src = np.concatenate([pairs[:, 0], pairs[:, 1]])
    dst = np.concatenate([pairs[:, 1], pairs[:, 0]])
    order = np.argsort(src, kind="stable")
    dst = dst[order]
    start = np.searchsorted(src[order], np.arange(n + 1))
    suppressed = np.zeros(n, bool)
    keep = np.zeros(n, bool)
    has_nb = start[1:] > start[:-1]
    for i in _priority(kpts):
        if suppressed[i]:
            continue
        keep[i] = True
        if has_nb[i]:
            suppressed[dst[start[i]:start[i + 1]]] = True
    return np.flatnonzero(keep).astype(np.int64)


def suppress(kpts: Keypoints, mode: str, radius: float = 3.0, max_octave: int = 0,
             max_keypoints: int | None = None) -> np.ndarray:
    """Select keypoints to keep.

    Args:
        kpts: N keypoints.
        mode: 'none' (keep all), 'radius' (greedy NMS by response across octaves, see `radius_nms`),
            'octave' (keep octave <= max_octave).
        radius: NMS radius in full-resolution pixels (>= 0), for mode 'radius'.
        max_octave: highest octave kept, for mode 'octave'.
        max_keypoints: if set, afterwards keep only the strongest this many (ties: lower octave, index).
    Returns:
        int64 [K] indices into `kpts`, ascending.
    """
    if mode not in SUPPRESSION_MODES:
        raise ValueError(f"unknown suppression mode '{mode}'; known modes: {', '.join(SUPPRESSION_MODES)}")
    if not np.isfinite(radius) or radius < 0:
        raise ValueError(f"suppression radius must be a finite number >= 0, got {radius}")
    if max_keypoints is not None and max_keypoints < 0:
        raise ValueError(f"max_keypoints must be >= 0 or None, got {max_keypoints}")
    if mode == "radius":
        keep = radius_nms(kpts, radius)
    elif mode == "octave":
        keep = np.flatnonzero(kpts.octave <= max_octave).astype(np.int64)
    else:
        keep = np.arange(len(kpts), dtype=np.int64)
    if max_keypoints is not None and len(keep) > max_keypoints:
        best = _priority(kpts.subset(keep))[:int(max_keypoints)]
        keep = np.sort(keep[best])
    return keep
