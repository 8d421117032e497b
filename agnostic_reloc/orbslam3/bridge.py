"""Real ORB-SLAM3 (the `pyorbslam3` wheel) -> our message contract, and our relocalizations back into its map.

What pyorbslam3 0.1.1 exposes per tracked frame, and how each contract field is filled from it:
  - state and `pose_wc` (T_slam_cam) -> tracking_state, keyframe pose;
  - `tracked_keypoints()`: undistorted x, y of the frame's ORB keypoints, nothing else -> keypoints
    re-distorted to raw pixels; octave re-estimated by running our ORB-SLAM3-like extractor on the same image
    (nearest keypoint within `octave_radius_px`, else 0), angle -1, response 1, size 31 * 1.2^octave;
  - `tracked_map_points()`: world xyz of the map points tracked in the frame, without ids and not paired with
    keypoints -> each point is projected with the frame pose and paired with the nearest keypoint within
    `pair_radius_px` (one point per keypoint, closest wins); map_id -1 (unknown);
  - ORB-SLAM3's keyframes are not exposed -> the bridge selects keyframes itself from the pose
    (`kf_max_dist`, `kf_max_angle_deg`, `kf_max_gap`, like ORB-SLAM3's own insertion criteria in spirit).
A C++ wrapper around ORB-SLAM3 would publish KeyFrame::mvKeys (octave, angle, response), KeyFrame::mnId and
MapPoint::mnId directly (see the README's gap table).

Map frames: ORB-SLAM3 starts a new map (Atlas) when it stays lost; its poses then live in a new frame. The
bridge counts these maps (`epoch`); the first map is the contract's `map` frame. While the current map is not
anchored to it, frames are published as LOST (relocalization queries, no keyframes). A successful
relocalization of such a frame (`answer()`) anchors the map: T_map_slam = T_map_cam(reloc) @ inv(T_slam_cam),
and publishing resumes in the `map` frame. That is how our relocalizations answer ORB-SLAM3's lost frames.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..features.keypoints import Keypoints
from ..geometry import invert_T, rotation_angle_deg
from ..io.camera import CameraModel
from .settings import write_settings

logger = logging.getLogger(__name__)

default_conf = {
    "vocabulary": None,  # DBoW2 text vocabulary (ORBvoc.txt); None = the cached opencv-doc one (build-orb-vocabulary)
    "sensor": "auto",  # rgbd | monocular | auto (rgbd when the frames carry depth)
    "settings": {},  # overrides of orbslam3.settings.default_conf (nFeatures, FAST thresholds, ...)
    "kf_max_dist": 0.3,  # bridge keyframe after this much motion since the last one (m, SLAM units)
    "kf_max_angle_deg": 10.0,  # ... or this much rotation (deg)
    "kf_max_gap": 10,  # ... or after this many tracked frames
    "pair_radius_px": 2.0,  # a projected tracked map point pairs with the nearest keypoint within this (px)
    "octave": "estimate",  # estimate (our ORB-SLAM3-like extractor on the same image) | unknown (all 0)
    "octave_radius_px": 1.0,  # an extractor keypoint this close lends its octave
    "log_file": None,  # where ORB-SLAM3's stdout goes (None = a temp file; it prints a lot)
}
SENSORS = ("auto", "rgbd", "monocular")
_NEW_MAP_STATES = ("SYSTEM_NOT_READY", "NO_IMAGES_YET", "NOT_INITIALIZED")


class BridgeError(RuntimeError):
    """ORB-SLAM3 cannot be started or used (binding missing, vocabulary or settings invalid)."""


def import_pyorbslam3():
    """The pyorbslam3 module, or BridgeError saying what is missing (the wheel, or its GL/X11 libraries)."""
    try:
        import pyorbslam3
    except ImportError as exc:
        raise BridgeError(f"pyorbslam3 is not importable ({exc}); install it with `pip install pyorbslam3==0.1.1` "
                          f"and the GL/X11 runtime (Debian: apt install libgl1 libegl1 libopengl0 libglx0 libsm6 "
                          f"libice6 libx11-6 libxext6)") from None
    return pyorbslam3


@dataclass
class BridgeFrame:
    """What the bridge publishes for one frame (all in the contract's conventions).

    state: ORB-SLAM3's state name; published_state: what goes on the tracking_state topic (LOST while the
    current ORB-SLAM3 map is not anchored); T_slam_cam: ORB-SLAM3's pose (its current map) or None;
    T_map_cam: the pose in the contract's map frame or None; keypoints: raw-pixel keypoints (ORB-SLAM3 order);
    map_points [N x 3] (map frame, NaN = none) and map_point_ids [N] (-1) on keyframes only.
    """

    stamp_ns: int
    state: str
    published_state: str
    epoch: int
    T_slam_cam: np.ndarray | None
    T_map_cam: np.ndarray | None
    keypoints: Keypoints
    is_keyframe: bool = False
    map_points: np.ndarray | None = None
    map_point_ids: np.ndarray | None = None
    stats: dict = field(default_factory=dict)


def pair_map_points(xy_undist: np.ndarray, points_slam: np.ndarray, T_slam_cam: np.ndarray, K: np.ndarray,
                    radius_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Pair tracked map points with keypoints by projection.

    Args:
        xy_undist: [N x 2] undistorted keypoints (px); points_slam: [M x 3] map points (ORB-SLAM3 frame);
        T_slam_cam: [4 x 4] frame pose; K: [3 x 3]; radius_px: pairing radius.
    Returns:
        point_of [N] int64 row of the paired map point (-1 = none), err [N] float reprojection error (px, NaN).
    """
    from scipy.spatial import cKDTree

    n = len(xy_undist)
    point_of = np.full(n, -1, np.int64)
    err = np.full(n, np.nan)
    if n == 0 or len(points_slam) == 0:
        return point_of, err
    T_cam_slam = invert_T(T_slam_cam)
    Xc = points_slam.astype(np.float64) @ T_cam_slam[:3, :3].T + T_cam_slam[:3, 3]
    front = Xc[:, 2] > 1e-6
    uv = (Xc[front] / Xc[front, 2:3]) @ np.asarray(K, np.float64).T
    rows = np.flatnonzero(front)
    d, j = cKDTree(np.asarray(xy_undist, np.float64)).query(uv[:, :2], k=1, distance_upper_bound=radius_px)
    ok = np.isfinite(d)
    for r, jj, dd in sorted(zip(rows[ok], j[ok], d[ok]), key=lambda t: t[2]):  # closest point wins a keypoint
        if point_of[jj] < 0:
            point_of[jj], err[jj] = r, dd
    return point_of, err


