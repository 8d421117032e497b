"""Ground-truth camera trajectories in the room: `loop`, `kidnap`, `mixed`, `corridor`, `parked`, `small_room`.

All poses are T_world_cam [4 x 4] float64 (camera-to-world; camera x right, y down, z forward; world z up).
Frame `lap` counts the passes: 0 for the first (mapping) pass, k for a pass that revisits the places of passes
< k (lit with `lap2_lighting`, darker, from lap 1 on). Stamps are index / fps.

- loop: two laps along a rounded-rectangle path (superellipse) at ~1.5 m from the walls, looking
  mostly outward at the walls (yaw oscillating smoothly around the outward normal). Lap 2 revisits lap-1
  places from another viewpoint: shifted inward by 0.2-0.5 m, yaw offset up to `lap2_yaw_deg`, higher by
  `lap2_dz`, half a frame out of phase, and darker lighting. With `lap2_night_from` < 1 the lights go out
  during lap 2: its frames from that fraction of the lap on are lit by `lap2_night_lighting` (dark, noisy,
  motion-blurred), so one revisit lap holds an easy part and a night part (`night_from_index`).
- kidnap: one mapping lap, then `kidnap_segments` segments of `kidnap_segment_len` frames each, around
  a random pose near a lap-1 (key)frame and moving slowly, every frame within `kidnap_max_dist` (position)
  and about `kidnap_max_yaw_deg` (yaw; pitch +-3 deg) of that anchor; these frames are flagged kidnapped
  (the SLAM is LOST there). With `kidnap_night` the segments are lit by night lighting levels in turn
  (`NIGHT_LIGHTING`: dark, noisy, motion-blurred) against the daylight map of lap 1.
- mixed: the two laps of `loop`, then the kidnapped segments.

Profiles unlike our own loop, for loops that must generalize (revisits seconds after the first pass, a
camera standing still, a drone). Their timing is in seconds (corridor, small_room: in real time at fps when
n_frames is None; parked: the stop), and pairs of frames on either side of a lap boundary (the turn, a loop's
start) also count as revisits in `gt_revisits`, a fraction of a second apart.
- corridor: a robot drives `corridor_length` m along one long wall, `path_margin` from it, turns around
  (`corridor_turn_s`) and drives back: places are revisited up to 2 * length / speed + turn seconds after the
  first pass (7.75 s with the defaults; half of them 2-6 s). The camera stays aimed at that wall, looking
  `corridor_look_ahead_deg` toward the driving direction, so the way back sees it from the other side (twice
  that angle apart) and `corridor_lane_shift` farther away; the turn swings the camera toward the corridor's
  end and back. Each pass is a lap (`corridor_passes` > 2 patrols back and forth; pass k then also revisits
  passes k - 2, ... with longer delays).
- parked: `loop` (laps of `frames_per_lap` frames) with a stop at `parked_at` of lap 1 for `parked_s`
  seconds (60 s: 300 frames at 5 Hz) where the camera stands (almost: `parked_sway`) still, then lap 2
  revisits everything, the parking spot included. With the default slam conf the simulated SLAM inserts no
  keyframe while parked (like ORB-SLAM3, see slam.py `kf_still_dist`): the keyframes before and after the
  stop are `parked_s` apart.
- small_room: a drone flying `small_room_loops` tight loops (radius `small_room_radius`, `small_room_loop_s`
  each) around a free spot of the room, looking outward with a swinging yaw, climbing through
  `small_room_heights`: each loop is a lap and revisits the previous one a loop (6 s) later, from ~0.2 m
  higher and another yaw. For a literally small room, shrink the scene (scene conf `length`, `width`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from agnostic_reloc.conf import merge_conf
from agnostic_reloc.world.scene import Scene

# Night lighting levels for kidnapped queries against a daylight map (trajectory conf "kidnap_night"): darker,
# noisier and more motion-blurred from level 1 to 3 (levels 2 and 3 are the night revisits of
# benchmarks/world_difficulty.py levels 4 and 5).
NIGHT_LIGHTING = (
    {"gain": 0.4, "gamma": 1.6, "vignetting": 0.35, "noise_std": 5.0, "blur_px": 3.0},
    {"gain": 0.3, "gamma": 1.8, "vignetting": 0.4, "noise_std": 6.0, "blur_px": 5.0},
    {"gain": 0.22, "gamma": 2.1, "vignetting": 0.45, "noise_std": 8.0, "blur_px": 9.0},
)

PROFILES = ("loop", "kidnap", "mixed", "corridor", "parked", "small_room")

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
    "lap2_night_from": 1.0,  # lap-2 frames from this fraction of the lap on are lit at night (1.0 = none)
    "lap2_night_lighting": dict(NIGHT_LIGHTING[2]),  # their lighting (default: the darkest night level)
    "kidnap_segments": 6,  # kidnapped segments (kidnap / mixed)
    "kidnap_segment_len": 5,  # frames per kidnapped segment
    "kidnap_max_dist": 0.5,  # teleport position within this distance of a lap-1 pose (m)
    "kidnap_max_yaw_deg": 20.0,  # and within this yaw of it (deg)
    "kidnap_speed": 0.05,  # camera motion within a kidnapped segment (m per frame)
    "kidnap_gap_s": 1.0,  # stamp gap before each kidnapped segment (s)
    "kidnap_lighting": ((0.6, 1.1), (0.9, 1.2)),  # (gain range, gamma range) of kidnapped segments
    "kidnap_night": (),  # lighting dicts cycled over the kidnapped segments (e.g. NIGHT_LIGHTING); empty = day
    "corridor_length": 2.5,  # corridor: length of the stretch driven along a long wall (m)
    "corridor_speed": 0.8,  # corridor: driving speed (m/s)
    "corridor_turn_s": 1.5,  # corridor: duration of each turn-around (s)
    "corridor_passes": 2,  # corridor: passes, alternating direction (2 = down, turn around, back)
    "corridor_look_ahead_deg": 8.0,  # corridor: camera yaw from the wall normal toward the driving direction
    "corridor_turn_sweep_deg": 50.0,  # corridor: the turn swings the camera this far toward the corridor's end
    "corridor_lane_shift": 0.3,  # corridor: return passes drive this much farther from the wall (m)
    "parked_s": 60.0,  # parked: how long the camera stands still (s)
    "parked_at": 0.5,  # parked: where in lap 1 it stops (lap fraction)
    "parked_sway": (0.002, 0.1),  # parked: residual motion while parked (m, deg amplitudes; 0 = frozen)
    "small_room_loops": 4,  # small_room: loops flown; loop k revisits loops < k
    "small_room_radius": 0.8,  # small_room: loop radius (m), varying +-8 % between loops
    "small_room_loop_s": 6.0,  # small_room: duration of one loop (s)
    "small_room_heights": (1.2, 2.0),  # small_room: height range (m) climbed over all loops
    "small_room_yaw_amp_deg": 20.0,  # small_room: yaw swing around the outward direction (deg)
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


def night_from_index(n: int, night_from: float) -> int:
    """Index of the first night frame of a revisit lap of n frames (n = none) for conf `lap2_night_from`."""
    return n if night_from >= 1.0 else int(np.ceil(night_from * n - 1e-9))


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


def facing_pose(corners: np.ndarray, distance: float, height: float = 1.4) -> np.ndarray:
    """T_world_cam [4 x 4] of a camera `distance` m in front of a plane's centre (corners [4 x 3], the room side
    being the one that faces the point (0, 0, height)), at `height` m, looking at that centre."""
    centre = corners.mean(0)
    normal = np.cross(corners[1] - corners[0], corners[3] - corners[0])
    normal /= np.linalg.norm(normal)
    if np.dot(normal, np.array([0.0, 0.0, height]) - centre) < 0:  # towards the room
        normal = -normal
    eye = centre + distance * normal
    eye[2] = height
    view = centre - eye
    return look_pose(eye, np.arctan2(view[1], view[0]), np.arcsin(view[2] / np.linalg.norm(view)))


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


def _room_path(scene: Scene, c: dict) -> _Path:
    """The laps' superellipse, `path_margin` from the walls at the middle of each side."""
    lo, hi = scene.bounds
    a = (hi[0] - lo[0]) / 2 - c["path_margin"]
    b = (hi[1] - lo[1]) / 2 - c["path_margin"]
    if a <= 0.2 or b <= 0.2:
        raise ValueError(f"path_margin={c['path_margin']} m leaves no room for a path in the scene")
    return _Path(a, b, c["path_exponent"])


