"""World-generator profiles unlike our own loop (corridor, parked, small_room) and real ORB-SLAM3 drift levels."""

from __future__ import annotations

import numpy as np
import pytest

SMALL = {"camera": {"width": 160, "height": 120, "f": 125.0}}


def _delays(seq, revisits) -> np.ndarray:
    """Seconds between each revisit's frame and the earlier-lap keyframe it revisits."""
    stamp = {f.index: f.stamp for f in seq.frames}
    return np.array([stamp[i] - stamp[j] for i, j, _, _ in revisits])


def _brightness(seq, laps) -> float:
    return float(np.mean([f.image.mean() for f in seq.frames if f.lap in laps]))


@pytest.fixture(scope="module")
def scene(photos):
    from agnostic_reloc.world import make_scene

    return make_scene(0)


def test_corridor_revisits_seconds_after_the_first_pass(photos):
    from agnostic_reloc.world import gt_revisits, make_sequence

    seq = make_sequence(seed=0, profile="corridor", conf=SMALL, progress=False)
    back = [f for f in seq.keyframes() if f.lap == 1]
    revisits = gt_revisits(seq)
    assert len(back) >= 5 and len(revisits) >= 0.8 * len(back)
    delays = _delays(seq, revisits)
    # Down 2.5 m at 0.8 m/s, a 1.5 s turn, back: every revisit within 2 * 2.5 / 0.8 + 1.5 = 7.75 s.
    assert delays.max() < 8.0 and 2.0 <= np.median(delays) <= 6.0
    # ... from another viewpoint: 0.3 m farther from the wall, looking back instead of ahead, and darker.
    assert np.median([r[2] for r in revisits]) >= 0.2 and np.median([r[3] for r in revisits]) >= 10.0
    assert _brightness(seq, {1}) < 0.8 * _brightness(seq, {0})
    x = np.array([f.T_world_cam[0, 3] for f in seq.frames])
    laps = np.array([f.lap for f in seq.frames])
    assert np.sign(np.diff(x[laps == 0]).sum()) == -np.sign(np.diff(x[laps == 1]).sum())  # turned around


def test_parked_camera_stands_still_then_revisits(photos):
    from agnostic_reloc.world import gt_revisits, make_sequence
    from agnostic_reloc.world.slam import select_keyframes

    parked_s = 8.0
    seq = make_sequence(seed=1, profile="parked", conf={**SMALL, "trajectory": {"parked_s": parked_s,
                                                                                 "frames_per_lap": 30}},
                        progress=False)
    assert len(seq.frames) == 30 + int(parked_s * 5) + 30  # 5 Hz
    # The longest stretch where the camera stays within 1 cm and 0.5 deg of where it stopped.
    from agnostic_reloc.geometry import rotation_angle_deg

    T = np.array([f.T_world_cam for f in seq.frames])
    stamps = np.array([f.stamp for f in seq.frames])
    best = (0.0, 0, 0)
    for a in range(len(T)):
        b = a
        while b + 1 < len(T) and np.linalg.norm(T[b + 1, :3, 3] - T[a, :3, 3]) < 0.01 and \
                rotation_angle_deg(T[a, :3, :3].T @ T[b + 1, :3, :3]) < 0.5:
            b += 1
        best = max(best, (stamps[b] - stamps[a], a, b))
    still_s, a, b = best
    assert still_s >= parked_s
    # Like ORB-SLAM3, the simulated SLAM inserts no keyframe while parked: its neighbours are parked_s apart.
    kf = np.flatnonzero([f.is_keyframe for f in seq.frames])
    assert not any(a < k <= b for k in kf)
    after = kf[kf > b][0]
    assert stamps[after] - stamps[kf[kf <= a][-1]] >= parked_s
    # (with kf_still_dist = 0 it would keep inserting one every kf_max_gap = 4 frames)
    always = select_keyframes(list(T), {"kf_still_dist": 0.0})
    assert always[a + 1: b + 1].sum() >= (b - a) // 4
    # Lap 2 revisits lap 1, the parking spot included, in darker light.
    revisits = gt_revisits(seq)
    lap2 = [f for f in seq.keyframes() if f.lap == 1]
    assert len(revisits) >= 0.8 * len(lap2) > 10
    spot = T[a, :3, 3]
    assert any(np.linalg.norm(T[i, :3, 3] - spot) < 0.5 for i, _, _, _ in revisits)
    assert _brightness(seq, {1}) < 0.8 * _brightness(seq, {0})


def test_small_room_loops_revisit_one_loop_later(photos):
    from agnostic_reloc.world import gt_revisits, make_sequence

    seq = make_sequence(seed=2, profile="small_room", conf={**SMALL, "trajectory": {"small_room_loops": 3}},
                        progress=False)
    assert len(seq.frames) == 3 * 6 * 5 and {f.lap for f in seq.frames} == {0, 1, 2}
    P = np.array([f.T_world_cam[:3, 3] for f in seq.frames])
    centre = P[:, :2].mean(0)
    assert np.linalg.norm(P[:, :2] - centre, axis=1).max() < 0.8 * 1.15  # tight loops in a small area
    assert P[:, 2].max() - P[:, 2].min() > 0.4  # at varied heights
    yaw = np.degrees(np.arctan2(*np.array([f.T_world_cam[:2, 2] for f in seq.frames]).T[::-1]))
    assert np.histogram(yaw, bins=12, range=(-180, 180))[0].min() > 0  # looking every way
    revisits = gt_revisits(seq)
    later = [f for f in seq.keyframes() if f.lap >= 1]
    assert len(revisits) >= 0.8 * len(later)
    delays = _delays(seq, revisits)
    assert np.mean(np.abs(delays - 6.0) <= 1.0) >= 0.9  # mostly the previous loop, 6 s earlier
    assert np.median([r[2] for r in revisits]) > 0.1  # ... from another height


