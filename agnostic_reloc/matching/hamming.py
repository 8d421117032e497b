"""Classic nearest-neighbour matching baselines: ORB descriptors at given keypoints, Hamming and L2 NN."""

from __future__ import annotations

import cv2
import numpy as np

from agnostic_reloc.features.keypoints import Keypoints
from agnostic_reloc.io.image import check_image

ORB_DESC_CONF = {"n_levels": 8, "edge_threshold": 19, "patch_size": 31}
_HALF_PATCH = 15


def _level_images(gray: np.ndarray, scale_factor: float, n_levels: int) -> list[np.ndarray]:
    h, w = gray.shape
    out = [gray]
    for level in range(1, n_levels):
        s = scale_factor ** level
        out.append(cv2.resize(gray, (max(1, round(w / s)), max(1, round(h / s))), interpolation=cv2.INTER_LINEAR))
    return out


def _ic_angles(levels: list[np.ndarray], xy: np.ndarray, octave: np.ndarray, scale_factor: float) -> np.ndarray:
    """ORB intensity-centroid orientation (degrees, [0, 360)) on each keypoint's pyramid level."""
    r = _HALF_PATCH
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = dx ** 2 + dy ** 2 <= r * r + r  # ORB's rounded circular patch
    dx, dy = dx[disk], dy[disk]
    angles = np.zeros(len(xy), np.float32)
    for level in np.unique(octave):
        sel = np.flatnonzero(octave == level)
        img = cv2.copyMakeBorder(levels[level], r, r, r, r, cv2.BORDER_REFLECT_101).astype(np.float64)
        p = np.rint(xy[sel] / scale_factor ** level).astype(np.int64) + r
        p[:, 0] = np.clip(p[:, 0], r, img.shape[1] - 1 - r)
        p[:, 1] = np.clip(p[:, 1], r, img.shape[0] - 1 - r)
        patch = img[p[:, 1, None] + dy[None], p[:, 0, None] + dx[None]]  # [n x P]
        m10, m01 = patch @ dx, patch @ dy
        angles[sel] = np.degrees(np.arctan2(m01, m10)) % 360.0
    return angles


def orb_descriptors(image: np.ndarray, kpts: Keypoints) -> tuple[np.ndarray, np.ndarray]:
    """32-byte ORB descriptors computed at the given keypoints (no re-detection).

    Each keypoint is described on its own pyramid level (octave, ratio `kpts.scale_factor`, at
    least 8 levels) with its own angle; keypoints without one (angle < 0) get ORB's
    intensity-centroid orientation.

    Args:
        image: RGB uint8 [H x W x 3] (anything `check_image` accepts).
        kpts: N keypoints of that image, xy in full-resolution pixels.
    Returns:
        desc [N x 32] uint8 aligned with `kpts` (zero rows where invalid),
        valid [N] bool: False where OpenCV dropped the keypoint (too close to the border).
    """
    gray = cv2.cvtColor(check_image(image), cv2.COLOR_RGB2GRAY)
    kpts.validate()
    n = len(kpts)
    desc = np.zeros((n, 32), np.uint8)
    valid = np.zeros(n, bool)
    if n == 0:
        return desc, valid
    c = ORB_DESC_CONF
    scale = float(kpts.scale_factor)
    if not np.isfinite(scale) or scale <= 1.0:
        scale = 1.2  # single-scale keypoints (octave 0 only): the ratio is irrelevant
    n_levels = max(c["n_levels"], int(kpts.octave.max()) + 1)
    angle = kpts.angle.astype(np.float32).copy()
    missing = angle < 0
    if missing.any():
        levels = _level_images(gray, scale, n_levels)
        angle[missing] = _ic_angles(levels, kpts.xy[missing], kpts.octave[missing], scale)
    cv_kps = [cv2.KeyPoint(float(x), float(y), float(s), float(a), float(r), int(o), int(i))
              for i, ((x, y), s, a, r, o) in enumerate(zip(kpts.xy, kpts.size, angle, kpts.response, kpts.octave))]
    orb = cv2.ORB_create(nfeatures=max(n, 1), scaleFactor=scale, nlevels=n_levels, edgeThreshold=c["edge_threshold"],
                         firstLevel=0, WTA_K=2, patchSize=c["patch_size"])
    out_kps, out_desc = orb.compute(gray, cv_kps)
    if out_desc is not None and len(out_kps):
        idx = np.array([kp.class_id for kp in out_kps], np.int64)
        desc[idx] = out_desc
        valid[idx] = True
    return desc, valid