def estimate_octaves(image: np.ndarray, xy_raw: np.ndarray, n_features: int, radius_px: float
                     ) -> tuple[np.ndarray, float]:
    """Octave per keypoint from our ORB-SLAM3-like extractor on the same image: [N] int32 and the matched
    fraction (keypoints without an extractor keypoint within radius_px get octave 0)."""
    from scipy.spatial import cKDTree

    from ..features.detectors import detect

    ours = detect(image, "orb", int(n_features) * 2)
    octave = np.zeros(len(xy_raw), np.int32)
    if len(ours) == 0 or len(xy_raw) == 0:
        return octave, 0.0
    d, j = cKDTree(ours.xy.astype(np.float64)).query(np.asarray(xy_raw, np.float64), k=1,
                                                      distance_upper_bound=radius_px)
    ok = np.isfinite(d)
    octave[ok] = ours.octave[j[ok]]
    return octave, float(ok.mean())


class _StdoutToFile:
    """Send file descriptor 1 (ORB-SLAM3's C++ prints) to a file while Python's sys.stdout keeps the terminal."""

    def __init__(self, path: Path) -> None:
        self.path = path
        sys.stdout.flush()
        self._saved = os.dup(1)
        self._log = open(path, "ab", buffering=0)
        os.dup2(self._log.fileno(), 1)
        self._py_stdout = sys.stdout
        sys.stdout = open(os.dup(self._saved), "w", buffering=1)

    def fileno(self) -> int:
        return self._log.fileno()

    def restore(self) -> None:
        if self._saved is None:
            return
        sys.stdout.flush()
        os.dup2(self._saved, 1)
        os.close(self._saved)
        self._saved = None
        sys.stdout.close()
        sys.stdout = self._py_stdout
        self._log.close()


