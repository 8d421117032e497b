"""The loop-closure / relocalization engine on a short generated sequence with exact ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from agnostic_reloc.eval.runs import evaluate
from agnostic_reloc.features.keypoints import Keypoints
from agnostic_reloc.loop.engine import Engine
from agnostic_reloc.loop.runner import events_from_sequence, run
from agnostic_reloc.loop.worker import EngineWorker
from agnostic_reloc.map.store import KeyframeMap, MapFormatError
from agnostic_reloc.types import KeyframeEvent, QueryEvent, RunResult

pytestmark = pytest.mark.slow  # minutes on 2 CPU cores: `pytest -m "not slow"` skips it


@pytest.fixture(scope="module")
def sequence(photos):
    from agnostic_reloc.world import make_sequence

    # a short mixed sequence (two laps + kidnapped segments) with sparser keyframes, to keep CI fast
    conf = {"keep_depth": False, "trajectory": {"kidnap_segments": 3},
            "slam": {"kf_max_dist": 0.6, "kf_max_angle_deg": 20.0, "kf_max_gap": 8}}
    return make_sequence(seed=3, profile="mixed", conf=conf, progress=False)


@pytest.fixture(scope="module")
def learned(sequence):
    engine = Engine({"device": "cpu"})
    result = run(engine, list(events_from_sequence(sequence)), progress=False)
    gt = {f.stamp: f.T_world_cam for f in sequence.frames}
    metrics = evaluate(result, gt)
    print("loops", {k: metrics["loops"][k] for k in ("precision", "recall", "n_loops", "n_false")},
          "reloc", metrics["relocalization"].get("success_at"))
    return engine, result, metrics


def test_no_false_loop_and_most_revisits_found(learned):
    _, result, metrics = learned
    loops = metrics["loops"]
    assert loops["n_loops"] > 0
    assert loops["n_false"] == 0
    assert loops["recall"] >= 0.5
    assert sum(lc.metric for lc in result.loops) >= 0.5 * len(result.loops)  # mostly PnP on map points
    for lc in result.loops:  # correspondences are (query row, match row) pairs of SLAM keypoints
        assert lc.correspondences.shape[1] == 2 and len(lc.correspondences) >= 30
        assert lc.correspondences[:, 0].max() < 1000 and lc.correspondences[:, 1].max() < 1000
        assert lc.covariance.shape == (6, 6) and np.allclose(lc.covariance, lc.covariance.T)


def test_kidnapped_frames_relocalized(learned):
    _, result, metrics = learned
    reloc = metrics["relocalization"]
    assert len(result.relocalizations) > 0
    assert reloc["success_at"]["0.5m_5deg"] >= 0.6
    # nothing reported as localized is wrong by more than 5 m / 10 deg
    assert reloc["success_at"]["5m_10deg"] * reloc["n_queries"] >= sum(r.success for r in result.relocalizations)


def test_save_load_gives_same_results(learned, sequence, tmp_path):
    engine, result, _ = learned
    path = tmp_path / "map.agrl"
    engine.map.save(path)
    loaded = Engine({"device": "cpu"}, KeyframeMap.load(path))
    queries = [ev for ev in events_from_sequence(sequence) if isinstance(ev, QueryEvent)][:4]
    engine.conf["reloc"]["loop_corrected"] = False  # the file holds keyframes, not this session's loops
    try:
        for ev in queries:
            a = engine.relocalize(ev.stamp, ev.image, ev.K, ev.keypoints)
            b = loaded.relocalize(ev.stamp, ev.image, ev.K, ev.keypoints)
            assert a.success == b.success and a.reason == b.reason
            if a.success:
                assert np.allclose(a.T_map_cam, b.T_map_cam, atol=1e-6)
    finally:
        engine.conf["reloc"]["loop_corrected"] = True


def test_truncated_map_is_a_clear_error_and_previous_map_untouched(learned, tmp_path):
    engine, _, _ = learned
    good, bad = tmp_path / "good.agrl", tmp_path / "bad.agrl"
    engine.map.save(good)
    before = good.read_bytes()
    bad.write_bytes(before[: len(before) // 2])
    with pytest.raises(MapFormatError, match="bad.agrl"):
        KeyframeMap.load(bad)
    assert good.read_bytes() == before
    assert len(KeyframeMap.load(good)) == len(engine.map)


def test_malformed_keyframes_rejected_with_reason(sequence):
    engine = Engine({"device": "cpu"})
    kf = next(ev for ev in events_from_sequence(sequence) if isinstance(ev, KeyframeEvent))
    nan_pose = kf.T_map_cam.copy()
    nan_pose[0, 3] = np.nan
    events = [
        KeyframeEvent(kf.stamp, kf.image, Keypoints(np.zeros((0, 2))), kf.T_map_cam, kf.K),
        KeyframeEvent(kf.stamp, kf.image, kf.keypoints, nan_pose, kf.K),
        KeyframeEvent(kf.stamp, kf.image, kf.keypoints, kf.T_map_cam, kf.K, kf.map_points[:10]),
        kf,
    ]
    result = run(engine, events, progress=False)
    reasons = [r for _, r in result.rejected]
    assert len(reasons) == 3 and len(engine.map) == 1
    assert "no keypoints" in reasons[0]
    assert "pose" in reasons[1]
    assert "map_points" in reasons[2]


def test_relocalization_on_empty_map_says_why(sequence):
    engine = Engine({"device": "cpu"})
    q = next(ev for ev in events_from_sequence(sequence) if isinstance(ev, QueryEvent))
    r = engine.relocalize(q.stamp, q.image, q.K, q.keypoints)
    assert not r.success and "no candidate" in r.reason
    r = engine.relocalize(q.stamp, q.image, q.K, Keypoints(np.zeros((0, 2))))
    assert not r.success and "no keypoints" in r.reason
    with pytest.raises(ValueError, match="unknown engine options"):
        Engine({"device": "cpu", "num_candiates": 3})


def test_pose_graph_with_accepted_loops_reduces_drift(learned, sequence):
    from agnostic_reloc.loop.posegraph import ate_rpe, optimize_pose_graph

    engine, result, _ = learned
    order = sorted(result.keyframes, key=lambda k: result.keyframes[k][0])
    poses = {k: result.keyframes[k][1] for k in order}
    loops = [(lc.query_id, lc.match_id, lc.T_match_query, lc.covariance) for lc in result.loops]
    corrected = optimize_pose_graph(poses, order, loops)
    gt = {result.keyframes[k][0]: sequence.gt_pose(result.keyframes[k][0]) for k in order}
    before = ate_rpe(gt, {result.keyframes[k][0]: poses[k] for k in order})["ate_rmse"]
    after = ate_rpe(gt, {result.keyframes[k][0]: corrected[k] for k in order})["ate_rmse"]
    print(f"ATE before {before:.3f} m, after {after:.3f} m")
    assert after < before


@pytest.fixture(scope="module")
def drifting(photos):
    """A SLAM drifting 0.6 deg/m of yaw (real ORB-SLAM3 drifted ~1 deg/m on this world; the default world
    0.08): a place's lap-1 and lap-2 keyframes then give relocalization poses ~9 deg apart in the SLAM frame."""
    from agnostic_reloc.world import make_sequence

    conf = {"keep_depth": False, "camera": {"width": 320, "height": 240, "f": 250.0},
            "trajectory": {"kidnap_segments": 3},
            "slam": {"kf_max_dist": 0.6, "kf_max_angle_deg": 20.0, "kf_max_gap": 8, "drift_yaw_deg_per_m": 0.6}}
    seq = make_sequence(seed=3, profile="mixed", conf=conf, progress=False)
    events = list(events_from_sequence(seq))
    engine = Engine({"device": "cpu"})
    result = run(engine, [ev for ev in events if isinstance(ev, KeyframeEvent)], progress=False)  # pipelined
    return seq, engine, result, [ev for ev in events if isinstance(ev, QueryEvent)]


