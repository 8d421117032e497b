"""Synthetic homography pairs from real photos: determinism, exact ground truth, visibility, save/load."""

import cv2
import numpy as np
import pytest

from agnostic_reloc.eval.homography_pairs import (
    default_conf,
    load_pairs,
    make_pair,
    make_pairs,
    save_pairs,
    visible_fractions,
    warp_points,
)
from agnostic_reloc.eval.photos import PhotosMissing, list_photos, oxford_graf


@pytest.fixture(scope="module")
def photos():
    try:
        return list_photos()
    except PhotosMissing as e:
        print(e)
        pytest.skip(str(e))


def test_list_photos_natural_and_sorted(photos):
    names = [p.name for p in photos]
    assert names == sorted(names) and len(names) >= 10
    for bad in ("chessboard.png", "gradient.png", "digits.png", "sudoku.png", "opencv-logo.png", "HappyFish.jpg"):
        assert bad not in names
    for good in ("graf1.png", "building.jpg", "baboon.jpg", "starry_night.jpg"):
        assert good in names


def test_make_pairs_deterministic(photos):
    a = make_pairs(photos[:3], 4, seed=3)
    b = make_pairs(photos[:3], 4, seed=3)
    c = make_pairs(photos[:3], 4, seed=4)
    for p, q in zip(a, b):
        assert p.name == q.name and p.params == q.params
        np.testing.assert_array_equal(p.H_0to1, q.H_0to1)
        np.testing.assert_array_equal(p.image1, q.image1)
    assert not np.allclose(a[0].H_0to1, c[0].H_0to1)
    # pair i does not depend on how many pairs are asked for; photos are cycled
    np.testing.assert_array_equal(make_pairs(photos[:3], 2, seed=3)[1].H_0to1, a[1].H_0to1)
    assert a[3].name.endswith(photos[0].stem)


def test_pair_shapes_and_visibility(photos):
    pairs = make_pairs(photos, 12, seed=1, conf={"difficulty_range": (0.7, 1.0)})
    for p in pairs:
        assert p.image0.shape == p.image1.shape == (480, 640, 3) and p.image1.dtype == np.uint8
        assert p.H_0to1.shape == (3, 3) and p.H_0to1[2, 2] == pytest.approx(1.0)
        vis = visible_fractions(p.H_0to1, default_conf["size"])
        assert max(vis) >= 0.3 and p.params["visible_fraction"] == pytest.approx(max(vis))
    rot = [abs(p.params["rotation_deg"]) for p in pairs]
    assert max(rot) > 15  # hard pairs are really distorted


def _warp_error(pair, H):
    w, h = pair.image0.shape[1], pair.image0.shape[0]
    warped = cv2.warpPerspective(pair.image0, H, (w, h), flags=cv2.INTER_LINEAR).astype(np.float32)
    mask = cv2.warpPerspective(np.ones((h, w), np.uint8), H, (w, h), flags=cv2.INTER_NEAREST)
    mask = cv2.erode(mask, np.ones((7, 7), np.uint8)).astype(bool)
    assert mask.mean() > 0.1
    return np.abs(warped - pair.image1.astype(np.float32))[mask].mean()


def test_ground_truth_homography_is_exact(photos):
    conf = {"photometric": False, "difficulty_range": (0.4, 1.0)}
    textured = [p for p in photos if p.stem in ("graf1", "baboon", "building", "board")]
    for pair in make_pairs(textured, 4, seed=2, conf=conf):
        err = _warp_error(pair, pair.H_0to1)
        off = np.array([[1, 0, 2.0], [0, 1, 2.0], [0, 0, 1]]) @ pair.H_0to1  # 2.8 px off
        assert err < 12.0 and err < 0.6 * _warp_error(pair, off), pair.name


def test_photometric_changes_applied(photos):
    img = cv2.cvtColor(cv2.imread(str(photos[0])), cv2.COLOR_BGR2RGB)
    rng = np.random.default_rng(0)
    p = make_pair(img, rng, {"difficulty_range": (1.0, 1.0)})
    for key in ("gamma", "gain", "blur_sigma", "noise_std"):
        assert key in p.params
    assert p.params["blur_sigma"] > 0.5 and p.params["noise_std"] > 1.0
    easy = make_pair(img, np.random.default_rng(0), {"difficulty_range": (0.0, 0.0)})
    np.testing.assert_allclose(easy.H_0to1, np.eye(3), atol=1e-12)
    assert np.abs(easy.image1.astype(int) - easy.image0.astype(int)).mean() < 1.0


def test_warp_points():
    H = np.array([[2.0, 0, 1], [0, 3, -1], [0, 0, 1]])
    np.testing.assert_allclose(warp_points(H, [[1, 1], [0, 0]]), [[3, 2], [1, -1]])
    P = np.array([[1.0, 0, 0], [0, 1, 0], [0.01, 0, 1]])
    np.testing.assert_allclose(warp_points(P, [[100, 50]]), [[50, 25]])
    with pytest.raises(ValueError, match="N x 2"):
        warp_points(H, np.zeros((3, 3)))


def test_save_load_roundtrip(photos, tmp_path):
    pairs = make_pairs(photos[:2], 3, seed=5)
    save_pairs(pairs, tmp_path / "pairs")
    back = load_pairs(tmp_path / "pairs")
    assert [p.name for p in back] == [p.name for p in pairs]
    for p, q in zip(pairs, back):
        np.testing.assert_array_equal(p.H_0to1, q.H_0to1)  # bit-exact
        np.testing.assert_array_equal(p.image0, q.image0)
        np.testing.assert_array_equal(p.image1, q.image1)
        assert p.params == q.params
    with pytest.raises(ValueError, match="pairs.json"):
        load_pairs(tmp_path)


def test_bad_conf_rejected(photos):
    with pytest.raises(ValueError, match="unknown"):
        make_pairs(photos, 1, conf={"rotation": 10})
    with pytest.raises(ValueError, match="scale_range"):
        make_pairs(photos, 1, conf={"scale_range": (1.5, 2.0)})


def test_oxford_graf_ground_truth():
    try:
        img1, img3, H = oxford_graf()
    except PhotosMissing as e:
        print(e)
        pytest.skip(str(e))
    assert img1.shape == img3.shape == (640, 800, 3)
    assert H.shape == (3, 3) and H[2, 2] == 1.0
    orb = cv2.ORB_create(2000)
    k1, d1 = orb.detectAndCompute(cv2.cvtColor(img1, cv2.COLOR_RGB2GRAY), None)
    k3, d3 = orb.detectAndCompute(cv2.cvtColor(img3, cv2.COLOR_RGB2GRAY), None)
    m = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(d1, d3)
    p1 = np.float64([k1[x.queryIdx].pt for x in m])
    p3 = np.float64([k3[x.trainIdx].pt for x in m])
    good = np.linalg.norm(warp_points(H, p1) - p3, axis=1) < 5
    good_identity = np.linalg.norm(p1 - p3, axis=1) < 5
    assert good.sum() >= 40 and good.sum() > 5 * good_identity.sum()
