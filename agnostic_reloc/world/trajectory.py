"""Ground-truth camera trajectories in the room: `loop`, `kidnap` and `mixed` profiles.

All poses are T_world_cam [4 x 4] float64 (camera-to-world; camera x right, y down, z forward; world z up).

- loop: two laps along a rounded-rectangle path (superellipse) at ~1.5 m from the walls, looking
  mostly outward at the walls (yaw oscillating smoothly around the outward normal). Lap 2 revisits lap-1
  places from another viewpoint: shifted inward by 0.2-0.5 m, yaw offset up to `lap2_yaw_deg`, higher by
  `lap2_dz`, half a frame out of phase, and darker lighting.
- kidnap: one mapping lap, then `kidnap_segments` segments of `kidnap_segment_len` frames each, around
  a random pose near a lap-1 (key)frame and moving slowly, every frame within `kidnap_max_dist` (position)
  and about `kidnap_max_yaw_deg` (yaw; pitch +-3 deg) of that anchor; these frames are flagged kidnapped
  (the SLAM is LOST there).
- mixed: the two laps of `loop`, then the kidnapped segments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from agnostic_reloc.conf import merge_conf
from agnostic_reloc.world.scene import Scene

PROFILES = ("loop", "kidnap", "mixed")

default_conf = {
    "fps": 5.0,  # frame rate (Hz): stamps are index / fps (+ a gap before each kidnapping); 5 Hz = 0.7 m/s
    "frames_per_lap": 100,  # frames per lap when n_frames is not given (~0.14 m per frame)
    "path_margin": 1.5,  # distance from the path to the walls at the middle of each side (m)
    "path_exponent": 4.0,  # superellipse exponent of the path (2 = ellipse, larger = squarer)
    "height": 1.4,  # lap-1 camera height (m)
    "yaw_amp_deg": 20.0,  # yaw oscillation around the outward normal (deg)
    "yaw_periods": 3.0,  # yaw oscillations per lap
    "pitch_amp_deg": 4.0,  # pitch oscillation (deg)
    "roll_amp_deg": 1.5,  # roll oscillation (deg)
    "lap2_offset": (0.2, 0.5),  # lap-2 inward offset range (m), varying smoothly
    "lap2_yaw_deg": 15.0,  # lap-2 yaw offset amplitude (deg)
    "lap2_dz": 0.15,  # lap-2 height change (m)
    "lap2_lighting": {"gain": 0.6, "gamma": 1.2, "vignetting": 0.3, "noise_std": 3.0},  # darker lap 2
    "lap1_lighting": {"gain": 1.0, "gamma": 1.0, "vignetting": 0.15, "noise_std": 2.0},  # lap-1 lighting
    "kidnap_segments": 6,  # kidnapped segments (kidnap / mixed)
    "kidnap_segment_len": 5,  # frames per kidnapped segment
    "kidnap_max_dist": 0.5,  # teleport position within this distance of a lap-1 pose (m)
    "kidnap_max_yaw_deg": 20.0,  # and within this yaw of it (deg)
    "kidnap_speed": 0.05,  # camera motion within a kidnapped segment (m per frame)
    "kidnap_gap_s": 1.0,  # stamp gap before each kidnapped segment (s)
    "kidnap_lighting": ((0.6, 1.1), (0.9, 1.2)),  # (gain range, gamma range) of kidnapped segments
}


@dataclass
class Trajectory:
    """Per-frame ground truth.

    Attributes:
        T_world_cam: [F x 4 x 4] float64 camera-to-world poses.
        stamps: [F] float64 seconds, strictly increasing.
        lap: [F] int64, 0 = first (mapping) lap, 1 = second lap; kidnapped frames get the lap after the last.
        kidnapped: [F] bool, camera teleported (tracking LOST).
        segment: [F] int64 kidnapped-segment index, -1 for normal frames.
        lighting: per-frame lighting dicts (render.default_lighting keys; noise seed included).
    """

    T_world_cam: np.ndarray
    stamps: np.ndarray
    lap: np.ndarray
    kidnapped: np.ndarray
    segment: np.ndarray
    lighting: list[dict]


def look_pose(position: np.ndarray, yaw: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """T_world_cam [4 x 4] of a camera at `position` [3] (m) looking along yaw (rad, about world z from +x)
    and pitch (rad, positive up), rolled by `roll` (rad, about the optical axis)."""
    zc = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])
    xc = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
    yc = np.cross(zc, xc)
    R = np.column_stack([xc, yc, zc])
    cr, sr = np.cos(roll), np.sin(roll)
    R = R @ np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = position
    return T


class _Path:
    """Arc-length parametrised superellipse |x/a|^p + |y/b|^p = 1, counter-clockwise."""

    def __init__(self, a: float, b: float, p: float, n: int = 4000):
        th = np.linspace(0, 2 * np.pi, n + 1)
        c, s = np.cos(th), np.sin(th)
        xy = np.column_stack([a * np.sign(c) * np.abs(c) ** (2 / p), b * np.sign(s) * np.abs(s) ** (2 / p)])
        seg = np.linalg.norm(np.diff(xy, axis=0), axis=1)
        self.arc = np.concatenate([[0], np.cumsum(seg)])
        self.length = float(self.arc[-1])
        self.xy = xy

    def at(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Points [N x 2] and unit tangents [N x 2] at lap fractions u (wrapping)."""
        d = (np.asarray(u, np.float64) % 1.0) * self.length
        x = np.interp(d, self.arc, self.xy[:, 0])
        y = np.interp(d, self.arc, self.xy[:, 1])
        eps = 1e-3 * self.length
        x2 = np.interp((d + eps) % self.length, self.arc, self.xy[:, 0])
        y2 = np.interp((d + eps) % self.length, self.arc, self.xy[:, 1])
        x1 = np.interp((d - eps) % self.length, self.arc, self.xy[:, 0])
        y1 = np.interp((d - eps) % self.length, self.arc, self.xy[:, 1])
        tan = np.column_stack([x2 - x1, y2 - y1])
        return np.column_stack([x, y]), tan / np.linalg.norm(tan, axis=1, keepdims=True)


