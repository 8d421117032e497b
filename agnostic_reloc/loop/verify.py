"""Verification of one query / candidate pair: matches -> geometry -> a `Detection` (or None).

With map points on the candidate side the query pose is measured metrically by PnP against them (in the
SLAM map frame); without, the essential matrix gives the relative rotation and the translation direction.
Both loop detection and relocalization verify pairs here.

Frames: T_map_cam is camera-to-map. T_match_query maps query-camera coordinates to match-camera coordinates;
the correction C = T_map_query_measured @ inv(T_map_query_slam) is the transform that would move the drifted
SLAM pose of the query onto the pose measured against the older keyframe's map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import estimate_essential, estimate_pnp, invert_T
from ..types import Keyframe

# name: (default, description, (min, max) or None); engine conf section "verify"
OPTIONS = {
    "pnp_threshold_px": (3.0, "PnP inlier reprojection error (px)", (0.1, 50.0)),
    "essential_threshold_px": (1.5, "essential-matrix inlier error (px), for candidates without map points",
                               (0.1, 50.0)),
    "min_inlier_ratio": (0.25, "inliers / matches a candidate needs (higher: refuses more weak or aliased pairs)",
                         (0.0, 1.0)),
}


@dataclass
class Detection:
    """A verified candidate (loop acceptance decides whether it becomes a LoopClosure)."""

    kf_id: int  # query keyframe
    stamp: float  # query stamp (s)
    match_id: int  # candidate keyframe
    T_match_query: np.ndarray  # [4 x 4] query camera -> match camera (unit translation when not metric)
    T_map_query: np.ndarray  # [4 x 4] query pose measured against the candidate (SLAM map frame)
    covariance: np.ndarray  # [6 x 6] [rx ry rz tx ty tz]
    correspondences: np.ndarray  # [S x 2] int64 inlier (query, match) keypoint indices, SLAM rows only
    inliers: int
    ratio: float  # inliers / matches used by the estimator
    metric: bool  # True: PnP against map points; False: essential matrix
    correction: np.ndarray  # [4 x 4] T_map_query @ inv(query's SLAM T_map_cam)
    spread: float = 0.0  # share of a 4 x 4 grid of the query image that holds inliers
    ordinal: int = 0  # the query keyframe's insertion number (consistency counts keyframes, not seconds)


def pnp_pose(q: Keyframe, c: Keyframe, pairs: np.ndarray, min_inliers: int, conf: dict):
    """PnP of the query keypoints against the candidate's map points at `pairs` ([S x 2] keypoint indices).

    Returns (T_map_query [4 x 4], covariance [6 x 6] or None, inlier pairs [I x 2], inlier ratio) or None when the candidate has
    fewer than `min_inliers` matched map points, PnP fails, or the inlier ratio is below the conf's minimum.
    """
    if c.map_points is None or len(pairs) < min_inliers:
        return None
    xyz = c.map_points[pairs[:, 1]]
    has3d = np.isfinite(xyz).all(1)
    if has3d.sum() < min_inliers:
        return None
    sel = pairs[has3d]
    res = estimate_pnp(q.keypoints.xy[sel[:, 0]], xyz[has3d], q.K, conf["pnp_threshold_px"], min_inliers)
    if not res.success or res.num_inliers / len(sel) < conf["min_inlier_ratio"]:
        return None
    return invert_T(res.model), res.covariance, sel[res.inliers], res.num_inliers / len(sel)


def verify_pair(q: Keyframe, c: Keyframe, pairs: np.ndarray, min_inliers: int, conf: dict) -> Detection | None:
    """Geometry of one query / candidate pair: PnP on the candidate's map points, else the essential matrix.

    Args:
        q, c: query and candidate keyframes.
        pairs: [S x 2] int64 matched keypoint indices (query row, candidate row).
        min_inliers: inliers the pair needs.
        conf: the engine conf's `verify` section (`OPTIONS` of this module).
    """
    if len(pairs) < min_inliers:
        return None
    has3d = 0 if c.map_points is None else int(np.isfinite(c.map_points[pairs[:, 1]]).all(1).sum())
    if has3d >= min_inliers:
        pose = pnp_pose(q, c, pairs, min_inliers, conf)
        if pose is None:
            return None
        T_map_query, cov, inl_pairs, ratio = pose
        cov = cov if cov is not None else np.eye(6)
        T_match_query = invert_T(c.T_map_cam) @ T_map_query
        metric, num_inliers = True, len(inl_pairs)
    else:
        res = estimate_essential(q.keypoints.xy[pairs[:, 0]], c.keypoints.xy[pairs[:, 1]], q.K, c.K,
                                 conf["essential_threshold_px"], min_inliers)
        if not res.success:
            return None
        T_match_query = res.model  # T_1_0: query (0) -> match (1), unit translation
        T_map_query = c.T_map_cam @ T_match_query
        metric, inl_pairs, num_inliers = False, pairs[res.inliers], res.num_inliers
        ratio = res.num_inliers / len(pairs)
        if ratio < conf["min_inlier_ratio"]:
            return None
        cov = res.covariance if res.covariance is not None else np.eye(6)
    correction = T_map_query @ invert_T(q.T_map_cam)
    inl_pairs = inl_pairs[(inl_pairs[:, 0] < q.n_slam) & (inl_pairs[:, 1] < c.n_slam)]
    spread = inlier_spread(q.keypoints.xy[inl_pairs[:, 0]], q.image_size)
    return Detection(q.id, q.stamp, c.id, T_match_query, T_map_query, cov, inl_pairs.astype(np.int64),
                     num_inliers, ratio, metric, correction, spread)


def inlier_spread(xy: np.ndarray, image_size: tuple[int, int], grid: int = 4) -> float:
    """Share of the cells of a grid x grid partition of the image that hold at least one of the points [N x 2]."""
    if len(xy) == 0:
        return 0.0
    w, h = image_size
    cx = np.clip((np.asarray(xy)[:, 0] * grid / max(w, 1)).astype(int), 0, grid - 1)
    cy = np.clip((np.asarray(xy)[:, 1] * grid / max(h, 1)).astype(int), 0, grid - 1)
    return len(set(zip(cx.tolist(), cy.tolist()))) / float(grid * grid)


def projection_matches(q: Keyframe, T_map_query: np.ndarray, nb: Keyframe, skip_query_rows: np.ndarray,
                       radius_px: float, min_similarity: float, max_hamming: int,
                       pairs_out: list | None = None) -> tuple[int, int]:
    """Matches between the query and a keyframe found by projecting that keyframe's map points with a pose.

    Each map point of `nb` (SLAM rows with a finite point and a descriptor) is projected into the query camera
    with T_map_query ([4 x 4] query camera -> SLAM map) and matched to the most similar described query keypoint
    within `radius_px` (ALIKED: cosine >= min_similarity; ORB: Hamming <= max_hamming), each query keypoint at
    most once and never one of `skip_query_rows` (e.g. the inliers the pose was estimated from). ORB-SLAM3's
    SearchByProjection, with our descriptors.

    Returns (matches, map points of `nb` projected inside the query image): many points in view and few
    matches refute the pose. pairs_out: a list that receives (query keypoint row, map point [3]) per match.
    """
    from scipy.spatial import cKDTree

    if nb.map_points is None or nb.kept is None or q.kept is None:
        return 0, 0
    rows = nb.kept[nb.kept < nb.n_slam]
    sel = np.flatnonzero(nb.kept < nb.n_slam)
    xyz = nb.map_points[rows]
    ok = np.isfinite(xyz).all(1)
    rows, sel, xyz = rows[ok], sel[ok], xyz[ok].astype(np.float64)
    T_query_map = invert_T(T_map_query)
    pc = xyz @ T_query_map[:3, :3].T + T_query_map[:3, 3]
    front = pc[:, 2] > 1e-6
    uv = pc[front, :2] / pc[front, 2:3] * np.diag(q.K)[:2] + q.K[:2, 2]
    sel, xyz = sel[front], xyz[front]
    w, h = q.image_size
    inside = (uv[:, 0] >= 0) & (uv[:, 1] >= 0) & (uv[:, 0] <= w - 1) & (uv[:, 1] <= h - 1)
    uv, sel, xyz = uv[inside], sel[inside], xyz[inside]
    q_rows = np.flatnonzero(~np.isin(q.kept, skip_query_rows))  # indices into q.kept
    if len(uv) == 0 or len(q_rows) == 0:
        return 0, len(uv)
    tree = cKDTree(q.keypoints.xy[q.kept[q_rows]])
    learned = q.descriptors is not None and nb.descriptors is not None
    used: set[int] = set()
    count = 0
    for p, s, point in zip(uv, sel, xyz):
        near = tree.query_ball_point(p, radius_px)
        if not near:
            continue
        cand = q_rows[near]
        if learned:
            sims = np.asarray(q.descriptors[cand], np.float32) @ np.asarray(nb.descriptors[s], np.float32)
            order = np.argsort(-sims)
            good = [int(cand[i]) for i in order if sims[i] >= min_similarity]
        else:
            if q.orb_desc is None or nb.orb_desc is None or not nb.orb_valid[s]:
                continue
            dist = np.unpackbits(np.bitwise_xor(q.orb_desc[cand], nb.orb_desc[s]), axis=1).sum(1)
            dist = np.where(q.orb_valid[cand], dist, 256)
            order = np.argsort(dist)
            good = [int(cand[i]) for i in order if dist[i] <= max_hamming]
        for g in good:
            if g not in used:
                used.add(g)
                count += 1
                if pairs_out is not None:
                    pairs_out.append((int(q.kept[g]), point))
                break
    return count, len(uv)
