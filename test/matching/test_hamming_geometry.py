"""ORB descriptors + Hamming NN on a real photo and its synthetic warp; robust geometry on synthetic scenes."""

import os

import cv2
import numpy as np
import pytest

from agnostic_reloc.features.detectors import detect
from agnostic_reloc.features.keypoints import Keypoints
from agnostic_reloc.geometry import (
    GeometryResult,
    T_from_Rt,
    estimate_essential,
    estimate_homography,
    estimate_pnp,
    invert_T,
    so3_exp,
)
from agnostic_reloc.io.image import load_image
from agnostic_reloc.matching.hamming import match_float_nn, match_hamming, orb_descriptors

DATA = "/usr/share/doc/opencv-doc/examples/data"
H_TRUE = np.array([[0.95, 0.08, 20.0], [-0.06, 0.97, 15.0], [2e-5, -3e-5, 1.0]])
K = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])


def _warp(pts, H):
    return cv2.perspectiveTransform(np.asarray(pts, np.float64)[None], H)[0]


def _rot_err_deg(R):
    return np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1)))


@pytest.fixture(scope="module")
def warped_pair():
    path = os.path.join(DATA, "graf1.png")
    if not os.path.isfile(path):
        pytest.skip(f"{path} missing: apt-get install opencv-doc")
    im0 = cv2.resize(load_image(path), (640, 480), interpolation=cv2.INTER_AREA)
    im1 = cv2.warpPerspective(im0, H_TRUE, (640, 480))
    return im0, im1


@pytest.fixture(scope="module")
def orb_matches(warped_pair):
    im0, im1 = warped_pair
    k0, k1 = detect(im0, "orb", 1000), detect(im1, "orb", 1000)
    d0, v0 = orb_descriptors(im0, k0)
    d1, v1 = orb_descriptors(im1, k1)
    m, s = match_hamming(d0, d1, v0, v1)
    return k0.xy[m[:, 0]], k1.xy[m[:, 1]], s


def test_orb_hamming_matches_follow_homography(orb_matches):
    p0, p1, scores = orb_matches
    assert len(p0) >= 200
    err = np.linalg.norm(_warp(p0, H_TRUE) - p1, axis=1)
    assert np.mean(err < 3) > 0.8
    assert scores.dtype == np.float32 and np.all((scores >= 0) & (scores <= 1))


def test_orb_descriptors_align_with_input_order(warped_pair):
    im0, _ = warped_pair
    gftt = detect(im0, "gftt", 400)  # no octave/angle: border points get dropped, angles computed
    border = Keypoints(np.array([[1.0, 1.0], [638.0, 5.0]], np.float32))
    kpts = Keypoints.concat([border, gftt]).subset(np.random.default_rng(0).permutation(len(gftt) + 2))
    desc, valid = orb_descriptors(im0, kpts)
    assert desc.shape == (len(kpts), 32) and desc.dtype == np.uint8
    assert not valid[np.flatnonzero((kpts.xy < 3).all(1) | (kpts.xy[:, 1] < 6))].any()
    assert valid.sum() > 300 and np.all(desc[~valid] == 0)
    # Describing a subset gives the same rows: the output really follows the input order.
    sub = np.flatnonzero(valid)[::3]
    d_sub, v_sub = orb_descriptors(im0, kpts.subset(sub))
    assert v_sub.all()
    np.testing.assert_array_equal(d_sub, desc[sub])


def test_match_hamming_rules():
    rng = np.random.default_rng(0)
    d0 = rng.integers(0, 256, (50, 32), dtype=np.uint8)
    d1 = d0[::-1].copy()
    m, s = match_hamming(d0, d1)
    np.testing.assert_array_equal(m[:, 1], 49 - m[:, 0])
    assert len(m) == 50 and np.all(s == 1)
    valid0 = np.ones(50, bool)
    valid0[:10] = False
    m, _ = match_hamming(d0, d1, valid0=valid0)
    assert len(m) == 40 and m[:, 0].min() == 10
    m, _ = match_hamming(d0, np.zeros((0, 32), np.uint8))
    assert m.shape == (0, 2)
    with pytest.raises(ValueError, match="uint8"):
        match_hamming(d0.astype(np.float32), d1)
    with pytest.raises(ValueError, match="widths differ"):
        match_hamming(d0, d1[:, :16])


def test_match_float_nn():
    rng = np.random.default_rng(0)
    d0 = rng.normal(size=(100, 64)).astype(np.float32)
    perm = rng.permutation(100)
    d1 = 3.0 * d0[perm] + rng.normal(scale=0.01, size=(100, 64)).astype(np.float32)
    m, s = match_float_nn(d0, d1)
    assert len(m) == 100
    np.testing.assert_array_equal(perm[m[:, 1]], m[:, 0])
    assert np.all(s > 0.99) and s.dtype == np.float32
    with pytest.raises(ValueError, match="non-finite"):
        match_float_nn(np.full((2, 64), np.nan), d1)


