"""Ground-truth correspondences between two keypoint sets: by homography, or by depth + pose + intrinsics.

Both return gt_matches0 [M] and gt_matches1 [N] (int64): index of the matching keypoint in the other image,
-1 = unmatched (no keypoint in the other image within `unmatched_px`), -2 = ignored (ambiguous, or no valid
depth). A match is a mutual nearest neighbour whose symmetric reprojection error (the larger of the errors
in image0 and image1) is at most `match_px`.
"""

from __future__ import annotations

import numpy as np

from ..eval.homography_pairs import warp_points

UNMATCHED = -1
IGNORE = -2

default_conf = {
    "match_px": 3.0,  # max symmetric reprojection error of a ground-truth match (px)
    "unmatched_px": 5.0,  # a point is unmatched if no keypoint of the other image is closer than this (px)
    "depth_rel_tol": 0.1,  # visibility: |z_projected - depth_other| / depth_other must be below this
}


def assign(dist: np.ndarray, match_px: float, unmatched_px: float, ignore0: np.ndarray | None = None,
           ignore1: np.ndarray | None = None, unmatched0: np.ndarray | None = None,
           unmatched1: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Label keypoints from a distance matrix.

    Args:
        dist: [M x N] symmetric reprojection errors (px; inf = impossible).
        match_px, unmatched_px: thresholds (match_px <= unmatched_px).
        ignore0 / ignore1: [M] / [N] bool, points without ground truth (-> -2, never matched).
        unmatched0 / unmatched1: [M] / [N] bool, points known to have no correspondence (occluded, outside).
    Returns:
        gt_matches0 [M], gt_matches1 [N] int64.
    """
    if match_px > unmatched_px:
        raise ValueError(f"match_px ({match_px}) must not exceed unmatched_px ({unmatched_px})")
    m, n = dist.shape
    gt0 = np.full(m, IGNORE, np.int64)
    gt1 = np.full(n, IGNORE, np.int64)
    dist = np.where(np.isnan(dist), np.inf, dist).astype(np.float64)
    if ignore0 is not None:
        dist[ignore0] = np.inf
    if ignore1 is not None:
        dist[:, ignore1] = np.inf
    if m == 0 or n == 0:
        gt0[:] = UNMATCHED
        gt1[:] = UNMATCHED
    else:
        nn0, nn1 = dist.argmin(1), dist.argmin(0)
        d0, d1 = dist[np.arange(m), nn0], dist[nn1, np.arange(n)]
        gt0[d0 > unmatched_px] = UNMATCHED
        gt1[d1 > unmatched_px] = UNMATCHED
        mutual = nn1[nn0] == np.arange(m)
        good = mutual & (d0 <= match_px)
        i0 = np.flatnonzero(good)
        gt0[i0] = nn0[i0]
        gt1[nn0[i0]] = i0
    for gt, forced in ((gt0, unmatched0), (gt1, unmatched1)):
        if forced is not None:
            gt[forced & (gt < 0)] = UNMATCHED
    if ignore0 is not None:
        gt0[ignore0] = IGNORE
    if ignore1 is not None:
        gt1[ignore1] = IGNORE
    return gt0, gt1


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    return np.where(np.isfinite(d), d, np.inf)


def matches_from_homography(kpts0: np.ndarray, kpts1: np.ndarray, H_0to1: np.ndarray, match_px: float = 3.0,
                            unmatched_px: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth by a homography.

    Args:
        kpts0 [M x 2], kpts1 [N x 2]: pixels; H_0to1: 3x3, image0 px -> image1 px.
    Returns:
        gt_matches0 [M], gt_matches1 [N] (index, -1 unmatched, -2 ignored).
    """
    kpts0 = np.asarray(kpts0, np.float64).reshape(-1, 2)
    kpts1 = np.asarray(kpts1, np.float64).reshape(-1, 2)
    H = np.asarray(H_0to1, np.float64)
    if H.shape != (3, 3):
        raise ValueError(f"H_0to1 must be 3x3, got {H.shape}")
    d1 = _pairwise(warp_points(H, kpts0), kpts1) if len(kpts0) else np.zeros((0, len(kpts1)))
    d0 = _pairwise(kpts0, warp_points(np.linalg.inv(H), kpts1)) if len(kpts1) else np.zeros((len(kpts0), 0))
    return assign(np.maximum(d0, d1), match_px, unmatched_px)


def _sample_depth(depth: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Depth at pixel positions (nearest pixel); NaN outside the image or where depth is invalid (<= 0, inf)."""
    h, w = depth.shape
    out = np.full(len(xy), np.nan)
    u, v = np.rint(xy[:, 0]), np.rint(xy[:, 1])
    inside = np.isfinite(u) & np.isfinite(v) & (u >= 0) & (v >= 0) & (u <= w - 1) & (v <= h - 1)
    d = depth[v[inside].astype(int), u[inside].astype(int)].astype(np.float64)
    d[~np.isfinite(d) | (d <= 0)] = np.nan
    out[inside] = d
    return out


def project(kpts: np.ndarray, depth_src: np.ndarray, K_src: np.ndarray, K_dst: np.ndarray,
            T_dst_src: np.ndarray, depth_dst: np.ndarray, rel_tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reproject keypoints with depth into the other camera.

    Returns:
        xy [N x 2] projected pixels (NaN where depth is missing), has_depth [N] bool (valid source depth),
        visible [N] bool (in front, inside the other image, and not occluded: the other depth agrees within rel_tol).
    """
    z = _sample_depth(depth_src, kpts)
    has_depth = np.isfinite(z)
    rays = np.c_[kpts, np.ones(len(kpts))] @ np.linalg.inv(K_src).T
    X = rays * z[:, None]
    Xd = X @ T_dst_src[:3, :3].T + T_dst_src[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        p = Xd @ np.asarray(K_dst, np.float64).T
        xy = p[:, :2] / p[:, 2:]
        zd = _sample_depth(depth_dst, xy)
        visible = has_depth & (Xd[:, 2] > 0) & np.isfinite(zd) & (np.abs(Xd[:, 2] - zd) / zd < rel_tol)
    xy[~has_depth | (Xd[:, 2] <= 0)] = np.nan
    return xy, has_depth, visible


def matches_from_depth(kpts0: np.ndarray, kpts1: np.ndarray, depth0: np.ndarray, depth1: np.ndarray,
                       K0: np.ndarray, K1: np.ndarray, T_0to1: np.ndarray, match_px: float = 3.0,
                       unmatched_px: float = 5.0, depth_rel_tol: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth by depth maps, intrinsics and the relative pose.

    Args:
        kpts0 [M x 2], kpts1 [N x 2]: pixels; depth0 [H0 x W0], depth1 [H1 x W1]: z-depth (<= 0, NaN or inf = no
        depth); K0, K1: 3x3; T_0to1: 4x4 taking camera-0 points to camera 1 (X1 = T_0to1 @ X0).
    Returns:
        gt_matches0 [M], gt_matches1 [N]. Points without valid depth are ignored (-2); points that are occluded
        or fall outside the other image are unmatched (-1); the rest follow `assign`.
    """
    kpts0 = np.asarray(kpts0, np.float64).reshape(-1, 2)
    kpts1 = np.asarray(kpts1, np.float64).reshape(-1, 2)
    T = np.asarray(T_0to1, np.float64)
    if T.shape not in ((4, 4), (3, 4)):
        raise ValueError(f"T_0to1 must be 4x4, got {T.shape}")
    T = np.r_[T[:3], [[0, 0, 0, 1]]]
    p01, has0, vis0 = project(kpts0, depth0, K0, K1, T, depth1, depth_rel_tol)
    p10, has1, vis1 = project(kpts1, depth1, K1, K0, np.linalg.inv(T), depth0, depth_rel_tol)
    dist = np.maximum(_pairwise(p01, kpts1), _pairwise(kpts0, p10))
    dist[~vis0] = np.inf
    dist[:, ~vis1] = np.inf
    return assign(dist, match_px, unmatched_px, ignore0=~has0, ignore1=~has1,
                  unmatched0=has0 & ~vis0, unmatched1=has1 & ~vis1)
