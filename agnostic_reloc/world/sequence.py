"""Rendered image sequences with exact ground truth and simulated ORB-SLAM3 output; save / load as plain files.

Frames and conventions: T_world_cam is the ground-truth camera-to-world pose; T_map_cam the SLAM's
(drifting) camera-to-map pose, None while LOST. Both 4x4 float64, metres. Map points are in the SLAM map frame.

Folder layout written by `save_sequence`:
    sequence.json     K, image size, seed, profile, conf, per-frame stamp / poses / flags / state
    groundtruth.txt   TUM rows `stamp tx ty tz qx qy qz qw` of T_world_cam (all frames)
    slam.txt          TUM rows of T_map_cam (tracked frames only)
    images/NNNNNN.png RGB images (lossless)
    depth/NNNNNN.npz  depth float32 [H x W] (m, inf = nothing) and plane_id int16 [H x W]
    features.npz      keypoints of all frames (concatenated, with offsets), map points / ids / outlier flags
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from agnostic_reloc.conf import merge_conf
from agnostic_reloc.features.detectors import detect
from agnostic_reloc.features.keypoints import Keypoints
from agnostic_reloc.geometry import rotation_angle_deg
from agnostic_reloc.io.image import load_image
from agnostic_reloc.io.tum import tum_row
from agnostic_reloc.world import scene as scene_mod
from agnostic_reloc.world import slam as slam_mod
from agnostic_reloc.world import trajectory as traj_mod
from agnostic_reloc.world.render import default_K, render

TRACKING_STATES = ("OK", "LOST", "NOT_INITIALIZED")

default_conf = {
    "camera": {"width": 640, "height": 480, "f": 500.0},  # pinhole: fx = fy = f, principal point at the centre
    "scene": dict(scene_mod.default_conf),  # see world/scene.py
    "trajectory": dict(traj_mod.default_conf),  # see world/trajectory.py
    "slam": dict(slam_mod.default_conf),  # see world/slam.py
    "keep_depth": True,  # keep depth and plane-id maps in the frames (2 MB per VGA frame)
}


@dataclass
class Frame:
    """One camera frame.

    Attributes:
        index: position in the sequence; stamp: seconds.
        image: RGB uint8 [H x W x 3]; depth: float32 [H x W] z-depth (m, inf = nothing) or None;
        plane_id: int16 [H x W] visible plane (-1 = none) or None.
        T_world_cam: [4 x 4] float64 ground truth; T_map_cam: [4 x 4] float64 SLAM pose or None (LOST).
        tracking_state: 'OK', 'LOST' or 'NOT_INITIALIZED'.
        is_keyframe, kidnapped: flags; lap: 0, 1 (laps), last lap + 1 for kidnapped frames.
        keypoints: ORB-SLAM3-like ORB keypoints (all frames).
        map_points: [N x 3] float32 SLAM-map-frame points, NaN rows where none (keyframes only, else None).
        map_point_ids: [N] int64, -1 where none (keyframes only, else None).
        map_point_outlier: [N] bool, map point deliberately wrong (keyframes only, else None).
    """

    index: int
    stamp: float
    image: np.ndarray
    T_world_cam: np.ndarray
    T_map_cam: np.ndarray | None
    tracking_state: str
    is_keyframe: bool
    kidnapped: bool
    lap: int
    keypoints: Keypoints
    depth: np.ndarray | None = None
    plane_id: np.ndarray | None = None
    map_points: np.ndarray | None = None
    map_point_ids: np.ndarray | None = None
    map_point_outlier: np.ndarray | None = None


@dataclass
class Sequence:
    """A rendered sequence.

    Attributes:
        frames: all frames in time order; K: [3 x 3] float64; image_size: (W, H);
        seed, profile, conf: what made it (conf fully expanded). scene: the room (None after loading).
    """

    frames: list[Frame]
    K: np.ndarray
    image_size: tuple[int, int]
    seed: int
    profile: str
    conf: dict
    scene: scene_mod.Scene | None = field(default=None, repr=False)

    def keyframes(self) -> list[Frame]:
        """Keyframes, in time order."""
        return [f for f in self.frames if f.is_keyframe]

    def queries(self) -> list[Frame]:
        """Relocalization queries: kidnapped or LOST frames."""
        return [f for f in self.frames if f.kidnapped or f.tracking_state == "LOST"]

    def gt_pose(self, stamp: float, tol: float = 1e-3) -> np.ndarray:
        """T_world_cam [4 x 4] of the frame at `stamp` (s, within tol); ValueError if there is none."""
        stamps = np.array([f.stamp for f in self.frames])
        i = int(np.argmin(np.abs(stamps - stamp))) if len(stamps) else -1
        if i < 0 or abs(stamps[i] - stamp) > tol:
            raise ValueError(f"no frame at stamp {stamp} s (within {tol} s)")
        return self.frames[i].T_world_cam.copy()

    def to_keyframe(self, frame: Frame, id: int | None = None):
        """agnostic_reloc.types.Keyframe of a tracked frame (id defaults to the frame index)."""
        from agnostic_reloc.types import Keyframe
        if frame.T_map_cam is None:
            raise ValueError(f"frame {frame.index} has no SLAM pose (tracking {frame.tracking_state})")
        return Keyframe(id=frame.index if id is None else int(id), stamp=frame.stamp, keypoints=frame.keypoints,
                        T_map_cam=frame.T_map_cam.copy(), K=self.K.copy(), image_size=self.image_size,
                        map_points=frame.map_points, map_point_ids=frame.map_point_ids)


def gt_revisits(seq: Sequence, max_dist: float = 1.0, max_angle_deg: float = 20.0, nearest_only: bool = True
                ) -> list[tuple[int, int, float, float]]:
    """Ground-truth revisits: for each keyframe of lap >= 1, the nearest (by GT position) earlier-lap keyframe
    within max_dist (m) and max_angle_deg (relative rotation), or every such keyframe if not `nearest_only`.
    Returns (frame index, lap-earlier frame index, distance m, angle deg) tuples."""
    kfs = seq.keyframes()
    out = []
    for f in kfs:
        if f.lap < 1 or f.kidnapped:
            continue
        found = []
        for g in kfs:
            if g.lap >= f.lap:
                continue
            d = float(np.linalg.norm(f.T_world_cam[:3, 3] - g.T_world_cam[:3, 3]))
            a = rotation_angle_deg(g.T_world_cam[:3, :3].T @ f.T_world_cam[:3, :3])
            if d <= max_dist and a <= max_angle_deg:
                found.append((f.index, g.index, d, a))
        if found and nearest_only:
            found = [min(found, key=lambda r: r[2])]
        out += found
    return out


def expand_conf(conf: dict | None) -> dict:
    """default_conf deep-updated with conf (one level of nesting); ValueError naming unknown keys."""
    out = merge_conf(default_conf, {k: v for k, v in (conf or {}).items() if not isinstance(default_conf.get(k), dict)},
                     "sequence conf keys")
    for key, value in (conf or {}).items():
        if isinstance(default_conf[key], dict):
            if not isinstance(value, dict):
                raise ValueError(f"sequence conf '{key}' must be a dict, got {type(value).__name__}")
            # a lighting dict inside a section is replaced whole, as the world's functions expect
            out[key] = merge_conf(default_conf[key], value, f"{key} conf keys",
                                  free=[k for k, v in default_conf[key].items() if isinstance(v, dict)])
    return out


@functools.lru_cache(maxsize=2)
def _cached_scene(seed: int, conf_json: str) -> scene_mod.Scene:
    return scene_mod.make_scene(seed, json.loads(conf_json))


def make_sequence(seed: int = 0, profile: str = "loop", n_frames: int | None = None, conf: dict | None = None,
                  progress: bool = True) -> Sequence:
    """Render a sequence with ground truth and simulated ORB-SLAM3 output (deterministic by seed).

    Args:
        seed: seeds the scene, trajectory, lighting noise, drift and map-point sampling.
        profile: 'loop', 'kidnap', 'mixed', 'corridor', 'parked' or 'small_room' (see world/trajectory.py;
            real ORB-SLAM3 drift: conf={"slam": dict(world.slam.ORBSLAM3_DRIFT)}).
        n_frames: total number of frames (None = profile default).
        conf: nested overrides of `default_conf`, e.g. {"camera": {"width": 320, "height": 240, "f": 250}}.
        progress: show a tqdm progress bar while rendering.
    Raises:
        PhotosMissing when the photo folder is absent; ValueError for bad arguments.
    """
    c = json.loads(json.dumps(expand_conf(conf)))  # tuples -> lists: the conf survives save / load unchanged
    cam = c["camera"]
    W, H = int(cam["width"]), int(cam["height"])
    if W < 32 or H < 32 or cam["f"] <= 0:
        raise ValueError(f"camera must be at least 32x32 px with a positive focal length, got {cam}")
    if n_frames is not None and int(n_frames) < 1:
        raise ValueError(f"n_frames must be positive, got {n_frames}")
    K = default_K(W, H, float(cam["f"]))
    scene = _cached_scene(int(seed), json.dumps(c["scene"], sort_keys=True))
    # Keyframes are selected from the camera motion (GT and SLAM agree locally); kidnapped segments are placed
    # near lap-1 keyframes.
    traj = traj_mod.make_trajectory(scene, profile, n_frames, seed, c["trajectory"],
                                    anchors=lambda poses: slam_mod.select_keyframes(list(poses), c["slam"]))
    tracked = ~traj.kidnapped
    D = slam_mod.drift_transforms(traj.T_world_cam, tracked, seed, c["slam"])
    T_map = [D[i] @ traj.T_world_cam[i] if tracked[i] else None for i in range(len(tracked))]
    kf = slam_mod.select_keyframes([T if ok else None for T, ok in zip(traj.T_world_cam, tracked)], c["slam"])
    rng = np.random.default_rng([seed, 31])
    frames = []
    iterator = range(len(tracked))
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, desc=f"rendering {profile} (seed {seed})", unit="frame")
    for i in iterator:
        T = traj.T_world_cam[i]
        image, depth, pid = render(scene, T, K, (W, H), traj.lighting[i])
        kpts = detect(image, "orb", int(c["slam"]["max_keypoints"]))
        mp = ids = out = None
        if kf[i]:
            mp, ids, out = slam_mod.map_points_for_keyframe(scene, kpts, depth, pid, K, T, T_map[i], rng, c["slam"])
        frames.append(Frame(
            index=i, stamp=float(traj.stamps[i]), image=image, T_world_cam=T.copy(), T_map_cam=T_map[i],
            tracking_state="OK" if tracked[i] else "LOST", is_keyframe=bool(kf[i]),
            kidnapped=bool(traj.kidnapped[i]), lap=int(traj.lap[i]), keypoints=kpts,
            depth=depth if c["keep_depth"] else None, plane_id=pid if c["keep_depth"] else None,
            map_points=mp, map_point_ids=ids, map_point_outlier=out))
    return Sequence(frames, K, (W, H), int(seed), profile, c, scene)


def save_sequence(seq: Sequence, folder: str | os.PathLike) -> Path:
    """Write `seq` to `folder` (created; existing files overwritten). Returns the folder path."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    meta_frames = []
    for f in seq.frames:
        name = f"{f.index:06d}"
        if not cv2.imwrite(str(folder / "images" / f"{name}.png"), cv2.cvtColor(f.image, cv2.COLOR_RGB2BGR)):
            raise ValueError(f"could not write {folder / 'images' / name}.png")
        if f.depth is not None:
            (folder / "depth").mkdir(exist_ok=True)
            np.savez_compressed(folder / "depth" / f"{name}.npz", depth=f.depth, plane_id=f.plane_id)
        meta_frames.append({
            "index": f.index, "stamp": f.stamp, "image": f"images/{name}.png",
            "depth": f"depth/{name}.npz" if f.depth is not None else None,
            "T_world_cam": f.T_world_cam.reshape(-1).tolist(),
            "T_map_cam": None if f.T_map_cam is None else f.T_map_cam.reshape(-1).tolist(),
            "tracking_state": f.tracking_state, "is_keyframe": f.is_keyframe, "kidnapped": f.kidnapped,
            "lap": f.lap, "scale_factor": f.keypoints.scale_factor,
        })
    meta = {"K": seq.K.tolist(), "image_size": list(seq.image_size), "seed": seq.seed, "profile": seq.profile,
            "conf": seq.conf, "frames": meta_frames}
    if seq.scene is not None:
        meta["alias_pairs"] = [list(p) for p in seq.scene.alias_pairs]
    (folder / "sequence.json").write_text(json.dumps(meta, indent=1))
    (folder / "groundtruth.txt").write_text(
        "# timestamp tx ty tz qx qy qz qw (T_world_cam)\n"
        + "".join(tum_row(f.stamp, f.T_world_cam) + "\n" for f in seq.frames))
    (folder / "slam.txt").write_text(
        "# timestamp tx ty tz qx qy qz qw (T_map_cam, tracked frames)\n"
        + "".join(tum_row(f.stamp, f.T_map_cam) + "\n" for f in seq.frames if f.T_map_cam is not None))
    kp = [f.keypoints for f in seq.frames]
    offsets = np.cumsum([0] + [len(k) for k in kp]).astype(np.int64)
    kfi = [f.index for f in seq.frames if f.map_points is not None]
    cat = lambda arrs, shape, dt: np.concatenate(arrs) if arrs else np.zeros(shape, dt)  # noqa: E731
    np.savez(folder / "features.npz", offsets=offsets,
             xy=cat([k.xy for k in kp], (0, 2), np.float32), octave=cat([k.octave for k in kp], (0,), np.int32),
             response=cat([k.response for k in kp], (0,), np.float32),
             angle=cat([k.angle for k in kp], (0,), np.float32), size=cat([k.size for k in kp], (0,), np.float32),
             mp_frames=np.array(kfi, np.int64),
             map_points=cat([seq.frames[i].map_points for i in kfi], (0, 3), np.float32),
             map_point_ids=cat([seq.frames[i].map_point_ids for i in kfi], (0,), np.int64),
             map_point_outlier=cat([seq.frames[i].map_point_outlier for i in kfi], (0,), bool))
    return folder


