"""Simulated ORB-SLAM3 output on a rendered sequence: tracking state, keyframes, drifting poses, map points.

Frames: the SLAM map frame drifts away from the world: T_map_cam = D(l) @ T_world_cam, where D(l) is a
rigid transform (yaw about world z, a small tilt, a translation) that grows smoothly with the distance l
travelled while tracking (D(0) = I). Ground truth T_world_cam stays separate.

Drift rates are per metre travelled, so the error of a loop between two keyframes (the rotation of
D(l_query) D(l_match)^-1) grows like rate x the path length between them; the rates vary smoothly (0.5x to 1.5x)
along the path and average to the configured value over ~20 m. The defaults drift far less than real ORB-SLAM3;
`ORBSLAM3_DRIFT` holds real monocular ORB-SLAM3 levels (~1.2 deg/m rotation, 2 % translation):
`make_sequence(..., conf={"slam": dict(ORBSLAM3_DRIFT)})`.

Keyframes follow ORB-SLAM3's insertion in spirit: after enough motion or frames, but none while the camera
stands still (`kf_still_dist`, `kf_still_angle_deg`).

Map points of a keyframe are exact points of the scene: the ray of each keypoint (sub-pixel) intersected
with the plane seen at its nearest pixel, in the SLAM map frame, so they reproject onto their keypoints
with T_map_cam exactly (up to float32 rounding). Map-point ids are (plane id, 2 cm texture cell): the same
physical point seen from different keyframes gets the same id, but its position can differ by up to the
cell size (each keyframe stores its own exact ray intersection).
"""

from __future__ import annotations

import numpy as np

from agnostic_reloc.conf import merge_conf
from agnostic_reloc.features.keypoints import Keypoints
from agnostic_reloc.geometry import so3_exp
from agnostic_reloc.world.scene import Scene

default_conf = {
    "max_keypoints": 1000,  # ORB keypoints per frame (ORB-SLAM3's nFeatures)
    "kf_max_gap": 4,  # a keyframe at least every this many tracked frames
    "kf_max_dist": 0.3,  # ... or when the camera moved this far from the last keyframe (m)
    "kf_max_angle_deg": 10.0,  # ... or turned this much (deg)
    "kf_still_dist": 0.01,  # but no kf_max_gap keyframe while the camera moved less than this since the last
    "kf_still_angle_deg": 0.5,  # ... keyframe (m) and turned less than this (deg): none while parked; 0 = always
    "drift_yaw_deg_per_m": 0.08,  # mean yaw drift rate (deg per metre travelled); real ORB-SLAM3: ~1-1.3
    "drift_tilt_deg_per_m": 0.01,  # mean roll/pitch drift rate (deg per metre); real ORB-SLAM3: ~0.3
    "drift_trans_per_m": 0.013,  # mean translation drift rate (m per metre); real ORB-SLAM3: ~0.02
    "max_depth": 8.0,  # no map point beyond this depth (m)
    "depth_edge_ratio": 0.1,  # no map point where depths in the 3x3 neighbourhood differ by more (relative)
    "map_point_ratio": 0.7,  # fraction of valid keypoints that get a map point (ORB-SLAM3 maps a subset)
    "outlier_ratio": 0.0,  # fraction of map points replaced by random points in the room (gross outliers)
    "id_cell": 0.02,  # texture cell size for map-point ids (m)
}

# Real monocular ORB-SLAM3 drift (measured on held-out sequences: ~1-1.3 deg/m rotation; 1-3 % translation).
ORBSLAM3_DRIFT = {"drift_yaw_deg_per_m": 1.2, "drift_tilt_deg_per_m": 0.3, "drift_trans_per_m": 0.02}


