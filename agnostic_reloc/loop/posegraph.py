"""Pose-graph correction of SLAM keyframe poses with loop constraints (gtsam), and ATE / RPE (evo).

Conventions:
- T_a_b is a 4x4 float64 rigid transform taking points from frame b to frame a: X_a = T_a_b @ X_b.
- Keyframe poses are T_map_cam (camera -> SLAM map frame).
- A loop (query_id, match_id, T_match_query, cov) says where the query camera is in the match camera
  frame, i.e. the graph edge Between(match, query) = inv(T_map_match) @ T_map_query = T_match_query.
- Covariances are 6x6, rotation first [rx ry rz tx ty tz] (rad, m), in the tangent space of the pose
  with a right perturbation T <- T @ Exp(delta) (gtsam's Pose3 convention). Covariances from
  agnostic_reloc.geometry are left-perturbation ones: convert with covariance_left_to_right().
- 6-DoF graph (Pose3): the SLAM scale is taken as right. Monocular scale drift would need Sim3.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from agnostic_reloc.geometry import invert_T

POSEGRAPH_CONF = {
    "prior_rot_sigma": 1e-6,  # rad, prior fixing the first keyframe in `order` (gauge)
    "prior_trans_sigma": 1e-6,  # m
    "odom_rot_sigma": 0.01,  # rad per odometry edge (consecutive keyframes)
    "odom_trans_sigma": 0.02,  # m per odometry edge
    "odom_rot_sigma_per_m": 0.0,  # rad added per m travelled between the two keyframes
    "odom_trans_sigma_per_m": 0.0,  # m added per m travelled between the two keyframes
    "loop_rot_sigma": 0.02,  # rad, used when a loop comes with covariance None
    "loop_trans_sigma": 0.05,  # m, used when a loop comes with covariance None
    "loop_min_rot_sigma": 0.005,  # rad, floor on the loop's std in every rotation direction
    "loop_min_trans_sigma": 0.01,  # m, floor on the loop's std in every translation direction
    # Robust kernel on loop edges: "cauchy" (rejects wrong loops), "huber" (convex: always closes true loops,
    # but a wrong loop still pulls), "dcs", "none". A non-convex kernel weighs a loop residual against the
    # odometry sigmas: when those are much tighter than the real drift it may drop true loops too.
    "loop_kernel": "cauchy",
    "loop_kernel_k": 3.0,  # kernel width on the whitened (Mahalanobis) loop residual
    "huber_warm_start": True,  # cauchy / dcs: solve with Huber (same k) first, refine from there
    "max_iterations": 100,  # Levenberg-Marquardt iterations
    "relative_error_tol": 1e-6,  # LM stops when the relative decrease of the cost is below this
    "absolute_error_tol": 1e-9,  # LM stops when the decrease of the cost is below this
}


def _check_T(T, what: str) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise ValueError(f"{what} must be a finite 4x4 transform, got shape {T.shape}")
    return T


def _orthonormal(T: np.ndarray) -> np.ndarray:
    """Copy of T with its rotation projected onto SO(3) (gtsam.Pose3 needs a proper rotation)."""
    U, _, Vt = np.linalg.svd(T[:3, :3])
    R = U @ Vt
    if np.linalg.det(R) < 0:
        R = U @ np.diag([1.0, 1.0, -1.0]) @ Vt
    out = T.copy()
    out[:3, :3] = R
    out[3] = (0.0, 0.0, 0.0, 1.0)
    return out


def _pose3(T: np.ndarray):
    import gtsam

    return gtsam.Pose3(_orthonormal(T))


def covariance_left_to_right(T: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """6x6 covariance of a left perturbation Exp(d) @ T -> that of the right perturbation T @ Exp(d').

    d' = Ad(inv(T)) d, so cov' = Ad(inv(T)) cov Ad(inv(T))^T; both rotation first [rx ry rz tx ty tz].
    """
    T = _check_T(T, "T")
    cov = np.asarray(cov, dtype=np.float64)
    if cov.shape != (6, 6):
        raise ValueError(f"cov must be 6x6, got shape {cov.shape}")
    A = _pose3(T).inverse().AdjointMap()
    return A @ cov @ A.T


def floor_covariance(cov: np.ndarray | None, min_sigmas: np.ndarray) -> np.ndarray:
    """Symmetric PSD 6x6 covariance whose std in every direction is at least min_sigmas (per axis, [6]).

    Works in the axes scaled by min_sigmas: eigenvalues below 1 are raised to 1, so unit-mixed
    rotation/translation blocks are handled consistently. cov None -> diag(min_sigmas^2).
    """
    s = np.asarray(min_sigmas, dtype=np.float64).reshape(6)
    if np.any(s <= 0):
        raise ValueError(f"min_sigmas must be > 0, got {s}")
    if cov is None:
        return np.diag(s ** 2)
    cov = np.asarray(cov, dtype=np.float64)
    if cov.shape != (6, 6) or not np.all(np.isfinite(cov)):
        raise ValueError(f"loop covariance must be a finite 6x6 matrix, got shape {cov.shape}")
    C = 0.5 * (cov + cov.T) / np.outer(s, s)
    w, V = np.linalg.eigh(C)
    C = (V * np.maximum(w, 1.0)) @ V.T
    C = 0.5 * (C + C.T) * np.outer(s, s)
    return C


def _loop_noise(cov, c: dict, kernel: str):
    import gtsam

    floor = np.r_[[c["loop_min_rot_sigma"]] * 3, [c["loop_min_trans_sigma"]] * 3]
    if cov is None:
        base = np.r_[[c["loop_rot_sigma"]] * 3, [c["loop_trans_sigma"]] * 3]
        cov = np.diag(np.maximum(base, floor) ** 2)
    noise = gtsam.noiseModel.Gaussian.Covariance(floor_covariance(cov, floor))
    k = float(c["loop_kernel_k"])
    if kernel == "none":
        return noise
    if not k > 0:
        raise ValueError(f"loop_kernel_k must be > 0, got {k}")
    if kernel == "huber":
        est = gtsam.noiseModel.mEstimator.Huber.Create(k)
    elif kernel == "cauchy":
        est = gtsam.noiseModel.mEstimator.Cauchy.Create(k)
    elif kernel == "dcs":
        est = gtsam.noiseModel.mEstimator.DCS.Create(k)
    else:
        raise ValueError(f"loop_kernel must be 'huber', 'cauchy', 'dcs' or 'none', got {kernel!r}")
    return gtsam.noiseModel.Robust.Create(est, noise)


def optimize_pose_graph(poses: Mapping[int, np.ndarray], order: Sequence[int],
                        loops: Sequence[tuple[int, int, np.ndarray, np.ndarray | None]],
                        conf: dict | None = None,
                        fixed: Mapping[int, np.ndarray] | None = None) -> dict[int, np.ndarray]:
    """Correct keyframe poses with loop constraints; returns {id: corrected T_map_cam (4x4)} for ids in order.

    poses: keyframe id (int >= 0) -> T_map_cam from the SLAM; order: ids in temporal order (odometry edges
    join consecutive ones, keeping the SLAM relative pose; ids of `poses` not in `order` are left out).
    loops: (query_id, match_id, T_match_query, cov 6x6 or None) -> robust Between(match, query) factor with
    the covariance floored (see POSEGRAPH_CONF). The first id of `order` is held at its SLAM pose.
    fixed: optional keyframe id -> pose held where it is (e.g. a loaded map's keyframe at its corrected pose),
    outside the odometry chain; a loop may join one of them to a keyframe of `order` (not two fixed ones).
    When a loop does, the fixed poses set the frame instead of the first id of `order`, and the chain starts
    rigidly moved onto the first such loop.
    Levenberg-Marquardt from the SLAM poses.
    """
    import gtsam

    c = {**POSEGRAPH_CONF, **(conf or {})}
    unknown = set(c) - set(POSEGRAPH_CONF)
    if unknown:
        raise ValueError(f"unknown pose-graph conf keys {sorted(unknown)}")
    order = [int(i) for i in order]
    if not order:
        raise ValueError("order must list at least one keyframe id")
    if len(set(order)) != len(order):
        raise ValueError("order lists a keyframe id twice")
    missing = [i for i in order if i not in poses]
    if missing:
        raise ValueError(f"order has ids without a pose: {missing[:10]}")
    if min(order) < 0:
        raise ValueError("keyframe ids must be >= 0 (they are gtsam keys)")
    T = {i: _check_T(poses[i], f"poses[{i}]") for i in order}
    F = {int(i): _check_T(P, f"fixed[{i}]") for i, P in (fixed or {}).items()}
    if set(F) & set(order):
        raise ValueError(f"keyframes both fixed and in order: {sorted(set(F) & set(order))[:10]}")
    if F and min(F) < 0:
        raise ValueError("keyframe ids must be >= 0 (they are gtsam keys)")

    kernel = str(c["loop_kernel"]).lower()
    if kernel not in ("huber", "cauchy", "dcs", "none"):
        raise ValueError(f"loop_kernel must be 'huber', 'cauchy', 'dcs' or 'none', got {c['loop_kernel']!r}")
    in_graph = set(order) | set(F)
    checked = []
    shift = None  # T_fixed_slam: moves the chain onto the first loop to a fixed keyframe (initial values only)
    for n, loop in enumerate(loops):
        if len(loop) != 4:
            raise ValueError(f"loop {n} must be (query_id, match_id, T_match_query, covariance)")
        q, m = int(loop[0]), int(loop[1])
        if q not in in_graph or m not in in_graph:
            raise ValueError(f"loop {n} ({q} -> {m}) refers to a keyframe not in order")
        if q == m:
            raise ValueError(f"loop {n} joins keyframe {q} to itself")
        if q in F and m in F:
            raise ValueError(f"loop {n} ({q} -> {m}) joins two fixed keyframes")
        T_m_q = _check_T(loop[2], f"loop {n} T_match_query")
        if shift is None and m in F:
            shift = F[m] @ T_m_q @ invert_T(T[q])
        elif shift is None and q in F:
            shift = F[q] @ invert_T(T_m_q) @ invert_T(T[m])
        checked.append((q, m, _pose3(T_m_q), loop[3]))

    graph = gtsam.NonlinearFactorGraph()
    values = gtsam.Values()
    for i in order:
        values.insert(i, _pose3(T[i] if shift is None else shift @ T[i]))
    prior = gtsam.noiseModel.Diagonal.Sigmas(np.r_[[c["prior_rot_sigma"]] * 3, [c["prior_trans_sigma"]] * 3])
    anchors = sorted({k for q, m, _, _ in checked for k in (q, m) if k in F})
    for i in anchors:
        values.insert(i, _pose3(F[i]))
        graph.add(gtsam.PriorFactorPose3(i, _pose3(F[i]), prior))
    if not anchors:
        graph.add(gtsam.PriorFactorPose3(order[0], _pose3(T[order[0]]), prior))
    for a, b in zip(order[:-1], order[1:]):
        T_a_b = invert_T(T[a]) @ T[b]
        d = float(np.linalg.norm(T_a_b[:3, 3]))
        sig = np.r_[[c["odom_rot_sigma"] + c["odom_rot_sigma_per_m"] * d] * 3,
                    [c["odom_trans_sigma"] + c["odom_trans_sigma_per_m"] * d] * 3]
        if np.any(sig <= 0):
            raise ValueError("odometry sigmas must be > 0")
        graph.add(gtsam.BetweenFactorPose3(a, b, _pose3(T_a_b), gtsam.noiseModel.Diagonal.Sigmas(sig)))

    params = gtsam.LevenbergMarquardtParams()
    params.setMaxIterations(int(c["max_iterations"]))
    params.setRelativeErrorTol(float(c["relative_error_tol"]))
    params.setAbsoluteErrorTol(float(c["absolute_error_tol"]))
    stages = ["huber", kernel] if kernel in ("cauchy", "dcs") and c["huber_warm_start"] else [kernel]
    for stage in stages:
        g = graph.clone()
        for q, m, T_m_q, cov in checked:
            g.add(gtsam.BetweenFactorPose3(m, q, T_m_q, _loop_noise(cov, c, stage)))
        values = gtsam.LevenbergMarquardtOptimizer(g, values, params).optimize()
    return {i: np.asarray(values.atPose3(i).matrix(), dtype=np.float64) for i in order}


def _trajectory(poses: Mapping[float, np.ndarray], what: str):
    from evo.core.trajectory import PoseTrajectory3D

    if len(poses) < 2:
        raise ValueError(f"{what} needs at least 2 poses, got {len(poses)}")
    stamps = np.array(sorted(float(s) for s in poses), dtype=np.float64)
    by_stamp = {float(s): T for s, T in poses.items()}
    mats = [_orthonormal(_check_T(by_stamp[s], f"{what}[{s}]")) for s in stamps]
    return PoseTrajectory3D(poses_se3=mats, timestamps=stamps)


def ate_rpe(gt: Mapping[float, np.ndarray], est: Mapping[float, np.ndarray], align: str = "se3",
            max_dt: float = 0.01, rpe_delta: int = 1) -> dict[str, float]:
    """Absolute and relative trajectory errors with evo.

    gt: stamp (s) -> T_world_cam; est: stamp (s) -> T_map_cam; stamps associated to the nearest one within
    max_dt s. align: "se3" (Umeyama rigid), "sim3" (with scale), "origin" (first poses made equal) or "none"
    (map frame = world frame). Returns ate_rmse / ate_mean / ate_max (m, translation part after alignment),
    rpe_trans_rmse (m) and rpe_rot_rmse_deg over pairs rpe_delta associated poses apart, n_pairs.
    """
    from evo.core import metrics, sync

    if align not in ("se3", "sim3", "origin", "none"):
        raise ValueError(f"align must be 'se3', 'sim3', 'origin' or 'none', got {align!r}")
    ref, traj = _trajectory(gt, "gt"), _trajectory(est, "est")
    try:
        ref, traj = sync.associate_trajectories(ref, traj, max_diff=max_dt)
    except sync.SyncException as e:
        raise ValueError(f"could not associate gt and est stamps within {max_dt} s: {e}") from e
    if ref.num_poses < 2:
        raise ValueError(f"only {ref.num_poses} gt/est stamps match within {max_dt} s")
    if align in ("se3", "sim3"):
        traj.align(ref, correct_scale=align == "sim3")
    elif align == "origin":
        traj.align_origin(ref)
    ape = metrics.APE(metrics.PoseRelation.translation_part)
    ape.process_data((ref, traj))
    out = {"ate_rmse": float(ape.get_statistic(metrics.StatisticsType.rmse)),
           "ate_mean": float(ape.get_statistic(metrics.StatisticsType.mean)),
           "ate_max": float(ape.get_statistic(metrics.StatisticsType.max)),
           "n_pairs": int(ref.num_poses)}
    if ref.num_poses > rpe_delta:
        rpe = {}
        for key, rel in (("rpe_trans_rmse", metrics.PoseRelation.translation_part),
                         ("rpe_rot_rmse_deg", metrics.PoseRelation.rotation_angle_deg)):
            m = metrics.RPE(rel, delta=rpe_delta, delta_unit=metrics.Unit.frames, all_pairs=False)
            m.process_data((ref, traj))
            rpe[key] = float(m.get_statistic(metrics.StatisticsType.rmse))
        out.update(rpe)
    else:
        out.update(rpe_trans_rmse=math.nan, rpe_rot_rmse_deg=math.nan)
    return out