def _frame_times(duration: float, n_frames: int | None, fps: float, profile: str, endpoint: bool = True
                 ) -> np.ndarray:
    """Times (s, in the profile's own clock) of the frames over [0, duration] (or [0, duration) without
    `endpoint`): every 1 / fps, or n_frames evenly spread."""
    if n_frames is None:
        n = int(np.floor(duration * fps + 1e-9)) + 1
        return np.arange(n if endpoint else int(np.ceil(duration * fps - 1e-9))) / fps
    if n_frames < 8:
        raise ValueError(f"n_frames={n_frames} is too small for profile '{profile}' (need at least 8)")
    return np.linspace(0.0, duration, n_frames, endpoint=endpoint)


def _corridor(scene: Scene, n_frames: int | None, rng: np.random.Generator, c: dict) -> tuple:
    """(poses [F x 4 x 4], laps [F]) of the `corridor` profile."""
    length, speed, turn = float(c["corridor_length"]), float(c["corridor_speed"]), float(c["corridor_turn_s"])
    passes, shift = int(c["corridor_passes"]), float(c["corridor_lane_shift"])
    if length <= 0 or speed <= 0 or turn < 0 or passes < 2:
        raise ValueError(f"corridor needs corridor_length > 0, corridor_speed > 0, corridor_turn_s >= 0 and "
                         f"corridor_passes >= 2, got {length}, {speed}, {turn}, {passes}")
    lo, hi = scene.bounds
    x_lo, x_hi = lo[0] + 1.0, hi[0] - 1.0  # stay 1 m from the end walls
    if x_hi - x_lo < length:
        raise ValueError(f"corridor_length={length} m does not fit along the room ({x_hi - x_lo:.1f} m free)")
    side = float(rng.choice([-1.0, 1.0]))  # the wall looked at: world +y (1) or -y (-1)
    wall_y = hi[1] if side > 0 else lo[1]
    lanes = [wall_y - side * (c["path_margin"] + shift * (k % 2)) for k in range(passes + 1)]
    first_dir = float(rng.choice([-1.0, 1.0]))
    x0 = rng.uniform(x_lo, x_hi - length) + (length if first_dir < 0 else 0.0)
    phase = rng.uniform(0, 2 * np.pi, 4)
    t_pass = length / speed
    t = _frame_times(passes * t_pass + (passes - 1) * turn, n_frames, c["fps"], "corridor")
    wall_yaw = side * np.pi / 2
    look = np.radians(c["corridor_look_ahead_deg"])
    sweep = np.radians(c["corridor_turn_sweep_deg"])
    poses, laps = [], []
    for ti in t:
        k = min(int(ti // (t_pass + turn)), passes - 1)
        tau = ti - k * (t_pass + turn)
        direction = first_dir * (-1) ** k
        start = x0 if k % 2 == 0 else x0 + first_dir * length
        # yaw toward the driving direction: wall_yaw - side * direction * angle
        if tau <= t_pass or k == passes - 1:
            x, y = start + direction * speed * min(tau, t_pass), lanes[k]
            yaw = wall_yaw - side * direction * look
            laps.append(k)
        else:  # turning around at the end of pass k: a small U to the next lane, the camera swinging to the end
            s = (tau - t_pass) / turn if turn > 0 else 1.0
            x = start + direction * (length + max(shift, 0.2) / 2 * np.sin(np.pi * s))
            y = lanes[k] + (lanes[k + 1] - lanes[k]) * (1 - np.cos(np.pi * s)) / 2
            yaw = wall_yaw - side * direction * (look * np.cos(np.pi * s) + sweep * np.sin(np.pi * s))
            laps.append(k if s < 0.5 else k + 1)
        yaw += np.radians(3.0) * np.sin(2 * np.pi * ti / 3.7 + phase[0])
        pitch = np.radians(2.0) * np.sin(2 * np.pi * ti / 2.9 + phase[1])
        roll = np.radians(1.0) * np.sin(2 * np.pi * ti / 2.3 + phase[2])
        z = c["height"] + 0.01 * np.sin(2 * np.pi * ti / 1.3 + phase[3])
        poses.append(look_pose(np.array([x, y, z]), yaw, pitch, roll))
    if not all(scene.inside_free_space(T[:3, 3], 0.3) for T in poses):
        raise ValueError(f"the corridor path (path_margin={c['path_margin']} m, corridor_lane_shift={shift} m) "
                         f"leaves the free space of the room")
    return np.stack(poses), laps


def _parked(scene: Scene, n_frames: int | None, rng: np.random.Generator, c: dict) -> tuple:
    """(poses [F x 4 x 4], laps [F]) of the `parked` profile: `loop` with a stop in lap 1."""
    n_park = int(np.ceil(c["parked_s"] * c["fps"] - 1e-9))
    if n_park < 1 or not 0 <= c["parked_at"] <= 1:
        raise ValueError(f"parked needs parked_s > 0 and 0 <= parked_at <= 1, got {c['parked_s']}, "
                         f"{c['parked_at']}")
    if n_frames is None:
        n_laps = [int(c["frames_per_lap"])] * 2
    else:
        rest = n_frames - n_park
        if rest < 8:
            raise ValueError(f"n_frames={n_frames} is too small for profile 'parked' (a parked_s={c['parked_s']} s "
                             f"stop alone takes {n_park} frames at {c['fps']} Hz; need at least {n_park + 8})")
        n_laps = [rest - rest // 2, rest // 2]
    path = _room_path(scene, c)
    phase = rng.uniform(0, 2 * np.pi, 6)
    u0 = rng.uniform(0, 1)
    lap1, lap2 = (_lap_poses(path, u0 + (np.arange(n) + 0.5 * lap) / n, c, lap, phase)
                  for lap, n in enumerate(n_laps))
    j = int(np.clip(round(c["parked_at"] * n_laps[0]), 0, n_laps[0] - 1))  # arrives at frame j, then stands
    sway_m, sway_deg = c["parked_sway"]
    sway_phase = rng.uniform(0, 2 * np.pi, 4)
    ts = np.arange(1, n_park + 1) / c["fps"]
    envelope = np.sin(np.pi * np.arange(1, n_park + 1) / (n_park + 1))  # starts and ends at the lap's pose
    parked = []
    for tp, e in zip(ts, envelope):
        T = lap1[j].copy()
        T[:3, 3] += sway_m * e * np.array([np.sin(2 * np.pi * tp / 7.0 + sway_phase[0]),
                                           np.sin(2 * np.pi * tp / 11.0 + sway_phase[1]),
                                           0.5 * np.sin(2 * np.pi * tp / 5.0 + sway_phase[2])])
        dyaw = np.radians(sway_deg) * e * np.sin(2 * np.pi * tp / 9.0 + sway_phase[3])
        cy, sy = np.cos(dyaw), np.sin(dyaw)
        T[:3, :3] = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]]) @ T[:3, :3]
        parked.append(T)
    T = np.concatenate([lap1[: j + 1], np.stack(parked), lap1[j + 1:], lap2])
    return T, [0] * (n_laps[0] + n_park) + [1] * n_laps[1]


