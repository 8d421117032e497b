"""Metrics against hand-computed values; visualisations write PNGs of the right size."""

import math

import cv2
import numpy as np
import pytest

from agnostic_reloc.eval.homography_pairs import make_pairs, warp_points
from agnostic_reloc.eval.metrics import (
    homography_corner_error,
    match_precision,
    percentiles,
    pose_auc,
    relative_pose_error,
)
from agnostic_reloc.eval.photos import PhotosMissing, list_photos
from agnostic_reloc.eval.viz import BAR_HEIGHT, GAP, TITLE_HEIGHT, draw_matches, plot_bars


def test_corner_error():
    H = np.array([[1.1, 0.05, 3], [-0.02, 0.9, 7], [1e-4, 2e-5, 1]])
    assert homography_corner_error(H, H, (640, 480)) == pytest.approx(0.0, abs=1e-9)
    assert homography_corner_error(-2.0 * H, H, (640, 480)) == pytest.approx(0.0, abs=1e-9)  # same homography
    shifted = np.array([[1, 0, 3.0], [0, 1, 4.0], [0, 0, 1]])
    assert homography_corner_error(shifted, np.eye(3), (640, 480)) == pytest.approx(5.0)
    assert homography_corner_error(None, H, (640, 480)) == math.inf
    assert homography_corner_error(np.zeros((3, 3)), H, (640, 480)) == math.inf
    assert homography_corner_error(np.full((3, 3), np.nan), H, (640, 480)) == math.inf
    with pytest.raises(ValueError, match="3x3"):
        homography_corner_error(np.eye(2), H, (640, 480))


def test_pose_auc_hand_computed():
    assert pose_auc([0, 0, 0], [1, 5]) == pytest.approx([100.0, 100.0])
    assert pose_auc([math.inf, math.inf], [10]) == pytest.approx([0.0])
    # errors 1,2,3,4: recall curve (0,0),(1,.25),(2,.5),(3,.75),(4,1) -> area 2 up to t=4.5: (2 + 0.5) / 4.5
    assert pose_auc([4, 2, 1, 3], [4.5])[0] == pytest.approx(100 * 2.5 / 4.5)
    # as in the SuperGlue reference code, an error exactly at t is not counted: up to t=4 the last segment
    # stays at recall .75 -> (.125 + .375 + .625 + .75) / 4
    assert pose_auc([4, 2, 1, 3], [4])[0] == pytest.approx(46.875)
    # up to t=2.5: 0.125 + 0.375 + 0.5*0.5 = 0.75 -> 0.75 / 2.5 = 30 %
    assert pose_auc([1, 2, 3, 4], [2.5])[0] == pytest.approx(30.0)
    # beyond the largest error recall stays 1: t=8 -> (2 + 4) / 8 = 75 %
    assert pose_auc([1, 2, 3, 4], [8])[0] == pytest.approx(75.0)
    # half the pairs failed: a single error 0 and one inf -> recall 0.5 everywhere
    assert pose_auc([0, math.inf], [3])[0] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="at least one"):
        pose_auc([], [1])


def _pose(axis_angle_deg, t):
    R, _ = cv2.Rodrigues(np.radians(np.asarray(axis_angle_deg, float)))
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def test_relative_pose_error():
    T = _pose([0, 0, 30], [1, 0, 0])
    assert relative_pose_error(T, T) == pytest.approx((0.0, 0.0), abs=1e-6)
    r, t = relative_pose_error(_pose([0, 0, 40], [2, 0, 0]), T)  # translation scale does not matter
    assert r == pytest.approx(10.0) and t == pytest.approx(0.0, abs=1e-6)
    assert relative_pose_error(_pose([0, 0, 30], [0, 1, 0]), T)[1] == pytest.approx(90.0)
    assert relative_pose_error(_pose([0, 0, 30], [-1, 0, 0]), T)[1] == pytest.approx(180.0)
    assert relative_pose_error(_pose([0, 0, 30], [-1, 0, 0]), T, ignore_sign=True)[1] == pytest.approx(0.0)
    assert relative_pose_error(None, T) == (math.inf, math.inf)


def test_match_precision_and_percentiles():
    H = np.array([[1, 0, 10.0], [0, 1, -5.0], [0, 0, 1]])
    k0 = np.array([[0, 0], [10, 10], [20, 20], [30, 30]], float)
    k1 = warp_points(H, k0)
    k1[3] += [4, 0]  # 4 px off
    m = np.array([[0, 0], [1, 1], [2, 2], [3, 3]])
    assert match_precision(k0, k1, m, H) == pytest.approx(0.75)
    assert match_precision(k0, k1, m, H, threshold=5.0) == pytest.approx(1.0)
    assert match_precision(k0, k1, np.array([[0, 1], [1, 2]]), H) == pytest.approx(0.0)
    assert match_precision(k0, k1, np.zeros((0, 2), int), H) == 0.0
    p = percentiles([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    assert p == {"p50": 6.0, "p90": 10.0, "max": 11.0}
    p = percentiles([1, 2, math.inf])
    assert p["p50"] == 2.0 and p["p90"] == math.inf and p["max"] == math.inf


def test_draw_matches_writes_png(tmp_path):
    try:
        pair = make_pairs(list_photos()[:1], 1, seed=0)[0]
    except PhotosMissing as e:
        print(e)
        pytest.skip(str(e))
    orb = cv2.ORB_create(500)
    k0 = np.float64([k.pt for k in orb.detect(cv2.cvtColor(pair.image0, cv2.COLOR_RGB2GRAY), None)])
    k1 = warp_points(pair.H_0to1, k0)
    inside = (k1[:, 0] >= 0) & (k1[:, 0] < 640) & (k1[:, 1] >= 0) & (k1[:, 1] < 480)
    idx = np.flatnonzero(inside)
    matches = np.stack([idx, idx], 1)
    scores = np.linspace(0, 1, len(idx))
    small1 = pair.image1[:400, :500]  # different heights are padded
    path = draw_matches(pair.image0, small1, k0, k1, matches, scores, tmp_path / "m.png", title="test pair")
    img = cv2.imread(str(path))
    assert img.shape == (TITLE_HEIGHT + 480 + BAR_HEIGHT, 640 + GAP + 500, 3)
    assert img.std() > 20
    with pytest.raises(ValueError, match="scores"):
        draw_matches(pair.image0, small1, k0, k1, matches, scores[:3], tmp_path / "x.png")


def test_plot_bars(tmp_path):
    table = {"orb+bf": {"AUC@3px": 20.0, "AUC@5px": 31.5}, "aliked+lightglue": {"AUC@3px": 55.0, "AUC@5px": 70.2}}
    path = plot_bars(table, tmp_path / "bars.png", "homography AUC", "AUC [%]")
    img = cv2.imread(str(path))
    assert img is not None and img.shape[0] > 200 and img.std() > 5
    with pytest.raises(ValueError, match="non-empty"):
        plot_bars({}, tmp_path / "b.png", "", "")