def _lap_poses(path: _Path, u: np.ndarray, c: dict, lap: int, phase: np.ndarray) -> np.ndarray:
    """[N x 4 x 4] poses at lap fractions u for lap 0 or 1."""
    xy, tan = path.at(u)
    outward = np.column_stack([tan[:, 1], -tan[:, 0]])  # right of the CCW direction
    yaw = np.arctan2(outward[:, 1], outward[:, 0]) + np.radians(c["yaw_amp_deg"]) * np.sin(
        2 * np.pi * c["yaw_periods"] * u + phase[0])
    pitch = np.radians(c["pitch_amp_deg"]) * np.sin(2 * np.pi * 5 * u + phase[1])
    roll = np.radians(c["roll_amp_deg"]) * np.sin(2 * np.pi * 7 * u + phase[2])
    z = np.full(len(u), c["height"]) + 0.03 * np.sin(2 * np.pi * 9 * u + phase[3])
    if lap == 1:
        lo, hi = c["lap2_offset"]
        off = (lo + hi) / 2 + (hi - lo) / 2 * np.sin(2 * np.pi * 2 * u + phase[4])
        xy = xy - outward * off[:, None]
        yaw = yaw + np.radians(c["lap2_yaw_deg"]) * np.sin(2 * np.pi * 2.5 * u + phase[5])
        z = z + c["lap2_dz"]
        pitch = pitch - np.radians(3.0)
    pos = np.column_stack([xy, z])
    return np.stack([look_pose(p, y, pi, r) for p, y, pi, r in zip(pos, yaw, pitch, roll)])