def _small_room(scene: Scene, n_frames: int | None, rng: np.random.Generator, c: dict) -> tuple:
    """(poses [F x 4 x 4], laps [F]) of the `small_room` profile."""
    loops, radius, loop_s = int(c["small_room_loops"]), float(c["small_room_radius"]), float(c["small_room_loop_s"])
    h_lo, h_hi = (float(h) for h in c["small_room_heights"])
    if loops < 2 or radius <= 0 or loop_s <= 0 or h_hi < h_lo:
        raise ValueError(f"small_room needs small_room_loops >= 2, small_room_radius > 0, small_room_loop_s > 0 and "
                         f"a (low, high) small_room_heights, got {loops}, {radius}, {loop_s}, {(h_lo, h_hi)}")
    lo, hi = scene.bounds
    ring = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    ring = np.column_stack([np.cos(ring), np.sin(ring)])
    for _ in range(500):  # a centre whose loops (at any radius and height) stay in free space
        centre = rng.uniform(lo[:2] + radius, hi[:2] - radius)
        if all(scene.inside_free_space(np.array([*(centre + r * radius * d), h]), 0.3)
               for r in (0.85, 1.15) for h in (h_lo, h_hi) for d in ring):
            break
    else:
        raise ValueError(f"no free spot for small_room loops of radius {radius} m at heights {h_lo}-{h_hi} m "
                         f"in this scene; lower small_room_radius or change small_room_heights")
    phase = rng.uniform(0, 2 * np.pi, 6)
    theta0 = rng.uniform(0, 2 * np.pi)
    t = _frame_times(loops * loop_s, n_frames, c["fps"], "small_room", endpoint=False)
    # Climbing from loop to loop (each bearing is revisited one loop later, higher), with radius and yaw varying
    # at periods incommensurate with the loop.
    u = t / loop_s
    theta = theta0 + 2 * np.pi * u
    r = radius * (1 + 0.08 * np.sin(2 * np.pi * u / 2.7 + phase[0]))
    z = h_lo + (h_hi - h_lo) * u / loops + 0.03 * np.sin(2 * np.pi * u / 0.45 + phase[1])
    yaw = theta + np.radians(c["small_room_yaw_amp_deg"]) * np.sin(2 * np.pi * u / 1.37 + phase[2])
    pitch = np.radians(-8.0 + 6.0 * np.sin(2 * np.pi * u / 0.9 + phase[3]))
    roll = np.radians(3.0) * np.sin(2 * np.pi * u / 0.6 + phase[4])
    xy = centre + r[:, None] * np.column_stack([np.cos(theta), np.sin(theta)])
    poses = np.stack([look_pose(np.array([x, y, h]), a, p, q) for (x, y), h, a, p, q in zip(xy, z, yaw, pitch, roll)])
    return poses, np.floor(u).astype(np.int64).tolist()


