"""Keypoint suppression on real multi-scale ORB keypoints (graf1.png)."""

import os
import time

import cv2
import numpy as np
import pytest
from scipy.spatial.distance import pdist

from agnostic_reloc.features.detectors import detect
from agnostic_reloc.features.keypoints import Keypoints
from agnostic_reloc.features.suppression import SUPPRESSION_MODES, suppress
from agnostic_reloc.io.image import load_image

DATA = "/usr/share/doc/opencv-doc/examples/data"


@pytest.fixture(scope="module")
def orb_kpts():
    path = os.path.join(DATA, "graf1.png")
    if not os.path.isfile(path):
        pytest.skip(f"{path} missing: apt-get install opencv-doc")
    image = cv2.resize(load_image(path), (640, 480), interpolation=cv2.INTER_AREA)
    kpts = detect(image, "orb", 2000)
    # Shuffle so the original order is not the response order.
    return kpts.subset(np.random.default_rng(0).permutation(len(kpts)))


def _brute_force_nms(kpts, radius):
    """Reference O(N^2) greedy NMS with the same tie rules."""
    order = np.lexsort((np.arange(len(kpts)), kpts.octave, -kpts.response.astype(np.float64)))
    kept = []
    for i in order:
        if all(np.linalg.norm(kpts.xy[i] - kpts.xy[j]) >= radius for j in kept):
            kept.append(i)
    return np.sort(np.array(kept, np.int64))


@pytest.mark.parametrize("radius", [3.0, 8.0])
def test_radius_keeps_no_close_pairs(orb_kpts, radius):
    idx = suppress(orb_kpts, "radius", radius=radius)
    assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
    assert 0 < len(idx) < len(orb_kpts)
    kept = orb_kpts.subset(idx)
    np.testing.assert_array_equal(kept.xy, orb_kpts.xy[idx])
    assert pdist(kept.xy.astype(np.float64)).min() >= radius
    assert int(np.argmax(orb_kpts.response)) in idx  # strongest always kept
    # Every dropped keypoint has a kept neighbour within the radius (greedy NMS is maximal).
    dropped = np.setdiff1d(np.arange(len(orb_kpts)), idx)
    d = np.linalg.norm(orb_kpts.xy[dropped, None] - kept.xy[None], axis=2)
    assert np.all(d.min(axis=1) < radius)


def test_radius_matches_reference_and_ties():
    xy = np.array([[10, 10], [11, 10], [30, 30], [31, 30], [10, 12.5], [50, 50]], np.float32)
    kpts = Keypoints(xy, octave=[2, 0, 0, 0, 0, 1], response=[1, 1, 2, 2, 0.5, 0.1])
    # 0 and 1 tie in response: lower octave (1) wins; 2 and 3 tie on octave too: lower index (2) wins.
    idx = suppress(kpts, "radius", radius=3.0)
    np.testing.assert_array_equal(idx, [1, 2, 5])
    np.testing.assert_array_equal(idx, _brute_force_nms(kpts, 3.0))
    np.testing.assert_array_equal(suppress(kpts, "radius", radius=0.0), np.arange(6))


def test_radius_equals_brute_force_on_photo(orb_kpts):
    sub = orb_kpts.subset(np.arange(400))
    np.testing.assert_array_equal(suppress(sub, "radius", radius=5.0), _brute_force_nms(sub, 5.0))


def test_radius_is_fast():
    rng = np.random.default_rng(1)
    kpts = Keypoints(rng.uniform(0, [640, 480], (5000, 2)), octave=rng.integers(0, 8, 5000),
                     response=rng.random(5000))
    times = []
    for _ in range(3):  # best of 3: robust to a busy machine
        t0 = time.perf_counter()
        suppress(kpts, "radius", radius=3.0)
        times.append(time.perf_counter() - t0)
    assert min(times) < 0.02


def test_octave_mode(orb_kpts):
    for max_octave in (0, 2):
        idx = suppress(orb_kpts, "octave", max_octave=max_octave)
        np.testing.assert_array_equal(idx, np.flatnonzero(orb_kpts.octave <= max_octave))
        assert len(idx) > 0


def test_none_and_max_keypoints(orb_kpts):
    np.testing.assert_array_equal(suppress(orb_kpts, "none"), np.arange(len(orb_kpts)))
    idx = suppress(orb_kpts, "radius", radius=3.0, max_keypoints=300)
    assert len(idx) == 300 and np.all(np.diff(idx) > 0)
    full = suppress(orb_kpts, "radius", radius=3.0)
    assert set(idx) <= set(full)
    # The 300 kept are the strongest of the radius survivors.
    assert orb_kpts.response[idx].min() >= np.sort(orb_kpts.response[full])[::-1][299]
    top = suppress(orb_kpts, "none", max_keypoints=10)
    np.testing.assert_array_equal(top, np.sort(np.argsort(-orb_kpts.response, kind="stable")[:10]))


def test_empty_and_bad_input():
    empty = Keypoints(np.zeros((0, 2), np.float32))
    for mode in SUPPRESSION_MODES:
        assert suppress(empty, mode).shape == (0,)
    kpts = Keypoints(np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="unknown suppression mode 'grid'.*radius"):
        suppress(kpts, "grid")
    with pytest.raises(ValueError, match="radius"):
        suppress(kpts, "radius", radius=-1.0)
