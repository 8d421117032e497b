"""The nouns every package shares, owned by no driver: the keyframe, the input events, the results.

Data flows one way: message or bag record -> `KeyframeEvent` / `QueryEvent` (io.events) -> engine (`Keyframe`
inside it) -> `LoopClosure` / `Relocalization` -> message, TF or JSON. A `RunResult` collects one run.

Keyframe: what the SLAM sent plus what we extracted, in the SLAM's own keypoint indexing.
Frames: `T_map_cam` maps camera coordinates to the SLAM map frame (camera-to-map, 4x4). Map points are
in the SLAM map frame. Keypoints keep the SLAM's row order; an ensemble keyframe appends keypoints of a
second detector after the first `n_slam` rows (their indices never leave the engine).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .features.keypoints import Keypoints


@dataclass
class Keyframe:
    """A keyframe.

    Attributes:
        id: keyframe id (unique in a map; the engine assigns it when the SLAM gives none).
        stamp: image stamp in seconds.
        keypoints: all keypoints, SLAM rows first (n_slam of them), ensemble rows after.
        n_slam: number of keypoints that came from the SLAM (indices reported outside refer to these).
        T_map_cam: [4 x 4] float64 camera-to-map pose from the SLAM (may drift).
        K: [3 x 3] float64 pinhole intrinsics of the (undistorted) keypoint coordinates.
        image_size: (W, H) pixels.
        map_points: [N x 3] float32 map-frame point per keypoint, NaN rows where none (or None).
        map_point_ids: [N] int64 SLAM map-point id per keypoint, -1 where none (or None).
        kept: [M] int64 indices into keypoints that have descriptors (survived suppression).
        descriptors: [M x D] float16 ALIKED descriptors of the kept keypoints.
        global_desc: [G] float32 L2-normalised global descriptor for retrieval.
        orb_desc: [M x 32] uint8 ORB descriptors of the kept keypoints (classic mode) or None.
        orb_valid: [M] bool, ORB descriptor exists (None when orb_desc is None).
        n_query_rows: keypoint rows at the end that exist only while the keyframe is a loop query (query-side
            ensemble); `stored()` drops them.
    """

    id: int
    stamp: float
    keypoints: Keypoints
    T_map_cam: np.ndarray
    K: np.ndarray
    image_size: tuple[int, int]
    n_slam: int = -1
    map_points: np.ndarray | None = None
    map_point_ids: np.ndarray | None = None
    kept: np.ndarray | None = None
    descriptors: np.ndarray | None = None
    global_desc: np.ndarray | None = None
    orb_desc: np.ndarray | None = None
    orb_valid: np.ndarray | None = None
    n_query_rows: int = 0

    def __post_init__(self) -> None:
        if self.n_slam < 0:
            self.n_slam = len(self.keypoints)

    @property
    def position(self) -> np.ndarray:
        """Camera centre in the map frame [3]."""
        return self.T_map_cam[:3, 3]

    def stored(self) -> "Keyframe":
        """The keyframe as the map keeps it: without its query-only rows (itself when it has none)."""
        if not self.n_query_rows:
            return self
        n = len(self.keypoints) - self.n_query_rows
        keep = None if self.kept is None else self.kept < n

        def rows(a):
            return None if a is None else a[:n]

        def described(a):
            return None if a is None or keep is None else a[keep]

        return Keyframe(self.id, self.stamp, self.keypoints.subset(np.arange(n)), self.T_map_cam, self.K,
                        self.image_size, self.n_slam, rows(self.map_points), rows(self.map_point_ids),
                        described(self.kept), described(self.descriptors), self.global_desc,
                        described(self.orb_desc), described(self.orb_valid))

    def has_map_points(self) -> bool:
        return self.map_points is not None and bool(np.isfinite(self.map_points[: self.n_slam]).all(1).any())

    def validate(self) -> None:
        """Raise ValueError naming the problem for a malformed keyframe."""
        n = len(self.keypoints)
        if self.n_slam == 0 or n == 0:
            raise ValueError(f"keyframe {self.id} has no keypoints")
        if not 0 < self.n_slam <= n:
            raise ValueError(f"keyframe {self.id}: n_slam={self.n_slam} but {n} keypoints")
        T = np.asarray(self.T_map_cam, np.float64)
        if T.shape != (4, 4) or not np.isfinite(T).all():
            raise ValueError(f"keyframe {self.id}: pose T_map_cam must be a finite 4x4 matrix")
        R = T[:3, :3]
        if np.abs(R @ R.T - np.eye(3)).max() > 1e-3 or np.linalg.det(R) < 0.99 or np.abs(T[3] - [0, 0, 0, 1]).max() > 1e-6:
            raise ValueError(f"keyframe {self.id}: pose rotation is not orthonormal (or last row is not 0 0 0 1)")
        K = np.asarray(self.K, np.float64)
        if K.shape != (3, 3) or not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ValueError(f"keyframe {self.id}: intrinsics K must be a 3x3 matrix with positive focal lengths")
        if not np.isfinite(self.stamp):
            raise ValueError(f"keyframe {self.id}: stamp is not finite")
        w, h = self.image_size
        self.keypoints.validate((h, w))
        if self.map_points is not None and np.shape(self.map_points) != (n, 3):
            raise ValueError(f"keyframe {self.id}: map_points has shape {np.shape(self.map_points)}, "
                             f"expected ({n}, 3) (one row per keypoint)")
        if self.map_point_ids is not None and len(self.map_point_ids) != n:
            raise ValueError(f"keyframe {self.id}: {len(self.map_point_ids)} map_point_ids for {n} keypoints")
        if self.kept is not None and self.descriptors is not None and len(self.kept) != len(self.descriptors):
            raise ValueError(f"keyframe {self.id}: {len(self.descriptors)} descriptors for {len(self.kept)} kept keypoints")


@dataclass
class KeyframeEvent:
    """A SLAM keyframe: keypoints in SLAM order, T_map_cam (camera-to-map), optional map points."""

    stamp: float
    image: np.ndarray
    keypoints: Keypoints
    T_map_cam: np.ndarray
    K: np.ndarray
    map_points: np.ndarray | None = None
    map_point_ids: np.ndarray | None = None
    kf_id: int | None = None


@dataclass
class QueryEvent:
    """A frame to relocalize (tracking lost); keypoints None -> detected with the configured detector."""

    stamp: float
    image: np.ndarray
    K: np.ndarray
    keypoints: Keypoints | None = None


@dataclass
class LoopClosure:
    """An accepted loop between a query keyframe and an older keyframe."""

    query_id: int
    query_stamp: float
    match_id: int
    match_stamp: float
    T_match_query: np.ndarray  # 4x4, query camera -> match camera (metric when `metric`)
    covariance: np.ndarray  # 6x6 [rx ry rz tx ty tz], right perturbation of T_match_query
    correspondences: np.ndarray  # [S x 2] int64 (query keypoint index, match keypoint index), SLAM rows
    inliers: int
    score: float
    metric: bool  # True: from PnP against map points; False: essential matrix (unit translation)


@dataclass
class Relocalization:
    """Result of a relocalization query; `success` False carries the reason."""

    stamp: float
    success: bool
    T_map_cam: np.ndarray | None = None
    covariance: np.ndarray | None = None
    inliers: int = 0
    matched_keyframes: list[int] = field(default_factory=list)
    reason: str = ""  # why it failed (empty on success)
    support: str = ""  # what made the pose certain (on success): agreeing candidates, a neighbour, confirmation

@dataclass
class RunResult:
    """Everything a driver collected from one run of the engine (replay, world evaluation, bridge)."""

    loops: list[LoopClosure] = field(default_factory=list)
    relocalizations: list[Relocalization] = field(default_factory=list)
    keyframes: dict[int, tuple[float, np.ndarray]] = field(default_factory=dict)  # id -> (stamp, T_map_cam)
    rejected: list[tuple[float, str]] = field(default_factory=list)  # (stamp, reason) of malformed input
    timing_ms: dict[str, list[float]] = field(default_factory=dict)