_BUILDERS = {"corridor": _corridor, "parked": _parked, "small_room": _small_room}


def make_trajectory(scene: Scene, profile: str = "loop", n_frames: int | None = None, seed: int = 0,
                    conf: dict | None = None, anchors: Callable[[np.ndarray], np.ndarray] | None = None
                    ) -> Trajectory:
    """Ground-truth trajectory in `scene` (deterministic by seed).

    Args:
        profile: one of PROFILES (see the module docstring).
        n_frames: total number of frames (None = the profile's default from conf). The laps keep their
            shape, so fewer frames mean larger steps. Kidnapped frames take at most a quarter of them.
            corridor / small_room: the whole motion in n_frames (stamps stay index / fps, so it is sped up
            or slowed down; None = in real time at fps); parked: the stop keeps its parked_s * fps frames.
        anchors: maps the lap-1 poses [N x 4 x 4] to [N] bool flags of the poses a kidnapped segment may be
            placed near (make_sequence passes the SLAM keyframe selection); None = any lap-1 pose.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown trajectory profile '{profile}'; known: {', '.join(PROFILES)}")
    c = merge_conf(default_conf, conf, "trajectory conf keys",
                   free=("lap1_lighting", "lap2_lighting", "lap2_night_lighting"))  # lighting dicts whole
    if c["fps"] <= 0:
        raise ValueError(f"fps must be positive, got {c['fps']}")
    if not 0.0 <= c["lap2_night_from"] <= 1.0:
        raise ValueError(f"lap2_night_from must be a lap fraction in [0, 1], got {c['lap2_night_from']}")
    rng = np.random.default_rng([seed, 7])
    if profile in _BUILDERS:
        T, laps = _BUILDERS[profile](scene, None if n_frames is None else int(n_frames), rng, c)
        n = len(T)
        lights = [dict(c["lap1_lighting"] if lap == 0 else c["lap2_lighting"]) for lap in laps]
        for i, light in enumerate(lights):
            light["seed"] = int(np.random.default_rng([seed, 11, i]).integers(2**31))
        return Trajectory(T, np.round(np.arange(n, dtype=np.float64) / c["fps"], 6), np.array(laps, np.int64),
                          np.zeros(n, bool), np.full(n, -1, np.int64), lights)
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
    path = _room_path(scene, c)
    phase = rng.uniform(0, 2 * np.pi, 6)
    u0 = rng.uniform(0, 1)
    poses, laps, lights = [], [], []
    for lap, n in enumerate(n_lap_frames):
        u = u0 + (np.arange(n) + 0.5 * lap) / n
        poses.append(_lap_poses(path, u, c, lap, phase))
        laps += [lap] * n
        night = night_from_index(n, c["lap2_night_from"]) if lap else n
        lights += [dict(c["lap1_lighting"] if lap == 0 else c["lap2_lighting"] if i < night
                        else c["lap2_night_lighting"]) for i in range(n)]
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
        night = c["kidnap_night"][k % len(c["kidnap_night"])] if c["kidnap_night"] else None
        for i in range(seg_len):
            kid_poses.append(look_pose(start + step * i, yaw + dyaw * (i - (seg_len - 1) / 2), pitch))
            segments.append(k)
            lights.append(dict(night) if night else {"gain": gain, "gamma": gamma, "vignetting": 0.2, "noise_std": 2.5})
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
