"""Ground-truth correspondences between two keypoint sets: by homography, or by depth + pose + intrinsics.

Both return gt_matches0 [M] and gt_matches1 [N] (int64): index of the matching keypoint in the other image,
-1 = unmatched (no keypoint in the other image within `unmatched_px`), -2 = ignored (ambiguous, or no valid
depth). A match is a mutual nearest neighbour whose symmetric reprojection error (the larger of the errors
in image0 and image1) is at most `match_px`.

Multi-scale keypoints (ORB-SLAM3's 8-level pyramid, no suppression) put several keypoints of different octaves at
one place, which makes nearest-neighbour labels arbitrary (arXiv 2602.08430, first finding). Given the keypoints'
octaves (`levels`), a match also needs a compatible octave: the octave in image1 must be within `octave_tol` levels
of the one predicted from the local scale change (ORB-SLAM3 searches the predicted level +- 1 the same way). A point
with a geometric neighbour closer than `unmatched_px` that is not its match (an incompatible octave, or a
near-duplicate of a matched point) is ignored (-2), never a negative.
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
    "octave_tol": 1.0,  # multi-scale keypoints: octave within this many levels of the predicted one (None = off)
}


def octave_compatible(octave0: np.ndarray, octave1: np.ndarray, scale0: np.ndarray, scale_factor: float,
                      tol: float) -> np.ndarray:
    """[M x N] bool: keypoint j of image1 has an octave compatible with keypoint i of image0.

    Args:
        octave0 [M], octave1 [N]: pyramid levels (0 = full resolution).
        scale0 [M]: local scale change image0 -> image1 at each keypoint of image0 (> 1: bigger in image1; NaN =
            unknown, then every octave is compatible).
        scale_factor: pyramid scale between levels (ORB-SLAM3: 1.2); <= 1 (single-scale detector): all compatible.
        tol: levels of slack around the predicted level.
    """
    octave0 = np.asarray(octave0, np.float64).reshape(-1)
    octave1 = np.asarray(octave1, np.float64).reshape(-1)
    if scale_factor <= 1.0 or not len(octave0) or not len(octave1):
        return np.ones((len(octave0), len(octave1)), bool)
    top = max(float(octave0.max()), float(octave1.max()))
    with np.errstate(invalid="ignore", divide="ignore"):
        predicted = np.clip(octave0 + np.log(np.asarray(scale0, np.float64)) / np.log(scale_factor), 0.0, top)
    ok = np.abs(octave1[None, :] - predicted[:, None]) <= tol + 1e-9
    return ok | ~np.isfinite(predicted)[:, None]


def assign(dist: np.ndarray, match_px: float, unmatched_px: float, ignore0: np.ndarray | None = None,
           ignore1: np.ndarray | None = None, unmatched0: np.ndarray | None = None,
           unmatched1: np.ndarray | None = None, compatible: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Label keypoints from a distance matrix.

    Args:
        dist: [M x N] symmetric reprojection errors (px; inf = impossible).
        match_px, unmatched_px: thresholds (match_px <= unmatched_px).
        ignore0 / ignore1: [M] / [N] bool, points without ground truth (-> -2, never matched).
        unmatched0 / unmatched1: [M] / [N] bool, points known to have no correspondence (occluded, outside).
        compatible: [M x N] bool, pairs allowed to match (e.g. `octave_compatible`); incompatible neighbours still
            count as neighbours, so a point whose only close neighbours are incompatible is ignored, not unmatched.
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
        gt0[dist.min(1) > unmatched_px] = UNMATCHED
        gt1[dist.min(0) > unmatched_px] = UNMATCHED
        if compatible is not None:
            if compatible.shape != dist.shape:
                raise ValueError(f"compatible mask has shape {compatible.shape}, expected {dist.shape}")
            dist = np.where(compatible, dist, np.inf)
        nn0, nn1 = dist.argmin(1), dist.argmin(0)
        d0 = dist[np.arange(m), nn0]
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


def homography_scale(H: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Local linear scale of a homography at points [N x 2]: sqrt(|det J|) of the warp (> 1 = magnified)."""
    H = np.asarray(H, np.float64)
    p = np.c_[np.asarray(xy, np.float64).reshape(-1, 2), np.ones(len(xy))]
    w = p @ H[2]
    with np.errstate(divide="ignore", invalid="ignore"):  # det J = det H / w^3 for a homography
        return np.sqrt(np.abs(np.linalg.det(H) / w ** 3))