class OrbSlam3Bridge:
    """Feed frames to ORB-SLAM3 and publish what it tracks under our contract (see the module docstring).

    Usage: `bridge = OrbSlam3Bridge(camera, conf, rgbd=True)`, then per frame `bf = bridge.track(ns, image,
    depth)`, `bridge.answer(stamp_ns, T_map_cam)` for a successful relocalization of a frame published as
    LOST, and `bridge.shutdown(out_dir)` at the end (writes ORB-SLAM3's keyframe trajectory when it has one).
    """

    def __init__(self, camera: CameraModel, conf: dict | None = None, rgbd: bool = True,
                 workdir: str | os.PathLike | None = None) -> None:
        c = {**default_conf, **(conf or {})}
        unknown = set(c) - set(default_conf)
        if unknown:
            raise ValueError(f"unknown bridge options {sorted(unknown)}")
        if c["sensor"] not in SENSORS:
            raise ValueError(f"bridge sensor must be one of {SENSORS}, got '{c['sensor']}'")
        if c["octave"] not in ("estimate", "unknown"):
            raise ValueError(f"bridge octave must be 'estimate' or 'unknown', got '{c['octave']}'")
        self.conf = c
        self.rgbd = rgbd if c["sensor"] == "auto" else c["sensor"] == "rgbd"
        pos = import_pyorbslam3()
        self.camera = camera
        # ORB-SLAM3 models plumb_bob and equidistant itself; anything else is rectified here first
        self.rectify = camera.distorted and camera.model not in ("plumb_bob", "equidistant")
        slam_camera = CameraModel.pinhole(camera.K, camera.width, camera.height) if self.rectify else camera
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="orbslam3_"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.settings_path = write_settings(self.workdir / "orbslam3_settings.yaml", slam_camera, self.rgbd,
                                            c["settings"])
        vocab = c["vocabulary"]
        if vocab is None:
            from .vocabulary import default_vocabulary

            vocab = default_vocabulary()
        vocab = Path(vocab)
        from .vocabulary import read_vocabulary_header

        try:
            self.vocabulary = {"path": str(vocab), **read_vocabulary_header(vocab, max_nodes=2000)}
        except ValueError as exc:
            raise BridgeError(str(exc)) from None
        self.log_path = Path(c["log_file"]) if c["log_file"] else self.workdir / "orbslam3.log"
        self._stdout = _StdoutToFile(self.log_path)
        t0 = time.perf_counter()
        sys.stderr.flush()
        saved_err = os.dup(2)  # the settings reader's notes ("optional parameter does not exist") go to the log too
        os.dup2(self._stdout.fileno(), 2)
        try:
            sensor = pos.Sensor.RGBD if self.rgbd else pos.Sensor.MONOCULAR
            self.slam = pos.Slam(str(vocab), str(self.settings_path), sensor)
        except Exception as exc:
            self._stdout.restore()
            raise BridgeError(f"ORB-SLAM3 did not start with vocabulary {vocab} and settings "
                              f"{self.settings_path}: {exc} (its log: {self.log_path})") from None
        finally:
            os.dup2(saved_err, 2)
            os.close(saved_err)
        self.load_s = time.perf_counter() - t0
        self.epoch = -1  # ORB-SLAM3 map counter; 0 = the first map = the contract's map frame
        self.anchors: dict[int, np.ndarray] = {}  # epoch -> T_map_slam
        self._was_new_map = True
        self._last_kf: tuple[np.ndarray, int] | None = None  # (T_slam_cam, frames since) of the last keyframe
        self._poses: OrderedDict[int, tuple[int, np.ndarray]] = OrderedDict()  # stamp -> (epoch, T_slam_cam)
        self.map_changes: list[int] = []  # stamps where ORB-SLAM3 reported a loop closure / merge / big BA
        self.track_ms: list[float] = []
        self.stats: dict[str, list] = {"paired_ratio": [], "pair_err_px": [], "octave_matched": [],
                                       "map_points": []}
        self._closed = False

    # ------------------------------------------------------------------ tracking
    def track(self, stamp_ns: int, image: np.ndarray, depth: np.ndarray | None = None) -> BridgeFrame:
        """Track one RGB uint8 frame (raw pixels; depth float32 metres, 0 = none, for RGB-D)."""
        if self._closed:
            raise BridgeError("the bridge is shut down")
        img = image
        if self.rectify:
            img, _ = self.camera.rectify(image, Keypoints(np.zeros((0, 2), np.float32)))
            if depth is not None:
                import cv2

                m = self.camera._maps  # filled by rectify
                depth = cv2.remap(depth, m[0], m[1], cv2.INTER_NEAREST) if m is not None else depth
        t0 = time.perf_counter()
        if self.rgbd:
            if depth is None:
                raise BridgeError(f"frame {stamp_ns} ns has no depth but the bridge runs ORB-SLAM3 in RGB-D mode")
            res = self.slam.track_rgbd(img, np.ascontiguousarray(depth, np.float32), stamp_ns / 1e9)
        else:
            res = self.slam.track_monocular(img, stamp_ns / 1e9)
        self.track_ms.append((time.perf_counter() - t0) * 1e3)
        state = res.state.name
        if self.slam.map_changed():
            self.map_changes.append(stamp_ns)
        ok = state in ("OK", "OK_KLT") and res.pose_valid and res.pose_wc is not None
        if state in _NEW_MAP_STATES:
            self._was_new_map = True
        if ok and self._was_new_map:
            self.epoch += 1
            self._was_new_map = False
            self._last_kf = None
            if self.epoch == 0:
                self.anchors[0] = np.eye(4)
        T_slam = np.asarray(res.pose_wc, np.float64) if ok else None
        if T_slam is not None:
            self._poses[stamp_ns] = (self.epoch, T_slam)
            while len(self._poses) > 500:
                self._poses.popitem(last=False)
        kxy = np.asarray(self.slam.tracked_keypoints(), np.float32).reshape(-1, 2)
        raw = self.camera.distort_points(kxy) if self.camera.distorted and not self.rectify else kxy
        raw = np.asarray(raw, np.float32).reshape(-1, 2)
        inside = ((raw[:, 0] >= 0) & (raw[:, 1] >= 0) & (raw[:, 0] <= self.camera.width - 1)
                  & (raw[:, 1] <= self.camera.height - 1))
        kxy, raw = kxy[inside], raw[inside]  # rows stay in ORB-SLAM3's order (a few border points dropped)
        octave, matched = np.zeros(len(raw), np.int32), float("nan")
        if self.conf["octave"] == "estimate" and len(raw):
            octave, matched = estimate_octaves(image, raw, self.conf["settings"].get("n_features", 1000),
                                               self.conf["octave_radius_px"])
        kpts = Keypoints(raw, octave, None, None, 31.0 * 1.2 ** octave.astype(np.float32))
        anchor = self.anchors.get(self.epoch) if ok else None
        T_map = anchor @ T_slam if anchor is not None else None
        published = state if anchor is not None or not ok else "LOST"
        bf = BridgeFrame(stamp_ns, state, published, self.epoch, T_slam, T_map, kpts)
        bf.stats = {"track_ms": self.track_ms[-1], "keypoints": len(kpts), "octave_matched": matched,
                    "tracked_points": int(res.num_tracked_points)}
        if T_map is not None and self._keyframe_due(T_slam):
            pts = np.asarray(self.slam.tracked_map_points(), np.float64).reshape(-1, 3)
            point_of, err = pair_map_points(kxy, pts, T_slam, self.camera.K, self.conf["pair_radius_px"])
            mp = np.full((len(kpts), 3), np.nan, np.float32)
            has = point_of >= 0
            mp[has] = (pts[point_of[has]] @ anchor[:3, :3].T + anchor[:3, 3]).astype(np.float32)
            bf.is_keyframe, bf.map_points, bf.map_point_ids = True, mp, np.full(len(kpts), -1, np.int64)
            self._last_kf = (T_slam, 0)
            bf.stats.update(map_points=len(pts), paired=int(has.sum()),
                            pair_err_px=float(np.nanmedian(err)) if has.any() else float("nan"))
            self.stats["map_points"].append(len(pts))
            self.stats["paired_ratio"].append(has.sum() / max(len(pts), 1))
            self.stats["pair_err_px"].extend(err[has].tolist())
        if not np.isnan(matched):
            self.stats["octave_matched"].append(matched)
        return bf

    def _keyframe_due(self, T_slam: np.ndarray) -> bool:
        if self._last_kf is None:
            return True
        T_last, since = self._last_kf
        since += 1
        self._last_kf = (T_last, since)
        c = self.conf
        delta = invert_T(T_last) @ T_slam
        return (since >= c["kf_max_gap"] or float(np.linalg.norm(delta[:3, 3])) > c["kf_max_dist"]
                or rotation_angle_deg(delta) > c["kf_max_angle_deg"])

    def answer(self, stamp_ns: int, T_map_cam: np.ndarray) -> bool:
        """A successful relocalization of the frame at stamp_ns (T_map_cam in the contract's map frame).

        Anchors the ORB-SLAM3 map that frame was tracked in, if it is not anchored yet and ORB-SLAM3 had a pose
        for it. Returns True when an anchor was set."""
        rec = self._poses.get(int(stamp_ns))
        if rec is None:
            return False
        epoch, T_slam = rec
        if epoch in self.anchors:
            return False
        self.anchors[epoch] = np.asarray(T_map_cam, np.float64) @ invert_T(T_slam)
        self._last_kf = None
        logger.info("ORB-SLAM3 map %d anchored to the map frame by the relocalization at %.3f s", epoch,
                    stamp_ns / 1e9)
        return True

    def summary(self) -> dict:
        """Pairing and octave statistics, latency and map bookkeeping of the run so far."""
        from ..eval.metrics import percentiles

        s = self.stats
        return {"maps": self.epoch + 1, "anchored_maps": sorted(self.anchors), "map_changes": len(self.map_changes),
                "map_change_stamps": [t / 1e9 for t in self.map_changes],
                "track_ms": percentiles(self.track_ms) if self.track_ms else {},
                "paired_ratio_mean": float(np.mean(s["paired_ratio"])) if s["paired_ratio"] else None,
                "pair_err_px_median": float(np.median(s["pair_err_px"])) if s["pair_err_px"] else None,
                "octave_matched_mean": float(np.mean(s["octave_matched"])) if s["octave_matched"] else None,
                "sensor": "rgbd" if self.rgbd else "monocular", "vocabulary": self.vocabulary,
                "vocabulary_load_s": self.load_s}

    def shutdown(self, out_dir: str | os.PathLike | None = None) -> dict:
        """Stop ORB-SLAM3; with `out_dir`, write its keyframe trajectory (TUM, its own final, loop-corrected
        poses of the current map) when it tracked at all (saving an empty map crashes ORB-SLAM3)."""
        if self._closed:
            return {}
        self._closed = True
        files = {}
        try:
            self.slam.shutdown()
            if out_dir is not None and self.epoch >= 0:
                out = Path(out_dir)
                out.mkdir(parents=True, exist_ok=True)
                self.slam.save_keyframe_trajectory_tum(str(out / "orbslam3_keyframes_tum.txt"))
                files["keyframes_tum"] = str(out / "orbslam3_keyframes_tum.txt")
        finally:
            self._stdout.restore()
        return files

    def __enter__(self) -> "OrbSlam3Bridge":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