def _loop_keys(loops) -> list[tuple]:
    return [(lc.query_id, lc.match_id, lc.inliers, lc.metric) for lc in loops]


def test_pipelined_run_and_two_thread_worker_find_the_serial_loops(drifting):
    """Loop checks that lag behind insertion (the pipelined runner, the node's two-thread worker) accept exactly
    the loops of checking each keyframe right after inserting it."""
    seq, _, pipelined, _ = drifting
    keyframes = [ev for ev in events_from_sequence(seq) if isinstance(ev, KeyframeEvent)]
    serial = run(Engine({"device": "cpu"}), keyframes, progress=False, pipelined=False)
    assert len(serial.loops) > 0
    assert _loop_keys(pipelined.loops) == _loop_keys(serial.loops)

    found: list = []
    worker = EngineWorker(Engine({"device": "cpu"}), on_loops=lambda loops, kf: found.extend(loops))
    try:
        for ev in keyframes:  # as fast as they come: insertion runs ahead of the loop checks
            worker.submit_keyframe(ev)
        assert worker.wait_idle(timeout=600)
    finally:
        worker.stop()
    assert worker.counts["keyframes"] == len(keyframes) and worker.counts["errors"] == 0
    assert _loop_keys(found) == _loop_keys(serial.loops)
    for a, b in zip(found, serial.loops):
        assert np.allclose(a.T_match_query, b.T_match_query, atol=1e-6)


