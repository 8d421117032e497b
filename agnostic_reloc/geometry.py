"""Robust two-view and 2D-3D geometry with poselib's LO-RANSAC, plus pose covariances.

Conventions:
- T_a_b is a 4x4 rigid transform taking points from frame b to frame a: X_a = T_a_b @ X_b.
- Pose covariances are 6x6, rotation first, [rx, ry, rz, tx, ty, tz] (rad, model units), for a
  left perturbation of the estimated transform, T_a_b <- Exp(delta) @ T_a_b (delta in frame a).
  For PnP (T_cam_world) this is the camera frame, and is the same covariance as a right
  perturbation of T_world_cam: T_world_cam <- T_world_cam @ Exp(-delta) (g2o/ORB-SLAM3 style).
- Covariance = sigma^2 (J^T J)^-1 over inliers, sigma = inlier RMS error in px floored at 0.5 px.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import poselib

MIN_SIGMA_PX = 0.5
RANSAC_CONF = {"max_iterations": 10000, "min_iterations": 100, "success_prob": 0.9999, "seed": 0}
BUNDLE_CONF = {"loss_type": "CAUCHY", "max_iterations": 100}


@dataclass
class GeometryResult:
    """Outcome of a robust estimation.

    Attributes:
        success: True if a model with at least `min_inliers` inliers was found.
        model: 3x3 homography (pts0 -> pts1, H[2,2] = 1) or 4x4 rigid transform; NaNs when none.
        inliers: [M] bool, per input correspondence.
        num_inliers: inliers.sum().
        covariance: 6x6 pose covariance (see module docstring), 8x8 for a homography
            (its first 8 entries, row-major, with H[2,2] = 1), or None when not computable.
        reason: why it failed ('' on success).
    """

    success: bool
    model: np.ndarray
    inliers: np.ndarray
    num_inliers: int
    covariance: np.ndarray | None = None
    reason: str = ""


def T_from_Rt(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """4x4 float64 transform from rotation R [3 x 3] and translation t [3]."""
    R = np.asarray(R, np.float64)
    t = np.asarray(t, np.float64).reshape(-1)
    if R.shape != (3, 3) or t.shape != (3,):
        raise ValueError(f"T_from_Rt needs R 3x3 and t of 3 entries, got {R.shape} and {t.shape}")
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


def invert_T(T: np.ndarray) -> np.ndarray:
    """Inverse of a 4x4 rigid transform."""
    T = np.asarray(T, np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"invert_T needs a 4x4 transform, got shape {T.shape}")
    R, t = T[:3, :3], T[:3, 3]
    return T_from_Rt(R.T, -R.T @ t)


def rotation_angle_deg(R: np.ndarray) -> float:
    """Rotation angle (deg) of a 3x3 rotation (or the rotation block of a 4x4 transform)."""
    R = np.asarray(R, np.float64)[:3, :3]
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1.0, 1.0))))


def skew(v: np.ndarray) -> np.ndarray:
    """[... x 3] -> [... x 3 x 3] cross-product matrices."""
    v = np.asarray(v, np.float64)
    S = np.zeros(v.shape[:-1] + (3, 3))
    S[..., 0, 1], S[..., 0, 2] = -v[..., 2], v[..., 1]
    S[..., 1, 0], S[..., 1, 2] = v[..., 2], -v[..., 0]
    S[..., 2, 0], S[..., 2, 1] = -v[..., 1], v[..., 0]
    return S


def so3_exp(w: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation vector [3] -> 3x3."""
    w = np.asarray(w, np.float64)
    theta = np.linalg.norm(w)
    K = skew(w)
    if theta < 1e-12:
        return np.eye(3) + K
    return np.eye(3) + np.sin(theta) / theta * K + (1 - np.cos(theta)) / theta ** 2 * K @ K


def _points(name: str, pts, dim: int) -> np.ndarray:
    arr = np.asarray(pts, np.float64)
    if arr.size == 0:
        return arr.reshape(0, dim)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"{name} must have shape [M x {dim}], got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr).all(1))[0])
        raise ValueError(f"{name} has a non-finite value in row {bad}: {arr[bad].tolist()}")
    return arr


