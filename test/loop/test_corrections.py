"""Loop-corrected poses: the engine's corrections are saved with the map and a reloaded map starts corrected.

Keyframes are synthetic (a drifting SLAM on a square loop, no images): the loops are given to
`engine.corrections` directly, as `Engine._to_loop` does for an accepted metric loop.
"""

from __future__ import annotations

import numpy as np
import pytest

from agnostic_reloc.features.keypoints import Keypoints
from agnostic_reloc.geometry import invert_T, rotation_angle_deg
from agnostic_reloc.loop.engine import Engine
from agnostic_reloc.loop.posegraph import optimize_pose_graph
from agnostic_reloc.loop.retrieval import global_descriptor_dim
from agnostic_reloc.map.store import KeyframeMap
from agnostic_reloc.types import Keyframe

K = np.array([[250.0, 0, 160], [0, 250, 120], [0, 0, 1]])
COV = np.diag([1e-4] * 3 + [1e-3] * 3)  # loop covariance [rx ry rz tx ty tz]


def yaw(deg: float, t=(0.0, 0.0, 0.0)) -> np.ndarray:
    a = np.deg2rad(deg)
    T = np.eye(4)
    T[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    T[:3, 3] = t
    return T


def true_pose(k: int, per_lap: int = 16) -> np.ndarray:
    """T_world_cam of keyframe k on a 4 m x 4 m square, facing along the path (one lap = per_lap keyframes)."""
    side, step = divmod(k % per_lap, per_lap // 4)
    corners = [(0, 0), (4, 0), (4, 4), (0, 4)]
    (x0, y0), (x1, y1) = corners[side], corners[(side + 1) % 4]
    f = step / (per_lap // 4)
    return yaw(90.0 * side, (x0 + f * (x1 - x0), y0 + f * (y1 - y0), 0.0))


def drifting_slam(n: int, start: int = 0) -> dict[int, np.ndarray]:
    """SLAM T_map_cam of keyframes start..start+n-1: the true motion with 0.5 deg of yaw and 1 cm of
    forward drift added per keyframe step (map frame = world frame at keyframe 0)."""
    poses = {0: true_pose(0)}
    for k in range(1, start + n):
        step = invert_T(true_pose(k - 1)) @ true_pose(k)
        poses[k] = poses[k - 1] @ step @ yaw(0.5, (0.01, 0.0, 0.0))
    return {k: poses[k] for k in range(start, start + n)}


def keyframe(kid: int, T_map_cam: np.ndarray, rng: np.random.Generator) -> Keyframe:
    n = 40
    kp = Keypoints(rng.uniform([0, 0], [319, 239], size=(n, 2)).astype(np.float32))
    g = rng.normal(size=global_descriptor_dim()).astype(np.float32)
    return Keyframe(kid, 0.5 * kid, kp, T_map_cam, K, (320, 240), kept=np.arange(n),
                    descriptors=rng.normal(size=(n, 128)).astype(np.float16), global_desc=g / np.linalg.norm(g))


def true_loop(q: int, m: int) -> np.ndarray:
    """T_match_query from the true poses (what a metric loop measures)."""
    return invert_T(true_pose(m)) @ true_pose(q)


def assert_close(T: np.ndarray, T_ref: np.ndarray, m: float, deg: float) -> None:
    err = invert_T(T_ref) @ T
    assert np.linalg.norm(err[:3, 3]) < m and rotation_angle_deg(err) < deg, (np.linalg.norm(err[:3, 3]),
                                                                              rotation_angle_deg(err))


@pytest.fixture(scope="module")
def session():
    """An engine with one lap + 2 keyframes of a drifting SLAM and two accepted loops back to the start."""
    engine = Engine({"device": "cpu", "matcher": {"name": "nn"}})
    rng = np.random.default_rng(0)
    for kid, T in drifting_slam(18).items():
        engine.insert_keyframe(keyframe(kid, T, rng))
    assert np.array_equal(engine.correction(), np.eye(4))  # identity before the first loop
    for q, m in ((16, 0), (17, 1)):
        engine.corrections.add_loop(q, m, true_loop(q, m), COV)
    return engine


def test_loops_correct_the_trajectory(session):
    engine = session
    poses = engine.corrected_poses()
    assert list(poses) == list(range(18))  # insertion order, one per keyframe
    np.testing.assert_allclose(poses[0], true_pose(0), atol=1e-6)  # the first keyframe holds the frame
    slam = drifting_slam(18)
    assert_close(invert_T(poses[0]) @ poses[16], true_loop(16, 0), 0.05, 1.0)  # the loop is closed ...
    assert rotation_angle_deg(invert_T(slam[0]) @ slam[16]) > 5  # ... where the SLAM had drifted
    for k in range(18):
        np.testing.assert_allclose(engine.correction(k) @ slam[k], poses[k], atol=1e-12)
    np.testing.assert_array_equal(engine.correction(), engine.correction(17))  # default: the newest keyframe


def test_saved_map_reloads_with_the_same_corrections(session, tmp_path):
    engine = session
    path = tmp_path / "map.agrl"
    engine.save_map(path)
    stored = KeyframeMap.load(path).corrections()
    assert list(stored) == list(range(18))
    loaded = Engine({"device": "cpu", "matcher": {"name": "nn"}}, KeyframeMap.load(path))
    for k in range(18):
        np.testing.assert_array_equal(loaded.correction(k), engine.correction(k))
    before = engine.corrected_poses()
    after = loaded.corrected_poses()
    assert list(after) == list(before)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])
    # relocalization compares candidates of the loaded map corrected, with the stored corrections
    assert loaded.conf["reloc"]["loop_corrected"]
    with loaded.lock:
        np.testing.assert_array_equal(loaded._corrected(16), engine.correction(16))  # what relocalize uses

    # the next session: its own keyframes start uncorrected; a loop to a loaded keyframe corrects them into
    # the loaded map's corrected frame and leaves the loaded keyframes' corrections as they were saved
    rng = np.random.default_rng(1)
    for kid, T in drifting_slam(6, start=18).items():
        loaded.insert_keyframe(keyframe(kid, T, rng))
    assert np.array_equal(loaded.correction(), np.eye(4))
    loaded.corrections.add_loop(22, 6, true_loop(22, 6), COV)
    for k in range(18):
        np.testing.assert_array_equal(loaded.correction(k), engine.correction(k))
    poses = loaded.corrected_poses()
    assert_close(invert_T(poses[6]) @ poses[22], true_loop(22, 6), 0.02, 0.5)
    assert not np.allclose(loaded.correction(), np.eye(4))

    # a map saved again keeps both sessions' corrections; reset forgets them
    loaded.save_map(path)
    again = Engine({"device": "cpu", "matcher": {"name": "nn"}}, KeyframeMap.load(path))
    for k in range(24):
        np.testing.assert_array_equal(again.correction(k), loaded.correction(k))
    again.reset()
    assert np.array_equal(again.correction(3), np.eye(4))


def test_map_saved_without_corrections_joins_the_graph(session, tmp_path):
    """A map file without corrections (KeyframeMap.save of keyframes alone, or a file from before corrections
    were stored): its keyframes are part of the next session's pose graph, as before."""
    plain = KeyframeMap()
    for kf in session.map:
        plain.add(kf)
    path = tmp_path / "plain.agrl"
    plain.save(path)
    loaded = Engine({"device": "cpu", "matcher": {"name": "nn"}}, KeyframeMap.load(path))
    assert loaded.map.corrections() == {}
    assert np.array_equal(loaded.correction(16), np.eye(4))
    loaded.corrections.add_loop(16, 0, true_loop(16, 0), COV)
    poses = loaded.corrected_poses()
    assert_close(invert_T(poses[0]) @ poses[16], true_loop(16, 0), 0.05, 1.0)


def test_pose_graph_anchored_at_fixed_keyframes():
    slam = drifting_slam(8, start=10)
    order = sorted(slam)
    fixed = {0: true_pose(0), 1: true_pose(1)}
    loops = [(16, 0, true_loop(16, 0), COV), (17, 1, true_loop(17, 1), COV)]
    out = optimize_pose_graph(slam, order, loops, fixed=fixed)
    assert sorted(out) == order
    assert_close(out[16], true_pose(16), 0.02, 0.5)
    assert_close(out[17], true_pose(17), 0.02, 0.5)
    with pytest.raises(ValueError, match="joins two fixed keyframes"):
        optimize_pose_graph(slam, order, [(1, 0, true_loop(1, 0), COV)], fixed=fixed)
