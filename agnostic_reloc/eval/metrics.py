"""Evaluation metrics: homography corner error, cumulative-error AUC, relative pose error, match precision."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _as_homography(H, what: str) -> np.ndarray | None:
    """3x3 float64 normalised homography, or None when missing / non-finite / singular."""
    if H is None:
        return None
    H = np.asarray(H, dtype=np.float64)
    if H.shape != (3, 3):
        raise ValueError(f"{what} must be 3x3, got shape {H.shape}")
    if not np.all(np.isfinite(H)):
        return None
    scale = np.abs(H).max()
    if scale == 0 or abs(np.linalg.det(H / scale)) < 1e-12:
        return None
    return H / scale


def homography_corner_error(H_est: np.ndarray | None, H_gt: np.ndarray, size: tuple[int, int]) -> float:
    """Mean distance (px, in image1) between the 4 corners of image0 (w, h) = size mapped by H_est and by H_gt.

    Corners are (0, 0), (w, 0), (w, h), (0, h). Returns inf when H_est is None, non-finite, singular or maps a
    corner to/behind infinity.
    """
    w, h = size
    if w <= 0 or h <= 0:
        raise ValueError(f"size must be (width, height) > 0, got {size}")
    Hg = _as_homography(H_gt, "H_gt")
    if Hg is None:
        raise ValueError("H_gt must be a finite, non-singular 3x3 homography")
    He = _as_homography(H_est, "H_est")
    if He is None:
        return math.inf
    corners = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], dtype=np.float64)
    pe, pg = corners @ He.T, corners @ Hg.T
    pe, pg = pe * np.sign(pe[:, 2:].sum()), pg * np.sign(pg[:, 2:].sum())  # undo an overall sign flip
    if np.any(pe[:, 2] <= 1e-9 * np.abs(pe).max()):
        return math.inf
    err = np.linalg.norm(pe[:, :2] / pe[:, 2:] - pg[:, :2] / pg[:, 2:], axis=1).mean()
    return float(err) if np.isfinite(err) else math.inf


def pose_auc(errors: Sequence[float], thresholds: Sequence[float]) -> list[float]:
    """Area under the cumulative error curve up to each threshold, normalised by it, in percent.

    Same as SuperGlue / LightGlue evaluation: recall(e) = fraction of errors <= e, integrated from 0 to t
    (trapezoids), divided by t. inf errors count as failures. errors and thresholds in the same unit.
    """
    errors = np.asarray(errors, dtype=np.float64).ravel()
    if errors.size == 0:
        raise ValueError("pose_auc needs at least one error value")
    if np.any(np.isnan(errors)) or np.any(errors < 0):
        raise ValueError("pose_auc errors must be >= 0 and not NaN (use inf for failures)")
    errors = np.sort(errors)
    recall = (np.arange(len(errors)) + 1) / len(errors)
    errors = np.r_[0.0, errors]
    recall = np.r_[0.0, recall]
    aucs = []
    for t in thresholds:
        if not t > 0:
            raise ValueError(f"pose_auc thresholds must be > 0, got {t}")
        last = np.searchsorted(errors, t)
        r = np.r_[recall[:last], recall[last - 1]]
        e = np.r_[errors[:last], t]
        aucs.append(float(np.trapezoid(r, x=e) / t * 100.0))
    return aucs


def _pose(T, what: str) -> tuple[np.ndarray, np.ndarray]:
    T = np.asarray(T, dtype=np.float64)
    if T.shape not in ((4, 4), (3, 4)):
        raise ValueError(f"{what} must be a 4x4 or 3x4 rigid transform [R | t], got shape {T.shape}")
    return T[:3, :3], T[:3, 3]


def relative_pose_error(T_est: np.ndarray | None, T_gt: np.ndarray, ignore_sign: bool = False) -> tuple[float, float]:
    """(rotation error, translation direction error) in degrees between two relative poses [R | t].

    The translation error is the angle between t_est and t_gt (scale-free; 0 when t_gt ~ 0). ignore_sign=True
    takes min(err, 180 - err) for the sign ambiguity of an essential matrix. (inf, inf) when T_est is None or
    non-finite; translation error inf when t_est ~ 0 but t_gt is not.
    """
    R_gt, t_gt = _pose(T_gt, "T_gt")
    if T_est is None:
        return math.inf, math.inf
    R_est, t_est = _pose(T_est, "T_est")
    if not (np.all(np.isfinite(R_est)) and np.all(np.isfinite(t_est))):
        return math.inf, math.inf
    cos = np.clip((np.trace(R_est.T @ R_gt) - 1.0) / 2.0, -1.0, 1.0)
    rot = math.degrees(math.acos(cos))
    n_gt, n_est = np.linalg.norm(t_gt), np.linalg.norm(t_est)
    if n_gt < 1e-12:
        trans = 0.0
    elif n_est < 1e-12:
        trans = math.inf
    else:
        trans = math.degrees(math.acos(np.clip(t_est @ t_gt / (n_est * n_gt), -1.0, 1.0)))
        if ignore_sign:
            trans = min(trans, 180.0 - trans)
    return rot, trans


def match_precision(kpts0: np.ndarray, kpts1: np.ndarray, matches: np.ndarray, H_gt: np.ndarray,
                    threshold: float = 3.0) -> float:
    """Fraction of matches (i, j) whose kpts0[i] warped by H_gt lies within `threshold` px of kpts1[j].

    kpts0 [N0 x 2], kpts1 [N1 x 2] (x, y) px; matches [M x 2] int indices; H_gt maps image0 px to image1 px.
    Returns 0.0 when there are no matches.
    """
    kpts0 = np.asarray(kpts0, dtype=np.float64).reshape(-1, 2)
    kpts1 = np.asarray(kpts1, dtype=np.float64).reshape(-1, 2)
    matches = np.asarray(matches)
    if matches.size == 0:
        return 0.0
    if matches.ndim != 2 or matches.shape[1] != 2 or not np.issubdtype(matches.dtype, np.integer):
        raise ValueError(f"matches must be an integer [M x 2] array of (index0, index1), got {matches.dtype} "
                         f"{matches.shape}")
    if matches.min() < 0 or matches[:, 0].max() >= len(kpts0) or matches[:, 1].max() >= len(kpts1):
        raise ValueError(f"matches index out of range for {len(kpts0)} kpts0 and {len(kpts1)} kpts1")
    H = np.asarray(H_gt, dtype=np.float64)
    if H.shape != (3, 3):
        raise ValueError(f"H_gt must be 3x3, got shape {H.shape}")
    p = np.c_[kpts0[matches[:, 0]], np.ones(len(matches))] @ H.T
    with np.errstate(divide="ignore", invalid="ignore"):
        proj = p[:, :2] / p[:, 2:]
        dist = np.linalg.norm(proj - kpts1[matches[:, 1]], axis=1)
    return float(np.mean(np.nan_to_num(dist, nan=np.inf) <= threshold))


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """{"p50", "p90", "max"} of values (same unit; linear interpolation, inf-safe: inf if it touches an inf)."""
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if v.size == 0:
        raise ValueError("percentiles needs at least one value")
    if np.any(np.isnan(v)):
        raise ValueError("percentiles values must not be NaN (use inf for failures)")

    def q(frac: float) -> float:
        pos = frac * (len(v) - 1)
        lo, hi = int(math.floor(pos)), int(math.ceil(pos))
        if lo == hi or np.isinf(v[hi]):
            return float(v[hi])
        return float(v[lo] + (pos - lo) * (v[hi] - v[lo]))

    return {"p50": q(0.5), "p90": q(0.9), "max": float(v[-1])}