def _pair(n0: str, a, n1: str, b, d0: int, d1: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = _points(n0, a, d0), _points(n1, b, d1)
    if len(a) != len(b):
        raise ValueError(f"{n0} has {len(a)} rows but {n1} has {len(b)}; correspondences must align")
    return a, b


def _intrinsics(name: str, K) -> np.ndarray:
    K = np.asarray(K, np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"{name} must be a finite 3x3 intrinsics matrix with fx, fy > 0, got {K.tolist()}")
    return K


def _camera(K: np.ndarray) -> dict:
    """poselib camera dict for a pinhole K (width/height only matter for bookkeeping)."""
    return {"model": "PINHOLE", "width": int(max(1, round(2 * K[0, 2]))), "height": int(max(1, round(2 * K[1, 2]))),
            "params": [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]}


def _failure(m: int, size: int, reason: str) -> GeometryResult:
    return GeometryResult(False, np.full((size, size), np.nan), np.zeros(m, bool), 0, None, reason)


def _covariance(J: np.ndarray, residuals: np.ndarray, basis: np.ndarray | None = None) -> np.ndarray | None:
    """sigma^2 (J^T J)^-1 (in the subspace spanned by `basis` columns if given); None if singular."""
    if len(residuals) == 0:
        return None
    sigma = max(MIN_SIGMA_PX, float(np.sqrt(np.mean(residuals ** 2))))
    Jb = J if basis is None else J @ basis
    A = Jb.T @ Jb
    if not np.all(np.isfinite(A)) or np.linalg.cond(A) > 1e14:
        return None
    C = sigma ** 2 * np.linalg.inv(A)
    if basis is not None:
        C = basis @ C @ basis.T
    return 0.5 * (C + C.T)


def _homography_jacobian(H: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Transfer error of pts x under H: residual-Jacobian [2M x 8] wrt h (h9 = 1) and projections [M x 2]."""
    X = np.c_[x, np.ones(len(x))]
    p = X @ H.T
    w = p[:, 2:3]
    u = p[:, :2] / w
    J = np.zeros((len(x), 2, 8))
    J[:, 0, 0:3] = X / w
    J[:, 1, 3:6] = X / w
    J[:, :, 6] = -u * X[:, 0:1] / w
    J[:, :, 7] = -u * X[:, 1:2] / w
    return J.reshape(-1, 8), u


def estimate_homography(pts0: np.ndarray, pts1: np.ndarray, threshold: float = 3.0,
                        min_inliers: int = 8) -> GeometryResult:
    """Homography H with pts1 ~ H pts0 by LO-RANSAC (poselib).

    Args:
        pts0, pts1: [M x 2] matched pixel coordinates.
        threshold: inlier transfer error in px.
        min_inliers: fewer inliers than this -> success False.
    Returns:
        GeometryResult with model 3x3 (H[2,2] = 1) and an 8x8 covariance of H's first 8 entries.
    """
    pts0, pts1 = _pair("pts0", pts0, "pts1", pts1, 2, 2)
    m = len(pts0)
    if m < 4:
        return _failure(m, 3, f"too few correspondences for a homography: {m} < 4")
    H, info = poselib.estimate_homography(pts0, pts1, {**RANSAC_CONF, "max_reproj_error": float(threshold)},
                                          dict(BUNDLE_CONF))
    H = np.asarray(H, np.float64)
    inliers = np.asarray(info.get("inliers", np.zeros(m, bool)), bool).reshape(-1)
    if len(inliers) != m:
        inliers = np.zeros(m, bool)
    if not np.all(np.isfinite(H)) or abs(H[2, 2]) < 1e-12 or abs(np.linalg.det(H / H[2, 2])) < 1e-9:
        return _failure(m, 3, "homography estimation returned a degenerate model")
    H = H / H[2, 2]
    n_in = int(inliers.sum())
    J, proj = _homography_jacobian(H, pts0[inliers])
    cov = _covariance(J, (proj - pts1[inliers]).ravel())
    if n_in < min_inliers:
        return GeometryResult(False, H, inliers, n_in, cov, f"only {n_in} homography inliers (< {min_inliers})")
    return GeometryResult(True, H, inliers, n_in, cov, "")


def _pose_to_T(pose) -> np.ndarray:
    return T_from_Rt(np.asarray(pose.R), np.asarray(pose.t))


def _sampson_px(T: np.ndarray, x0: np.ndarray, x1: np.ndarray, K0: np.ndarray, K1: np.ndarray) -> np.ndarray:
    """Sampson epipolar error in px (first-order reprojection error) for T_1_0, per correspondence [M]."""
    E = skew(T[:3, 3]) @ T[:3, :3]
    F = np.linalg.inv(K1).T @ E @ np.linalg.inv(K0)
    X0 = np.c_[x0, np.ones(len(x0))]
    X1 = np.c_[x1, np.ones(len(x1))]
    Fx0 = X0 @ F.T
    Ftx1 = X1 @ F
    num = np.sum(X1 * Fx0, axis=1)
    den = np.sqrt(Fx0[:, 0] ** 2 + Fx0[:, 1] ** 2 + Ftx1[:, 0] ** 2 + Ftx1[:, 1] ** 2)
    return num / np.maximum(den, 1e-15)


def _perturb(T: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Exp(delta) @ T to first order in translation: R <- Exp(w) R, t <- Exp(w) t + v."""
    R = so3_exp(delta[:3])
    return T_from_Rt(R @ T[:3, :3], R @ T[:3, 3] + delta[3:])


def estimate_essential(pts0: np.ndarray, pts1: np.ndarray, K0: np.ndarray, K1: np.ndarray,
                       threshold: float = 1.5, min_inliers: int = 15) -> GeometryResult:
    """Relative pose from an essential matrix by LO-RANSAC (poselib, 5-point + refinement).

    Args:
        pts0, pts1: [M x 2] matched pixels in camera 0 and camera 1.
        K0, K1: 3x3 pinhole intrinsics.
        threshold: inlier epipolar (Sampson) error in px.
        min_inliers: fewer inliers than this -> success False.
    Returns:
        GeometryResult with model T_1_0 (camera 0 -> camera 1 points, unit-norm translation) and a 6x6
        covariance in camera 1's frame (left perturbation) from the Sampson-error Jacobian. The scale
        of t is not observable: the covariance has no variance along [0, 0, 0, t] (it lives in the
        5-D tangent space of the unit-translation gauge).
    """
    pts0, pts1 = _pair("pts0", pts0, "pts1", pts1, 2, 2)
    K0, K1 = _intrinsics("K0", K0), _intrinsics("K1", K1)
    m = len(pts0)
    if m < 5:
        return _failure(m, 4, f"too few correspondences for an essential matrix: {m} < 5")
    pose, info = poselib.estimate_relative_pose(
        pts0, pts1, _camera(K0), _camera(K1), {**RANSAC_CONF, "max_epipolar_error": float(threshold)},
        dict(BUNDLE_CONF))
    T = _pose_to_T(pose)
    inliers = np.asarray(info.get("inliers", np.zeros(m, bool)), bool).reshape(-1)
    if len(inliers) != m:
        inliers = np.zeros(m, bool)
    tn = np.linalg.norm(T[:3, 3])
    if not np.all(np.isfinite(T)) or tn < 1e-12:
        return _failure(m, 4, "relative pose estimation returned a degenerate model (no translation)")
    T[:3, 3] /= tn
    n_in = int(inliers.sum())
    cov = None
    if n_in >= 5:
        x0, x1 = pts0[inliers], pts1[inliers]
        r0 = _sampson_px(T, x0, x1, K0, K1)
        J = np.zeros((n_in, 6))
        eps = 1e-6
        for k in range(6):
            d = np.zeros(6)
            d[k] = eps
            plus = _sampson_px(_perturb(T, d), x0, x1, K0, K1)
            minus = _sampson_px(_perturb(T, -d), x0, x1, K0, K1)
            J[:, k] = (plus - minus) / (2 * eps)  # central differences
        gauge = np.r_[0, 0, 0, T[:3, 3]]
        basis = np.linalg.svd(np.eye(6) - np.outer(gauge, gauge))[0][:, :5]
        cov = _covariance(J, r0, basis)
    if n_in < min_inliers:
        return GeometryResult(False, T, inliers, n_in, cov, f"only {n_in} essential-matrix inliers (< {min_inliers})")
    return GeometryResult(True, T, inliers, n_in, cov, "")


def pnp_covariance(T_cam_world: np.ndarray, pts2d: np.ndarray, pts3d: np.ndarray, K: np.ndarray) -> np.ndarray | None:
    """6x6 covariance of T_cam_world from the analytic reprojection Jacobian (see module docstring).

    Args:
        T_cam_world: 4x4 pose; pts2d [M x 2] px; pts3d [M x 3] world points (inliers); K 3x3.
    Returns:
        sigma^2 (J^T J)^-1, rotation first, or None if singular / points behind the camera.
    """
    Pc = pts3d @ T_cam_world[:3, :3].T + T_cam_world[:3, 3]
    z = Pc[:, 2]
    if len(Pc) < 3 or np.any(z <= 1e-9):
        return None
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    proj = np.c_[fx * Pc[:, 0] / z + cx, fy * Pc[:, 1] / z + cy]
    dproj = np.zeros((len(Pc), 2, 3))
    dproj[:, 0, 0] = fx / z
    dproj[:, 0, 2] = -fx * Pc[:, 0] / z ** 2
    dproj[:, 1, 1] = fy / z
    dproj[:, 1, 2] = -fy * Pc[:, 1] / z ** 2
    dP = np.concatenate([-skew(Pc), np.broadcast_to(np.eye(3), (len(Pc), 3, 3))], axis=2)  # d(Exp(delta) P)/d delta
    J = (dproj @ dP).reshape(-1, 6)
    return _covariance(J, (proj - pts2d).ravel())


def estimate_pnp(pts2d: np.ndarray, pts3d: np.ndarray, K: np.ndarray, threshold: float = 3.0,
                 min_inliers: int = 15) -> GeometryResult:
    """Absolute pose from 2D-3D matches by LO-RANSAC (poselib P3P + refinement).

    Args:
        pts2d: [M x 2] pixels; pts3d: [M x 3] world points; K: 3x3 intrinsics.
        threshold: inlier reprojection error in px.
        min_inliers: fewer inliers than this -> success False.
    Returns:
        GeometryResult with model T_cam_world (world -> camera) and a 6x6 covariance
        [rx, ry, rz, tx, ty, tz] for T_cam_world <- Exp(delta) T_cam_world (delta in the camera
        frame; equivalently T_world_cam <- T_world_cam Exp(-delta), the same covariance).
    """
    pts2d, pts3d = _pair("pts2d", pts2d, "pts3d", pts3d, 2, 3)
    K = _intrinsics("K", K)
    m = len(pts2d)
    if m < 4:
        return _failure(m, 4, f"too few correspondences for PnP: {m} < 4")
    pose, info = poselib.estimate_absolute_pose(
        pts2d, pts3d, _camera(K), {**RANSAC_CONF, "max_reproj_error": float(threshold)}, dict(BUNDLE_CONF))
    T = _pose_to_T(pose)
    inliers = np.asarray(info.get("inliers", np.zeros(m, bool)), bool).reshape(-1)
    if len(inliers) != m:
        inliers = np.zeros(m, bool)
    if not np.all(np.isfinite(T)):
        return _failure(m, 4, "PnP returned a non-finite pose")
    n_in = int(inliers.sum())
    cov = pnp_covariance(T, pts2d[inliers], pts3d[inliers], K) if n_in >= 4 else None
    if n_in < min_inliers:
        return GeometryResult(False, T, inliers, n_in, cov, f"only {n_in} PnP inliers (< {min_inliers})")
    return GeometryResult(True, T, inliers, n_in, cov, "")