def drift_transforms(T_world_cam: np.ndarray, tracked: np.ndarray, seed: int, conf: dict | None = None) -> np.ndarray:
    """Drift D [F x 4 x 4] (T_map_world) per frame: identity at the start, growing smoothly with the distance
    travelled over tracked frames (frames not tracked keep the last value).

    Args:
        T_world_cam: [F x 4 x 4] ground-truth poses; tracked: [F] bool.
    """
    c = merge_conf(default_conf, conf, "slam conf keys")
    rng = np.random.default_rng([seed, 23])
    sign = rng.choice([-1.0, 1.0])
    phase = rng.uniform(0, 2 * np.pi, 4)
    tilt_dir = rng.normal(size=2)
    tilt_dir /= np.linalg.norm(tilt_dir)
    alpha0 = rng.uniform(0, 2 * np.pi)
    F = len(T_world_cam)
    D = np.tile(np.eye(4), (F, 1, 1))
    yaw, tilt, trans, length = 0.0, 0.0, np.zeros(3), 0.0
    prev = None
    for i in range(F):
        if tracked[i]:
            if prev is not None:
                dl = float(np.linalg.norm(T_world_cam[i][:3, 3] - T_world_cam[prev][:3, 3]))
                length += dl
                # Rates vary smoothly (always positive) with the distance travelled.
                yaw += sign * np.radians(c["drift_yaw_deg_per_m"]) * (1 + 0.5 * np.sin(length / 3.0 + phase[0])) * dl
                tilt += np.radians(c["drift_tilt_deg_per_m"]) * (1 + 0.5 * np.sin(length / 4.0 + phase[1])) * dl
                alpha = alpha0 + 0.6 * np.sin(length / 5.0 + phase[2])
                direction = np.array([np.cos(alpha), np.sin(alpha), 0.15 * np.sin(length / 2.0 + phase[3])])
                trans = trans + c["drift_trans_per_m"] * direction * dl
            prev = i
        R = so3_exp([tilt * tilt_dir[0], tilt * tilt_dir[1], yaw])
        D[i, :3, :3] = R
        D[i, :3, 3] = trans
    return D


def select_keyframes(T_map_cam: list, conf: dict | None = None) -> np.ndarray:
    """[F] bool keyframe flags from SLAM poses (None = not tracked: never a keyframe).

    The first tracked frame after a loss is a keyframe; then a keyframe every `kf_max_gap` tracked frames
    or earlier when the motion since the last keyframe exceeds `kf_max_dist` / `kf_max_angle_deg`. Like
    ORB-SLAM3, no keyframe while the camera stands still: the every-`kf_max_gap` keyframe waits until the
    camera has moved `kf_still_dist` or turned `kf_still_angle_deg` since the last keyframe.
    """
    c = merge_conf(default_conf, conf, "slam conf keys")
    flags = np.zeros(len(T_map_cam), bool)
    last, since = None, 0
    for i, T in enumerate(T_map_cam):
        if T is None:
            last = None
            continue
        since += 1
        if last is None:
            flags[i], last, since = True, T, 0
            continue
        dist = np.linalg.norm(T[:3, 3] - last[:3, 3])
        cos = (np.trace(last[:3, :3].T @ T[:3, :3]) - 1) / 2
        ang = np.degrees(np.arccos(np.clip(cos, -1, 1)))
        still = dist < c["kf_still_dist"] and ang < c["kf_still_angle_deg"]
        if (since >= c["kf_max_gap"] and not still) or dist > c["kf_max_dist"] or ang > c["kf_max_angle_deg"]:
            flags[i], last, since = True, T, 0
    return flags