def test_profiles_deterministic_and_validated(scene):
    from agnostic_reloc.world.trajectory import make_trajectory

    for profile in ("corridor", "parked", "small_room"):
        a = make_trajectory(scene, profile, seed=4)
        b = make_trajectory(scene, profile, seed=4)
        c = make_trajectory(scene, profile, seed=5)
        assert np.array_equal(a.T_world_cam, b.T_world_cam) and a.lighting == b.lighting
        assert not np.array_equal(a.T_world_cam[0], c.T_world_cam[0])
        assert (np.diff(a.stamps) > 0).all() and not a.kidnapped.any() and (a.segment == -1).all()
        assert a.lap[0] == 0 and (np.diff(a.lap) >= 0).all() and a.lap.max() >= 1
        assert all(scene.inside_free_space(T[:3, 3], 0.25) for T in a.T_world_cam)
        assert len(make_trajectory(scene, profile, n_frames=100 if profile != "parked" else 400).stamps) == \
            (100 if profile != "parked" else 400)
    assert len(make_trajectory(scene, "parked").stamps) == 2 * 100 + 300  # 60 s at 5 Hz by default
    with pytest.raises(ValueError, match="does not fit"):
        make_trajectory(scene, "corridor", conf={"corridor_length": 9.0})
    with pytest.raises(ValueError, match="no free spot"):
        make_trajectory(scene, "small_room", conf={"small_room_radius": 3.0})
    with pytest.raises(ValueError, match="too small for profile 'parked'"):
        make_trajectory(scene, "parked", n_frames=100)


def test_drift_at_orbslam3_levels(scene):
    from agnostic_reloc.geometry import rotation_angle_deg
    from agnostic_reloc.world.slam import ORBSLAM3_DRIFT, default_conf, drift_transforms
    from agnostic_reloc.world.trajectory import make_trajectory

    def rates(T, D) -> tuple[float, float, float]:
        """(deg/m over the whole path, median deg/m of frame pairs >= 5 m apart, translation m/m)."""
        length = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(T[:, :3, 3], axis=0), axis=1))])
        i, j = np.nonzero(length[None, :] - length[:, None] >= 5.0)
        pairs = [rotation_angle_deg(D[a, :3, :3].T @ D[b, :3, :3]) / (length[b] - length[a]) for a, b in zip(i, j)]
        return (rotation_angle_deg(D[-1, :3, :3]) / length[-1], float(np.median(pairs)),
                float(np.linalg.norm(D[-1, :3, 3]) / length[-1]))

    T = make_trajectory(scene, "loop", seed=0).T_world_cam  # two laps, ~27 m
    tracked = np.ones(len(T), bool)
    expected = np.hypot(ORBSLAM3_DRIFT["drift_yaw_deg_per_m"], ORBSLAM3_DRIFT["drift_tilt_deg_per_m"])
    total, pairs, trans = rates(T, drift_transforms(T, tracked, 0, ORBSLAM3_DRIFT))
    assert 0.8 * expected < total < 1.2 * expected and 0.8 * expected < pairs < 1.2 * expected
    assert 0.8 * ORBSLAM3_DRIFT["drift_trans_per_m"] < trans <= ORBSLAM3_DRIFT["drift_trans_per_m"]
    total, _, trans = rates(T, drift_transforms(T, tracked, 0, {"drift_yaw_deg_per_m": 2.0,
                                                                "drift_tilt_deg_per_m": 0.0,
                                                                "drift_trans_per_m": 0.03}))
    assert 1.6 < total < 2.4 and 0.024 < trans <= 0.03
    total, _, _ = rates(T, drift_transforms(T, tracked, 0))  # our defaults drift ~15x less than ORB-SLAM3
    assert total < 0.15 and default_conf["drift_yaw_deg_per_m"] < 0.1


def test_lights_go_out_during_the_revisit_lap(scene):
    """lap2_night_from: the revisit lap's frames from that fraction on take lap2_night_lighting, the rest of the
    lap the lap-2 lighting; the poses are the same as without it. Out-of-range fractions are refused."""
    from agnostic_reloc.world import NIGHT_LIGHTING
    from agnostic_reloc.world.trajectory import make_trajectory, night_from_index

    plain = make_trajectory(scene, "loop", n_frames=40, seed=3)
    dark = make_trajectory(scene, "loop", n_frames=40, seed=3,
                           conf={"lap2_night_from": 0.5, "lap2_night_lighting": NIGHT_LIGHTING[1]})
    assert np.array_equal(plain.T_world_cam, dark.T_world_cam)
    lap2 = np.flatnonzero(dark.lap == 1)
    first_night = lap2[0] + night_from_index(len(lap2), 0.5)
    assert first_night == lap2[0] + 10
    for i, (a, b) in enumerate(zip(plain.lighting, dark.lighting)):
        if i < first_night:
            assert a == b
        else:
            assert b["blur_px"] == NIGHT_LIGHTING[1]["blur_px"] and b["gain"] == NIGHT_LIGHTING[1]["gain"]
            assert b["seed"] == a["seed"]
    assert night_from_index(20, 1.0) == 20 and night_from_index(20, 0.0) == 0
    with pytest.raises(ValueError, match="lap2_night_from must be a lap fraction"):
        make_trajectory(scene, "loop", n_frames=40, conf={"lap2_night_from": 1.5})