def make_trajectory(scene: Scene, profile: str = "loop", n_frames: int | None = None, seed: int = 0,
                    conf: dict | None = None, anchors: Callable[[np.ndarray], np.ndarray] | None = None
                    ) -> Trajectory:
    """Ground-truth trajectory in `scene` (deterministic by seed).

    Args:
        profile: 'loop', 'kidnap' or 'mixed'.
        n_frames: total number of frames (None = the profile's default from conf). The laps keep their
            shape, so fewer frames mean larger steps. Kidnapped frames take at most a quarter of them.
        anchors: maps the lap-1 poses [N x 4 x 4] to [N] bool flags of the poses a kidnapped segment may be
            placed near (make_sequence passes the SLAM keyframe selection); None = any lap-1 pose.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown trajectory profile '{profile}'; known: {', '.join(PROFILES)}")
    c = merge_conf(default_conf, conf, "trajectory conf keys")
    if c["fps"] <= 0:
        raise ValueError(f"fps must be positive, got {c['fps']}")
    rng = np.random.default_rng([seed, 7])
    n_laps = 1 if profile == "kidnap" else 2
    seg_len = int(c["kidnap_segment_len"])
    n_seg = int(c["kidnap_segments"]) if profile != "loop" else 0
    if n_seg and seg_len < 1:
        raise ValueError(f"kidnap_segment_len must be >= 1, got {seg_len}")
    if n_frames is None:
        n_lap_frames = [int(c["frames_per_lap"])] * n_laps
    else:
        n_frames = int(n_frames)
        if n_seg:
            n_seg = max(1, min(n_seg, (n_frames // 4) // seg_len))
        rest = n_frames - n_seg * seg_len
        if rest < 4 * n_laps:
            raise ValueError(f"n_frames={n_frames} is too small for profile '{profile}' "
                             f"(need at least {4 * n_laps + n_seg * seg_len})")
        n_lap_frames = [rest // n_laps + (1 if i < rest % n_laps else 0) for i in range(n_laps)]
    lo, hi = scene.bounds
    a = (hi[0] - lo[0]) / 2 - c["path_margin"]
    b = (hi[1] - lo[1]) / 2 - c["path_margin"]
    if a <= 0.2 or b <= 0.2:
        raise ValueError(f"path_margin={c['path_margin']} m leaves no room for a path in the scene")
    path = _Path(a, b, c["path_exponent"])
    phase = rng.uniform(0, 2 * np.pi, 6)
    u0 = rng.uniform(0, 1)
    poses, laps, lights = [], [], []
    for lap, n in enumerate(n_lap_frames):
        u = u0 + (np.arange(n) + 0.5 * lap) / n
        poses.append(_lap_poses(path, u, c, lap, phase))
        laps += [lap] * n
        lights += [dict(c["lap1_lighting"] if lap == 0 else c["lap2_lighting"]) for _ in range(n)]
    T = np.concatenate(poses)
    n_normal = len(T)
    lap1 = T[: n_lap_frames[0]]
    if anchors is not None and n_seg:
        flags = np.asarray(anchors(lap1), bool)
        lap1 = lap1[flags] if flags.any() else lap1
    half_motion = c["kidnap_speed"] * (seg_len - 1) / 2
    kid_poses, segments = [], []
    for k in range(n_seg):
        gain = rng.uniform(*c["kidnap_lighting"][0])
        gamma = rng.uniform(*c["kidnap_lighting"][1])
        for _ in range(1000):
            base = lap1[rng.integers(len(lap1))]
            d = rng.normal(size=3) * np.array([1, 1, 0.3])
            d *= rng.uniform(0, max(0.0, c["kidnap_max_dist"] - half_motion)) / np.linalg.norm(d)
            centre = base[:3, 3] + d
            fwd = base[:3, 2]
            yaw = np.arctan2(fwd[1], fwd[0]) + np.radians(rng.uniform(-1, 1) * max(0.0, c["kidnap_max_yaw_deg"] - 3))
            pitch = np.arcsin(np.clip(fwd[2], -1, 1)) + np.radians(rng.uniform(-3, 3))
            step = rng.normal(size=3) * np.array([1, 1, 0.2])
            step *= c["kidnap_speed"] / np.linalg.norm(step)
            start = centre - step * (seg_len - 1) / 2
            end = start + step * (seg_len - 1)
            if scene.inside_free_space(start, 0.3) and scene.inside_free_space(end, 0.3):
                break
        else:
            raise ValueError("could not place a kidnapped camera in free space (room too cluttered?)")
        dyaw = np.radians(rng.uniform(-1, 1)) * 4 / max(seg_len - 1, 1)  # slow turn, at most +-2 deg from the centre
        for i in range(seg_len):
            kid_poses.append(look_pose(start + step * i, yaw + dyaw * (i - (seg_len - 1) / 2), pitch))
            segments.append(k)
            lights.append({"gain": gain, "gamma": gamma, "vignetting": 0.2, "noise_std": 2.5})
    if kid_poses:
        T = np.concatenate([T, np.stack(kid_poses)])
    n = len(T)
    stamps = np.arange(n, dtype=np.float64) / c["fps"]
    seg = np.full(n, -1, np.int64)
    seg[n_normal:] = segments
    # A stamp gap before each kidnapped segment (the camera was carried somewhere else).
    starts = np.flatnonzero((seg >= 0) & (np.roll(seg, 1) != seg))
    for s0 in starts:
        stamps[s0:] += c["kidnap_gap_s"]
    stamps = np.round(stamps, 6)
    for i, light in enumerate(lights):
        light["seed"] = int(np.random.default_rng([seed, 11, i]).integers(2**31))
    lap_arr = np.array(laps + [n_laps] * len(kid_poses), np.int64)
    return Trajectory(T, stamps, lap_arr, seg >= 0, seg, lights)