def _check_desc(desc0: np.ndarray, desc1: np.ndarray, valid0, valid1, dtype_kind: str):
    out = []
    for name, d in (("desc0", desc0), ("desc1", desc1)):
        d = np.asarray(d)
        if d.ndim != 2:
            raise ValueError(f"{name} must be a 2-D [N x D] array, got shape {d.shape}")
        if dtype_kind == "u" and d.dtype != np.uint8:
            raise ValueError(f"{name} must be uint8 binary descriptors, got dtype {d.dtype}")
        if dtype_kind == "f" and not np.all(np.isfinite(d)):
            raise ValueError(f"{name} contains non-finite values")
        out.append(d)
    if out[0].shape[1] != out[1].shape[1]:
        raise ValueError(f"descriptor widths differ: desc0 has {out[0].shape[1]}, desc1 has {out[1].shape[1]}")
    masks = []
    for name, v, d in (("valid0", valid0, out[0]), ("valid1", valid1, out[1])):
        if v is None:
            v = np.ones(len(d), bool)
        v = np.asarray(v, bool).reshape(-1)
        if len(v) != len(d):
            raise ValueError(f"{name} has {len(v)} entries but its descriptors have {len(d)} rows")
        masks.append(v)
    return out[0], out[1], masks[0], masks[1]


def _nn_select(dist: np.ndarray, ratio: float, mutual: bool, max_distance: float) -> np.ndarray:
    """Row-wise NN with ratio test, mutual check and distance cap on a [N0 x N1] distance matrix."""
    n0, n1 = dist.shape
    if n0 == 0 or n1 == 0:
        return np.zeros((0, 2), np.int64)
    rows = np.arange(n0)
    nn = np.argmin(dist, axis=1)
    best = dist[rows, nn]
    if n1 > 1:
        second = np.partition(dist, 1, axis=1)[:, 1]
    else:
        second = np.full(n0, np.inf)
    ok = np.isfinite(best) & (best <= max_distance) & ((best < ratio * second) | ~np.isfinite(second))
    if mutual:
        ok &= np.argmin(dist, axis=0)[nn] == rows
    return np.stack([rows[ok], nn[ok]], axis=1).astype(np.int64)


def match_hamming(desc0: np.ndarray, desc1: np.ndarray, valid0: np.ndarray | None = None,
                  valid1: np.ndarray | None = None, ratio: float = 0.9, mutual: bool = True,
                  max_distance: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force Hamming NN for binary descriptors (ORB-SLAM3's 0.9 ratio test by default).

    Args:
        desc0, desc1: [N0 x B], [N1 x B] uint8 packed bits.
        valid0, valid1: optional [N] bool masks; invalid rows never match.
        ratio: best distance must be < ratio x second-best (1 disables).
        mutual: keep only mutual nearest neighbours.
        max_distance: largest accepted Hamming distance (bits).
    Returns:
        matches [M x 2] int64 (index into desc0, index into desc1), scores [M] float32 = 1 - dist / bits.
    """
    d0, d1, v0, v1 = _check_desc(desc0, desc1, valid0, valid1, "u")
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    bits = 8 * d0.shape[1]
    # Hamming distance via a +-1 dot product: dist = (bits - <s0, s1>) / 2.
    s0 = np.unpackbits(d0, axis=1).astype(np.float32) * 2 - 1
    s1 = np.unpackbits(d1, axis=1).astype(np.float32) * 2 - 1
    dist = np.rint((bits - s0 @ s1.T) / 2)
    dist[~v0] = np.inf
    dist[:, ~v1] = np.inf
    matches = _nn_select(dist, ratio, mutual, max_distance)
    scores = (1.0 - dist[matches[:, 0], matches[:, 1]] / bits).astype(np.float32)
    return matches, scores


def match_float_nn(desc0: np.ndarray, desc1: np.ndarray, ratio: float = 0.95, mutual: bool = True,
                   valid0: np.ndarray | None = None, valid1: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force L2 NN for float descriptors (L2-normalised here first).

    Args:
        desc0, desc1: [N0 x D], [N1 x D] float descriptors.
        ratio: best L2 distance must be < ratio x second-best (1 disables).
        mutual: keep only mutual nearest neighbours.
        valid0, valid1: optional [N] bool masks; invalid rows never match.
    Returns:
        matches [M x 2] int64, scores [M] float32 = cosine similarity clipped to [0, 1].
    """
    d0, d1, v0, v1 = _check_desc(desc0, desc1, valid0, valid1, "f")
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    d0 = d0.astype(np.float32)
    d1 = d1.astype(np.float32)
    d0 = d0 / np.maximum(np.linalg.norm(d0, axis=1, keepdims=True), 1e-12)
    d1 = d1 / np.maximum(np.linalg.norm(d1, axis=1, keepdims=True), 1e-12)
    sim = d0 @ d1.T
    dist = np.sqrt(np.clip(2.0 - 2.0 * sim, 0.0, None))
    dist[~v0] = np.inf
    dist[:, ~v1] = np.inf
    matches = _nn_select(dist, ratio, mutual, np.inf)
    scores = np.clip(sim[matches[:, 0], matches[:, 1]], 0.0, 1.0).astype(np.float32)
    return matches, scores