def map_points_for_keyframe(scene: Scene, keypoints: Keypoints, depth: np.ndarray, plane_id: np.ndarray,
                            K: np.ndarray, T_world_cam: np.ndarray, T_map_cam: np.ndarray,
                            rng: np.random.Generator, conf: dict | None = None
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map points of a keyframe's keypoints.

    Args:
        keypoints: N keypoints (pixels); depth, plane_id: the rendered [H x W] maps of the keyframe;
        K: [3 x 3]; T_world_cam: GT pose; T_map_cam: SLAM pose (both [4 x 4]).
    Returns:
        map_points [N x 3] float32 in the SLAM map frame (m), NaN rows where none;
        map_point_ids [N] int64, -1 where none (unique within the keyframe);
        outlier [N] bool, map point deliberately wrong (`outlier_ratio`).
    """
    c = merge_conf(default_conf, conf, "slam conf keys")
    n = len(keypoints)
    pts = np.full((n, 3), np.nan, np.float32)
    ids = np.full(n, -1, np.int64)
    outlier = np.zeros(n, bool)
    if n == 0:
        return pts, ids, outlier
    H, W = depth.shape
    xy = keypoints.xy.astype(np.float64)
    px = np.clip(np.round(xy[:, 0]).astype(int), 0, W - 1)
    py = np.clip(np.round(xy[:, 1]).astype(int), 0, H - 1)
    pid = plane_id[py, px].astype(np.int64)
    # Depth spread in the 3x3 neighbourhood (occlusion boundaries -> no map point).
    pad = np.pad(depth, 1, mode="edge")
    nb = np.stack([pad[py + dy, px + dx] for dy in range(3) for dx in range(3)])
    with np.errstate(invalid="ignore"):
        spread = (nb.max(0) - nb.min(0)) / nb.min(0)
    valid = (pid >= 0) & np.isfinite(spread) & (spread <= c["depth_edge_ratio"])
    valid &= depth[py, px] <= c["max_depth"]
    valid &= rng.random(n) < c["map_point_ratio"]
    # Exact ray-plane intersection in the world frame.
    R, o = T_world_cam[:3, :3], T_world_cam[:3, 3]
    rays = (np.column_stack([xy, np.ones(n)]) @ np.linalg.inv(K).T) @ R.T  # world directions, camera z = 1
    world = np.full((n, 3), np.nan)
    st = np.full((n, 2), np.nan)
    for p in np.unique(pid[valid]):
        sel = np.flatnonzero(valid & (pid == p))
        pl = scene.planes[int(p)]
        nrm = pl.normal
        lam = ((pl.origin - o) @ nrm) / (rays[sel] @ nrm)
        X = o + lam[:, None] * rays[sel]
        A = np.column_stack([pl.e1, pl.e2])
        st[sel] = np.linalg.lstsq(A, (X - pl.origin).T, rcond=None)[0].T
        world[sel] = X
        ok = (lam > 0) & (lam <= c["max_depth"])
        valid[sel[~ok]] = False
    T_map_world = T_map_cam @ np.linalg.inv(T_world_cam)
    map_pts = world @ T_map_world[:3, :3].T + T_map_world[:3, 3]
    pts[valid] = map_pts[valid]
    # Ids: (plane, texture cell); within a keyframe the strongest keypoint (first in order) keeps a repeated
    # id and the others lose their map point (a SLAM map point is observed once per keyframe).
    for i in np.flatnonzero(valid):
        pl = scene.planes[int(pid[i])]
        wm, hm = pl.size_m
        # packed into 31 bits (the contract's map_id is int32): 7 bits plane, 12 bits per cell axis
        qs = int(np.clip(np.floor(st[i, 0] * wm / c["id_cell"]), 0, 2**12 - 1))
        qt = int(np.clip(np.floor(st[i, 1] * hm / c["id_cell"]), 0, 2**12 - 1))
        ids[i] = ((int(pid[i]) % 128) << 24) | (qs << 12) | qt
    vi = np.flatnonzero(valid)
    _, first = np.unique(ids[vi], return_index=True)
    dup = np.setdiff1d(np.arange(len(vi)), first)
    ids[vi[dup]] = -1
    pts[vi[dup]] = np.nan
    vi = np.sort(vi[first])
    if c["outlier_ratio"] > 0 and len(vi):
        k = rng.random(len(vi)) < c["outlier_ratio"]
        lo, hi = scene.bounds
        rand = rng.uniform(lo, hi, (int(k.sum()), 3))
        pts[vi[k]] = (rand @ T_map_world[:3, :3].T + T_map_world[:3, 3]).astype(np.float32)
        outlier[vi[k]] = True
    return pts, ids, outlier
