"""Loop acceptance that generalizes: candidates by covisibility and trajectory (never wall-clock time), guards that
need no drift bound (inlier spread, common region with the candidate's neighbours), drift like real ORB-SLAM3."""

from __future__ import annotations

import numpy as np
import pytest

from agnostic_reloc.eval.loops import evaluate_loops
from agnostic_reloc.loop import candidates
from agnostic_reloc.loop.engine import Engine, default_conf
from agnostic_reloc.loop.verify import inlier_spread, projection_matches, verify_pair
from agnostic_reloc.world.slam import ORBSLAM3_DRIFT

SIZE = {"camera": {"width": 320, "height": 240, "f": 250.0}}


@pytest.fixture(scope="module")
def corridor(photos):
    """A robot driving along a wall, turning and driving back: places revisited 1-8 s after the first pass, the way
    back darker, with real ORB-SLAM3 drift."""
    from agnostic_reloc.world import make_sequence

    return make_sequence(seed=0, profile="corridor", conf={**SIZE, "keep_depth": False, "slam": dict(ORBSLAM3_DRIFT)},
                         progress=False)


@pytest.fixture(scope="module")
def corridor_keyframes(corridor):
    """Keyframes described once (learned mode), reused by every engine variant."""
    engine = Engine({"device": "cpu"})
    return [engine.make_keyframe(f.stamp, f.image, f.keypoints, f.T_map_cam, corridor.K, f.map_points,
                                 f.map_point_ids) for f in corridor.keyframes()]


def loops_of(keyframes, conf):
    engine = Engine({"device": "cpu", **conf})
    loops = []
    for kf in keyframes:
        engine.insert_keyframe(kf)
        loops += engine.detect_loops(kf)
    return engine, loops


def judge(loops, seq, keyframes):
    gt = {kf.id: f.T_world_cam for kf, f in zip(keyframes, seq.keyframes())}
    stamps = {kf.id: kf.stamp for kf in keyframes}
    return evaluate_loops([{"query_id": lc.query_id, "match_id": lc.match_id, "T_match_query": lc.T_match_query,
                            "score": lc.score, "scale_free": not lc.metric} for lc in loops], gt, stamps,
                          {"min_time_gap": 0.0})


def test_revisits_seconds_after_the_first_pass_are_loops(corridor, corridor_keyframes):
    assert default_conf["retrieval"]["temporal_window_s"] == 0.0  # wall-clock time never decides by default
    engine, loops = loops_of(corridor_keyframes, {})
    ev = judge(loops, corridor, corridor_keyframes)
    assert ev["n_true"] >= 3 and ev["n_false"] == 0
    assert min(lc.query_stamp - lc.match_stamp for lc in loops) < 6.0
    # the same keyframes with a 10 s window (the previous default) find none of these revisits
    _, old = loops_of(corridor_keyframes, {"retrieval": {"temporal_window_s": 10.0}})
    assert old == []
    assert engine.acceptance.refused  # refusals are counted by reason


def test_neighbourhood_excludes_tracked_points_but_not_revisits(corridor_keyframes):
    kfs = corridor_keyframes
    conf = default_conf["retrieval"]
    hood = candidates.Neighbourhood(conf)
    for kf in kfs[:6]:
        hood.push(kf)
    q = kfs[5]
    recent, points = hood.group(q)
    assert recent == {kf.id for kf in kfs[:5]}
    # the previous keyframe shares tracked map points with the query: excluded however far the trajectory says
    assert "covisible" in candidates.excluded(kfs[4], q, recent, points, 5.0, conf, middle=None)
    # the same ids seen again after being out of view (the keyframe halfway observes none of them): a revisit
    blind = kfs[0].__class__(**{**kfs[0].__dict__, "map_point_ids": np.full(len(kfs[0].keypoints), -1)})
    assert candidates.excluded(kfs[4], q, recent, points, 5.0, conf, middle=blind) is None
    # a parked robot: no trajectory between them
    assert "along the trajectory" in candidates.excluded(kfs[0], q, set(), np.zeros(0, np.int64), 0.05, conf)
    # ids unknown: the query's recent keyframes are its neighbourhood
    unknown = np.zeros(0, np.int64)
    assert "recent" in candidates.excluded(kfs[4], q, recent, unknown, 5.0, conf)
    assert candidates.excluded(kfs[0], q, set(), unknown, 5.0, conf) is None


def test_common_region_accepts_the_true_pose_and_refutes_a_wrong_one(corridor, corridor_keyframes):
    """The candidate's neighbours, projected with the verified pose, match the query; moved by 0.5 m they do not."""
    engine, loops = loops_of(corridor_keyframes, {})
    assert loops
    lc = max(loops, key=lambda x: x.inliers)
    q, c = engine.map.get(lc.query_id), engine.map.get(lc.match_id)
    pairs = engine.matcher.match(q, [c])[0]
    d = verify_pair(q, c, pairs, 50, default_conf["verify"])
    assert d is not None and d.metric and inlier_spread(q.keypoints.xy[d.correspondences[:, 0]], q.image_size) > 0.2
    k = engine._ordinal[c.id]
    neighbours = [engine.map.get(engine._order[j]) for j in (k - 1, k + 1) if 0 <= j < len(engine._order)]
    lc_conf = default_conf["loop"]
    args = (lc_conf["common_radius_px"], lc_conf["common_min_similarity"], lc_conf["common_max_hamming"])
    used = d.correspondences[:, 0]
    right = max(projection_matches(q, d.T_map_query, nb, used, *args)[0] for nb in neighbours)
    wrong_T = d.T_map_query.copy()
    wrong_T[:3, 3] += wrong_T[:3, :3] @ np.array([0.5, 0.0, 0.0])  # half a metre sideways in the camera frame
    wrong, in_view = max(projection_matches(q, wrong_T, nb, used, *args) for nb in neighbours)
    assert right >= lc_conf["common_min_matches"] > wrong
    assert in_view >= 50  # the wrong pose is refuted: its neighbours' points are in view, and do not match


def test_inlier_spread():
    assert inlier_spread(np.zeros((0, 2)), (640, 480)) == 0.0
    assert inlier_spread(np.array([[10.0, 10.0], [20.0, 20.0]]), (640, 480)) == 1 / 16
    grid = np.stack(np.meshgrid(np.arange(40, 640, 160.0), np.arange(30, 480, 120.0)), -1).reshape(-1, 2)
    assert inlier_spread(grid, (640, 480)) == 1.0