def test_relocalization_candidates_compared_after_loop_correction(drifting):
    """With the loops' pose graph, lap-1 and lap-2 candidates of a place agree and the kidnapped frames
    relocalize; compared in the drifting SLAM frame they disagree. Every answer stays right."""
    seq, engine, result, queries = drifting
    gt = {f.stamp: f.T_world_cam for f in seq.frames}
    assert sum(lc.metric for lc in result.loops) > 0
    outcome = {}
    try:
        for flag in (False, True):
            engine.conf["reloc"]["loop_corrected"] = flag
            rels = [engine.relocalize(q.stamp, q.image, q.K, q.keypoints) for q in queries]
            m = evaluate(RunResult(relocalizations=rels, keyframes=result.keyframes), gt)["relocalization"]
            outcome[flag] = (sum(r.success for r in rels), m["success_at"], [r.reason for r in rels if not r.success])
    finally:
        engine.conf["reloc"]["loop_corrected"] = True
    print("uncorrected / corrected:", outcome)
    (n_off, _, reasons_off), (n_on, at_on, _) = outcome[False], outcome[True]
    assert any("disagree" in r for r in reasons_off)
    assert n_on > n_off and n_on >= 0.6 * len(queries)
    assert at_on["5m_10deg"] * len(queries) >= n_on  # every relocalization given is right
    assert at_on["0.5m_5deg"] >= 0.6


def test_engine_conf_tree_presets_and_flat_names():
    """One conf tree: nested sections checked key by key, presets by name, flat names of earlier releases mapped
    (with a warning) to the same values."""
    from agnostic_reloc.loop.engine import check_conf, default_conf, preset_conf

    conf = check_conf({"loop": {"min_inliers": 30}, "matcher": {"name": "nn"}})
    assert conf["loop"]["min_inliers"] == 30 and conf["matcher"]["name"] == "nn"
    assert conf["loop"]["consistency_required"] == default_conf["loop"]["consistency_required"]
    with pytest.warns(FutureWarning, match="reloc_min_inliers -> reloc.min_inliers"):
        legacy = check_conf({"matcher": "nn", "min_inliers": 30, "reloc_min_inliers": 25})
    assert legacy["matcher"]["name"] == "nn" and legacy["loop"]["min_inliers"] == 30
    assert legacy["reloc"]["min_inliers"] == 25
    with pytest.raises(ValueError, match="unknown loop conf keys"):
        check_conf({"loop": {"min_inlier": 30}})
    with pytest.raises(ValueError, match="must be 'lightglue' or 'nn'"):
        check_conf({"matcher": {"name": "brute"}})
    classic = check_conf(preset_conf("classic", {"device": "cpu", "retrieval": {"num_candidates": 3}}))
    assert classic["matcher"]["name"] == "nn" and classic["retrieval"]["num_candidates"] == 3
    with pytest.raises(ValueError, match="unknown preset"):
        preset_conf("fast")


def test_worker_threads_yield_to_tracking():
    """The worker's threads run at a lower CPU priority (node parameter `nice`), so the SLAM's tracking on the
    same cores goes first; an impossible value is refused."""
    import os
    import sys

    engine = Engine({"device": "cpu"})
    with pytest.raises(ValueError, match="nice"):
        EngineWorker(engine, nice=25)
    worker = EngineWorker(engine, nice=5)
    try:
        assert worker.wait_idle(timeout=10)
        if sys.platform.startswith("linux"):  # per-thread priorities are a Linux feature
            base = os.getpriority(os.PRIO_PROCESS, 0)
            for t in worker._threads:
                assert os.getpriority(os.PRIO_PROCESS, t.native_id) == min(19, base + 5)
    finally:
        worker.stop()