def matches_from_homography(kpts0: np.ndarray, kpts1: np.ndarray, H_0to1: np.ndarray, match_px: float = 3.0,
                            unmatched_px: float = 5.0, levels: tuple | None = None,
                            octave_tol: float | None = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth by a homography.

    Args:
        kpts0 [M x 2], kpts1 [N x 2]: pixels; H_0to1: 3x3, image0 px -> image1 px.
        levels: (octave0 [M], octave1 [N], scale_factor) of multi-scale keypoints, for `octave_compatible`
            (None, or octave_tol None: positions only).
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
    compatible = None
    if levels is not None and octave_tol is not None:
        compatible = octave_compatible(levels[0], levels[1], homography_scale(H, kpts0), levels[2], octave_tol)
    return assign(np.maximum(d0, d1), match_px, unmatched_px, compatible=compatible)


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


def _focal(K: np.ndarray) -> float:
    """Geometric mean focal length (px) of intrinsics K."""
    return float(np.sqrt(abs(np.linalg.det(np.asarray(K, np.float64)[:2, :2]))))


def project(kpts: np.ndarray, depth_src: np.ndarray, K_src: np.ndarray, K_dst: np.ndarray,
            T_dst_src: np.ndarray, depth_dst: np.ndarray, rel_tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reproject keypoints with depth into the other camera.

    Returns:
        xy [N x 2] projected pixels (NaN where depth is missing), has_depth [N] bool (valid source depth),
        visible [N] bool (in front, inside the other image, and not occluded: the other depth agrees within rel_tol),
        scale [N] local scale change source -> destination ((f_dst / z_dst) / (f_src / z_src); NaN without depth).
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
        scale = (_focal(K_dst) / Xd[:, 2]) / (_focal(K_src) / z)
    xy[~has_depth | (Xd[:, 2] <= 0)] = np.nan
    scale[~has_depth | (Xd[:, 2] <= 0)] = np.nan
    return xy, has_depth, visible, scale


def matches_from_depth(kpts0: np.ndarray, kpts1: np.ndarray, depth0: np.ndarray, depth1: np.ndarray,
                       K0: np.ndarray, K1: np.ndarray, T_0to1: np.ndarray, match_px: float = 3.0,
                       unmatched_px: float = 5.0, depth_rel_tol: float = 0.1, levels: tuple | None = None,
                       octave_tol: float | None = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth by depth maps, intrinsics and the relative pose.

    Args:
        kpts0 [M x 2], kpts1 [N x 2]: pixels; depth0 [H0 x W0], depth1 [H1 x W1]: z-depth (<= 0, NaN or inf = no
        depth); K0, K1: 3x3; T_0to1: 4x4 taking camera-0 points to camera 1 (X1 = T_0to1 @ X0).
        levels, octave_tol: as in `matches_from_homography` (scale change from the two depths).
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
    p01, has0, vis0, scale0 = project(kpts0, depth0, K0, K1, T, depth1, depth_rel_tol)
    p10, has1, vis1, _ = project(kpts1, depth1, K1, K0, np.linalg.inv(T), depth0, depth_rel_tol)
    dist = np.maximum(_pairwise(p01, kpts1), _pairwise(kpts0, p10))
    dist[~vis0] = np.inf
    dist[:, ~vis1] = np.inf
    compatible = None
    if levels is not None and octave_tol is not None:
        compatible = octave_compatible(levels[0], levels[1], scale0, levels[2], octave_tol)
    return assign(dist, match_px, unmatched_px, ignore0=~has0, ignore1=~has1,
                  unmatched0=has0 & ~vis0, unmatched1=has1 & ~vis1, compatible=compatible)