def test_homography_from_real_matches(orb_matches):
    p0, p1, _ = orb_matches
    res = estimate_homography(p0, p1)
    assert isinstance(res, GeometryResult) and res.success and res.reason == ""
    assert res.num_inliers == res.inliers.sum() >= 150
    corners = np.array([[0, 0], [639, 0], [639, 479], [0, 479]], np.float64)
    assert np.abs(_warp(corners, res.model) - _warp(corners, H_TRUE)).max() < 3
    assert res.covariance.shape == (8, 8) and np.all(np.linalg.eigvalsh(res.covariance) > 0)


def _scene(seed=0, n=300, outlier_ratio=0.3, noise=0.5):
    rng = np.random.default_rng(seed)
    X_w = rng.uniform([-2, -1.5, 4], [2, 1.5, 8], (n, 3))  # camera 0 = world frame
    T_1_w = T_from_Rt(so3_exp([0.05, -0.1, 0.03]), [0.8, -0.1, 0.2])
    X_1 = X_w @ T_1_w[:3, :3].T + T_1_w[:3, 3]
    uv0 = X_w[:, :2] / X_w[:, 2:] * 500 + [320, 240] + rng.normal(0, noise, (n, 2))
    uv1 = X_1[:, :2] / X_1[:, 2:] * 500 + [320, 240] + rng.normal(0, noise, (n, 2))
    out = rng.random(n) < outlier_ratio
    uv1[out] = rng.uniform([0, 0], [640, 480], (out.sum(), 2))
    return X_w, uv0, uv1, T_1_w, out


def test_pnp_recovers_pose_and_covariance():
    X_w, _, uv1, T_1_w, out = _scene()
    res = estimate_pnp(uv1, X_w, K)
    assert res.success and res.model.shape == (4, 4)
    assert (res.inliers == ~out).mean() > 0.97
    dT = res.model @ invert_T(T_1_w)
    assert np.linalg.norm(dT[:3, 3]) < 0.01  # 1 cm
    assert _rot_err_deg(dT[:3, :3]) < 0.1
    C = res.covariance
    assert C.shape == (6, 6) and np.allclose(C, C.T) and np.linalg.eigvalsh(C).min() > 0
    assert np.sqrt(np.diag(C))[3:].max() < 0.01  # well-conditioned: < 1 cm std


def test_essential_recovers_relative_pose():
    _, uv0, uv1, T_1_0, out = _scene(seed=1)
    res = estimate_essential(uv0, uv1, K, K)
    assert res.success and res.num_inliers > 150
    assert _rot_err_deg(res.model[:3, :3] @ T_1_0[:3, :3].T) < 0.5
    t_true = T_1_0[:3, 3] / np.linalg.norm(T_1_0[:3, 3])
    assert np.linalg.norm(res.model[:3, 3]) == pytest.approx(1.0)
    assert np.degrees(np.arccos(np.clip(res.model[:3, 3] @ t_true, -1, 1))) < 2
    C = res.covariance
    assert C.shape == (6, 6) and np.allclose(C, C.T)
    gauge = np.r_[0, 0, 0, res.model[:3, 3]]
    assert abs(gauge @ C @ gauge) < 1e-12  # the unobservable scale direction has no variance
    assert np.linalg.eigvalsh(C)[1:].min() > 0  # positive definite on the other 5 directions


def test_too_few_points_fail_softly():
    X_w, uv0, uv1, _, _ = _scene(outlier_ratio=0.0)
    for res, size in ((estimate_homography(uv0[:3], uv1[:3]), 3), (estimate_essential(uv0[:4], uv1[:4], K, K), 4),
                      (estimate_pnp(uv1[:3], X_w[:3], K), 4)):
        assert not res.success and "too few" in res.reason
        assert res.model.shape == (size, size) and res.num_inliers == 0
    res = estimate_pnp(uv1[:10], X_w[:10], K)  # a pose, but fewer than min_inliers
    assert not res.success and "inliers" in res.reason and res.num_inliers == 10


def test_malformed_input_raises():
    X_w, uv0, uv1, _, _ = _scene(n=30)
    bad = uv0.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite.*row 3"):
        estimate_homography(bad, uv1)
    with pytest.raises(ValueError, match="rows"):
        estimate_essential(uv0, uv1[:-1], K, K)
    with pytest.raises(ValueError, match=r"\[M x 3\]"):
        estimate_pnp(uv1, uv1, K)
    with pytest.raises(ValueError, match="intrinsics"):
        estimate_pnp(uv1, X_w, np.eye(2))
    with pytest.raises(ValueError, match="4x4"):
        invert_T(np.eye(3))


def test_transform_helpers():
    T = T_from_Rt(so3_exp([0.3, -0.2, 0.1]), [1.0, 2.0, 3.0])
    np.testing.assert_allclose(T @ invert_T(T), np.eye(4), atol=1e-12)
