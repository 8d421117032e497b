"""Pose-graph correction, ATE/RPE, loop and relocalization metrics on a synthetic square trajectory."""

import math

import numpy as np
import pytest

from agnostic_reloc.eval.loops import (
    evaluate_loops,
    evaluate_relocalization,
    plot_latency_hist,
    plot_pr_curve,
    plot_trajectory_with_loops,
    precision_recall_curve,
    recall_at_full_precision,
    true_revisits,
)
from agnostic_reloc.geometry import T_from_Rt, invert_T, so3_exp
from agnostic_reloc.loop.posegraph import ate_rpe, covariance_left_to_right, floor_covariance, optimize_pose_graph


def cam(x: float, y: float, yaw_deg: float) -> np.ndarray:
    """T_world_cam of a camera at (x, y, 0) looking along yaw (world z up; camera x right, y down, z forward)."""
    p = math.radians(yaw_deg)
    R = np.c_[[math.sin(p), -math.cos(p), 0], [0, 0, -1], [math.cos(p), math.sin(p), 0]]
    return T_from_Rt(R, [x, y, 0.0])


def square(drift_deg: float = 0.6, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """44 GT poses 1 m apart around a 10 m square (0..39) then again along the first side (40..43, 0.2 m to
    the right, heading 10 deg off), 1 s apart; and "SLAM" poses integrating perturbed relative motions
    (drift_deg yaw and 2 cm forward / 1 cm down per step, plus noise)."""
    gt = []
    for k, (x0, y0) in enumerate([(0, 0), (10, 0), (10, 10), (0, 10)]):
        dx, dy = round(math.cos(math.radians(90 * k))), round(math.sin(math.radians(90 * k)))
        gt += [cam(x0 + j * dx, y0 + j * dy, 90 * k) for j in range(10)]
    gt += [cam(j, -0.2, 10.0) for j in range(4)]
    rng = np.random.default_rng(seed)
    slam = [gt[0]]
    for a, b in zip(gt[:-1], gt[1:]):
        D = T_from_Rt(so3_exp(np.array([0, -math.radians(drift_deg), 0]) + rng.normal(0, 0.002, 3)),
                      np.array([0.0, 0.01, 0.02]) + rng.normal(0, 0.005, 3))
        slam.append(slam[-1] @ invert_T(a) @ b @ D)
    return gt, slam


GT, SLAM = square()
IDS = list(range(len(GT)))
STAMPS = {i: float(i) for i in IDS}
COV = np.diag([0.01 ** 2] * 3 + [0.03 ** 2] * 3)


def rel(m: int, q: int) -> np.ndarray:
    """GT T_match_query."""
    return invert_T(GT[m]) @ GT[q]


def ate(poses: dict[int, np.ndarray], align: str = "se3") -> float:
    return ate_rpe({STAMPS[i]: GT[i] for i in IDS}, {STAMPS[i]: poses[i] for i in IDS}, align)["ate_rmse"]


def test_pose_graph_closes_loops():
    before = ate(dict(enumerate(SLAM)))
    loops = [(40, 0, rel(0, 40), COV), (42, 2, rel(2, 42), COV)]
    out = optimize_pose_graph(dict(enumerate(SLAM)), IDS, loops)
    after = ate(out)
    print(f"ATE before {before:.3f} m, after {after:.3f} m")
    assert before > 0.5
    assert after < 0.3 * before
    np.testing.assert_allclose(out[0], SLAM[0], atol=1e-6)  # gauge: first pose held
    # loop factor is Between(match, query) = T_match_query: the corrected poses satisfy it
    np.testing.assert_allclose(invert_T(out[0]) @ out[40], rel(0, 40), atol=0.02)
    # the inverted (wrong-convention) constraint gives a clearly worse result
    flipped = optimize_pose_graph(dict(enumerate(SLAM)), IDS, [(q, m, invert_T(T), c) for q, m, T, c in loops])
    assert ate(flipped) > 1.5 * after
    # convex Huber kernel and no kernel close true loops as well; covariance None uses conf sigmas
    for conf in ({"loop_kernel": "huber"}, {"loop_kernel": "none"}):
        assert ate(optimize_pose_graph(dict(enumerate(SLAM)), IDS, loops, conf)) < 0.3 * before
    assert ate(optimize_pose_graph(dict(enumerate(SLAM)), IDS, [(q, m, T, None) for q, m, T, _ in loops])) \
        < 0.3 * before


def test_pose_graph_wrong_loop():
    before = ate(dict(enumerate(SLAM)))
    good = [(40, 0, rel(0, 40), COV), (42, 2, rel(2, 42), COV)]
    wrong = (43, 20, rel(0, 40), COV)  # claims keyframe 43 sits next to 20 (14 m away)
    poses = dict(enumerate(SLAM))
    # default Cauchy kernel rejects it, with or without the true loops
    assert ate(optimize_pose_graph(poses, IDS, good + [wrong])) < 0.3 * before
    assert ate(optimize_pose_graph(poses, IDS, [wrong])) < 1.2 * before
    # without a kernel it wrecks the graph; an inflated covariance makes it harmless again
    assert ate(optimize_pose_graph(poses, IDS, good + [wrong], {"loop_kernel": "none"})) > 2 * before
    inflated = (43, 20, rel(0, 40), COV * 1e4)
    assert ate(optimize_pose_graph(poses, IDS, good + [inflated], {"loop_kernel": "none"})) < 0.3 * before


def test_pose_graph_errors_and_covariances():
    poses = dict(enumerate(SLAM))
    with pytest.raises(ValueError, match="not in order"):
        optimize_pose_graph(poses, IDS[:10], [(40, 0, np.eye(4), None)])
    with pytest.raises(ValueError, match="loop_kernel"):
        optimize_pose_graph(poses, IDS, [], {"loop_kernel": "tukeyy"})
    with pytest.raises(ValueError, match="unknown"):
        optimize_pose_graph(poses, IDS, [], {"odom_sigma": 1})
    with pytest.raises(ValueError, match="without a pose"):
        optimize_pose_graph(poses, IDS + [99], [])
    out = optimize_pose_graph(poses, IDS, [])  # no loops: SLAM poses unchanged
    assert max(np.abs(out[i] - SLAM[i]).max() for i in IDS) < 1e-6
    # floor: every direction gets at least the floor std; a larger covariance is untouched
    s = np.array([0.01] * 3 + [0.02] * 3)
    C = floor_covariance(np.diag([1e-8] * 6), s)
    np.testing.assert_allclose(C, np.diag(s ** 2))
    big = np.diag([1.0] * 6) + 0.1
    np.testing.assert_allclose(floor_covariance(big, s), big)
    # left -> right perturbation for a pure translation: rotation noise leaks into translation
    T = T_from_Rt(np.eye(3), [1.0, 0, 0])
    Cr = covariance_left_to_right(T, np.diag([1e-2] * 3 + [0.0] * 3))
    assert Cr[4, 4] > 0 and Cr[3, 3] == pytest.approx(0.0, abs=1e-12)


def test_ate_rpe_alignment():
    gt = {STAMPS[i]: GT[i] for i in IDS}
    T = T_from_Rt(so3_exp([0.1, -0.2, 0.3]), [5.0, -2.0, 1.0])  # map frame rotated/shifted from world
    est = {s + 0.003: T @ P for s, P in gt.items()}  # stamps within the tolerance
    r = ate_rpe(gt, est, "se3")
    assert r["ate_rmse"] < 1e-6 and r["rpe_trans_rmse"] < 1e-6 and r["rpe_rot_rmse_deg"] < 1e-4
    assert r["n_pairs"] == len(IDS)
    assert ate_rpe(gt, est, "none")["ate_rmse"] > 1.0
    assert ate_rpe(gt, est, "origin")["ate_rmse"] < 1e-6
    scaled = {s: np.block([[P[:3, :3], 2.0 * P[:3, 3:]], [P[3:]]]) for s, P in gt.items()}
    assert ate_rpe(gt, scaled, "sim3")["ate_rmse"] < 1e-6
    assert ate_rpe(gt, scaled, "se3")["ate_rmse"] > 1.0
    with pytest.raises(ValueError, match="align"):
        ate_rpe(gt, est, "umeyama")
    with pytest.raises(ValueError):
        ate_rpe(gt, {s + 0.5: P for s, P in gt.items()}, "se3")


def test_true_revisits():
    gt = dict(enumerate(GT))
    rev = true_revisits(gt, STAMPS, dist=0.5, angle_deg=30, min_time_gap=10)
    assert {q: ms for q, ms in rev.items() if ms} == {40: {0}, 41: {1}, 42: {2}, 43: {3}}
    # neighbours in time are within 1.5 m but excluded by the time gap
    rev = true_revisits(gt, STAMPS, dist=1.5, angle_deg=30, min_time_gap=10)
    assert rev[41] == {0, 1, 2} and rev[5] == set()
    assert true_revisits(gt, STAMPS, dist=1.5, angle_deg=30, min_time_gap=0)[5] == {4}
    # viewing direction: the second pass looks 10 deg off
    assert true_revisits(gt, STAMPS, dist=0.5, angle_deg=5, min_time_gap=10)[40] == set()
    with pytest.raises(ValueError, match="stamp"):
        true_revisits(gt, {0: 0.0})


def test_evaluate_loops():
    gt = dict(enumerate(GT))
    R20 = T_from_Rt(so3_exp([0, math.radians(20), 0]), [0, 0, 0])
    loops = [
        {"query_id": 40, "match_id": 0, "T_match_query": rel(0, 40), "score": 0.9},  # correct
        {"query_id": 41, "match_id": 25, "T_match_query": rel(25, 41) @ T_from_Rt(np.eye(3), [1.0, 0, 0]),
         "score": 0.8},  # far keyframe, wrong pose
        {"query_id": 42, "match_id": 2, "T_match_query": rel(2, 42) @ R20, "score": 0.7},  # right place, 20 deg
        {"query_id": 43, "match_id": 3, "T_match_query": np.block([[rel(3, 43)[:3, :3], 3 * rel(3, 43)[:3, 3:]],
                                                                   [np.array([[0, 0, 0, 1.0]])]]),
         "score": 0.6, "scale_free": True},  # correct up to scale
    ]
    r = evaluate_loops(loops, gt, STAMPS)
    assert r["flags"] == [True, False, False, True]
    assert [d["reason"] for d in r["false_details"]] == ["pose error", "pose error"]
    # a metric loop with the right relative pose is a correct constraint even between distant keyframes
    far = evaluate_loops([{"query_id": 41, "match_id": 25, "T_match_query": rel(25, 41), "score": 1.0}], gt, STAMPS)
    assert far["flags"] == [True]
    far_sf = evaluate_loops([{"query_id": 41, "match_id": 25, "T_match_query": rel(25, 41), "score": 1.0,
                              "scale_free": True}], gt, STAMPS)  # direction-only: must also be a revisit
    assert far_sf["flags"] == [False] and far_sf["false_details"][0]["reason"] == "not a revisit"
    assert (r["n_loops"], r["n_true"], r["n_false"]) == (4, 2, 2)
    assert r["precision"] == pytest.approx(0.5)
    # strict revisits (1 m / 30 deg, 10 s): 40..43 each have at least one; 40 and 43 were found
    assert r["n_revisit_queries"] == 4
    assert r["recall"] == pytest.approx(0.5)
    assert r["recall_at_100p"] == pytest.approx(0.25)  # only the 0.9 loop is accepted at precision 1
    # metric comparison of the up-to-scale loop fails (translation 3x too long)
    loops[3]["scale_free"] = False
    assert evaluate_loops(loops, gt, STAMPS)["flags"][3] is False
    # missing GT: error by default, skipped on request
    extra = loops + [{"query_id": 99, "match_id": 0, "T_match_query": np.eye(4), "score": 1.0}]
    with pytest.raises(ValueError, match="without GT"):
        evaluate_loops(extra, gt, STAMPS)
    r = evaluate_loops(extra, gt, STAMPS, {"missing_gt": "skip"})
    assert r["flags"][-1] is None and r["n_skipped"] == 1 and r["n_loops"] == 4
    empty = evaluate_loops([], gt, STAMPS)
    assert math.isnan(empty["precision"]) and empty["recall"] == 0.0 and empty["recall_at_100p"] == 0.0


def test_recall_at_full_precision_hand_made():
    loops = [{"query_id": q, "score": s} for q, s in [(1, 0.9), (2, 0.8), (3, 0.7), (4, 0.6), (2, 0.5)]]
    flags = [True, True, False, True, True]
    c = precision_recall_curve(loops, flags, revisit_queries={1, 2, 4, 5})
    np.testing.assert_allclose(c["thresholds"], [0.9, 0.8, 0.7, 0.6, 0.5])
    np.testing.assert_allclose(c["precision"], [1, 1, 2 / 3, 3 / 4, 4 / 5])
    np.testing.assert_allclose(c["recall"], [0.25, 0.5, 0.5, 0.75, 0.75])  # 2 found twice counts once
    assert recall_at_full_precision(c["precision"], c["recall"]) == pytest.approx(0.5)
    assert recall_at_full_precision([0.5, 0.9], [0.2, 0.1]) == 0.0
    # ties: both loops at 0.8 are accepted together
    c = precision_recall_curve([{"query_id": 1, "score": 0.8}, {"query_id": 2, "score": 0.8}], [True, False], {1})
    np.testing.assert_allclose(c["precision"], [0.5])


def test_evaluate_relocalization():
    gt = {float(s): GT[s] for s in range(5)}
    dx = T_from_Rt(np.eye(3), [0.3, 0, 0])
    rot3 = T_from_Rt(so3_exp([0, 0, math.radians(3)]), [0, 0, 0])
    T_map_world = T_from_Rt(so3_exp([0.2, 0.1, -0.4]), [3.0, 1.0, -2.0])
    est = [GT[0], dx @ GT[1], GT[2] @ rot3, None, GT[4] @ T_from_Rt(np.eye(3), [6.0, 0, 0])]
    results = [{"stamp": float(s), "T_map_cam": None if T is None else T_map_world @ T,
                "reason": "" if T is not None else "too_few_inliers"} for s, T in enumerate(est)]
    results.append({"stamp": 100.0, "T_map_cam": np.eye(4), "reason": ""})  # no GT: left out
    r = evaluate_relocalization(results, gt, T_map_world)
    assert (r["n_queries"], r["n_localized"], r["n_no_gt"]) == (5, 4, 1)
    # 0.25 m/2 deg: only the exact one; 0.5/5: + 0.3 m and 3 deg; 5/10: same (6 m off fails, None fails)
    np.testing.assert_allclose(r["success"], [0.2, 0.6, 0.6])
    assert r["success_at"] == pytest.approx({"0.25m_2deg": 0.2, "0.5m_5deg": 0.6, "5m_10deg": 0.6})
    np.testing.assert_allclose(r["trans_err"], [0, 0.3, 0, math.inf, 6.0], atol=1e-9)
    np.testing.assert_allclose(r["rot_err_deg"], [0, 0, 3, math.inf, 0], atol=1e-5)
    assert r["median_trans_err"] == pytest.approx(0.15)
    assert r["fail_reasons"] == {"too_few_inliers": 1}
    assert r["trans_err_pct"]["max"] == math.inf
    # per-stamp transforms give the same; without T_map_world the map offset ruins everything
    per = evaluate_relocalization(results, gt, {float(s): T_map_world for s in range(5)})
    np.testing.assert_allclose(per["success"], r["success"])
    assert evaluate_relocalization(results, gt)["success"] == [0.0, 0.0, 0.0]


def test_plots(tmp_path):
    p = plot_pr_curve({"a": ([1, 1, 0.66, 0.75], [0.25, 0.5, 0.5, 0.75]), "b": ([1.0], [0.1])},
                      tmp_path / "pr.png")
    pos = np.array([P[:3, 3] for P in GT])
    est = np.array([P[:3, 3] for P in SLAM])
    t = plot_trajectory_with_loops(pos, est, [(pos[40], pos[0], True), (pos[41], pos[25], False)],
                                   tmp_path / "sub" / "traj.png")
    h = plot_latency_hist({"extract": [10, 12, 11, 30], "match": [5, 6, 5.5], "empty": []}, tmp_path / "lat.png")
    for f in (p, t, h):
        data = f.read_bytes()
        assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="plane"):
        plot_trajectory_with_loops(pos, None, [], tmp_path / "x.png", plane="ab")