def load_sequence(folder: str | os.PathLike) -> Sequence:
    """Read a folder written by `save_sequence` (the scene is not stored: Sequence.scene is None)."""
    folder = Path(folder)
    path = folder / "sequence.json"
    if not path.is_file():
        raise ValueError(f"{folder} holds no sequence.json (not a saved sequence)")
    meta = json.loads(path.read_text())
    feats = np.load(folder / "features.npz")
    off = feats["offsets"]
    mp_rows = {int(i): r for r, i in enumerate(feats["mp_frames"])}
    mp_off = np.cumsum([0] + [int(off[i + 1] - off[i]) for i in feats["mp_frames"]])
    frames = []
    for k, m in enumerate(meta["frames"]):
        a, b = int(off[k]), int(off[k + 1])
        kpts = Keypoints(feats["xy"][a:b], feats["octave"][a:b], feats["response"][a:b], feats["angle"][a:b],
                         feats["size"][a:b], float(m["scale_factor"]))
        image = load_image(folder / m["image"])
        depth = pid = None
        if m.get("depth"):
            with np.load(folder / m["depth"]) as d:
                depth, pid = d["depth"], d["plane_id"]
        mp = ids = out = None
        if m["index"] in mp_rows:
            r = mp_rows[m["index"]]
            s, e = int(mp_off[r]), int(mp_off[r + 1])
            mp, ids, out = feats["map_points"][s:e], feats["map_point_ids"][s:e], feats["map_point_outlier"][s:e]
        frames.append(Frame(
            index=int(m["index"]), stamp=float(m["stamp"]), image=image,
            T_world_cam=np.array(m["T_world_cam"], np.float64).reshape(4, 4),
            T_map_cam=None if m["T_map_cam"] is None else np.array(m["T_map_cam"], np.float64).reshape(4, 4),
            tracking_state=m["tracking_state"], is_keyframe=bool(m["is_keyframe"]), kidnapped=bool(m["kidnapped"]),
            lap=int(m["lap"]), keypoints=kpts, depth=depth, plane_id=pid, map_points=mp, map_point_ids=ids,
            map_point_outlier=out))
    return Sequence(frames, np.array(meta["K"], np.float64), tuple(meta["image_size"]), int(meta["seed"]),
                    meta["profile"], meta["conf"])
