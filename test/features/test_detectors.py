"""Detectors on a real photo (graf1.png from opencv-doc)."""

import os

import cv2
import numpy as np
import pytest

from agnostic_reloc.features import detectors
from agnostic_reloc.features.detectors import DETECTORS, detect
from agnostic_reloc.io.image import load_image
from agnostic_reloc.weights import WeightsError

DATA = "/usr/share/doc/opencv-doc/examples/data"


@pytest.fixture(scope="module")
def graf1():
    path = os.path.join(DATA, "graf1.png")
    if not os.path.isfile(path):
        pytest.skip(f"{path} missing: apt-get install opencv-doc")
    return cv2.resize(load_image(path), (640, 480), interpolation=cv2.INTER_AREA)


def _detect_or_skip(image, name, n):
    if name == "akaze" and not detectors.akaze_available():
        with pytest.raises(RuntimeError, match="AKAZE"):
            detect(image, name, n)
        pytest.skip(f"OpenCV {cv2.__version__} has no AKAZE (moved to contrib in OpenCV 5)")
    try:
        return detect(image, name, n)
    except WeightsError as exc:
        pytest.skip(f"weights for {name} missing: {exc}")


@pytest.mark.parametrize("name", DETECTORS)
def test_detector_bounds_and_order(graf1, name):
    n = 500
    kpts = _detect_or_skip(graf1, name, n)
    assert 50 <= len(kpts) <= n
    kpts.validate(graf1.shape)  # finite, inside the image, octave >= 0
    assert np.all(np.diff(kpts.response) <= 0), "not sorted by decreasing response"
    assert kpts.xy.dtype == np.float32 and kpts.octave.dtype == np.int32


def test_orb_is_multiscale_and_orb_ss_single_scale(graf1):
    orb = detect(graf1, "orb", 1000)
    assert len(orb) == 1000
    assert orb.octave.max() >= 4
    assert orb.scale_factor == pytest.approx(1.2)
    assert np.all(orb.angle >= 0) and np.all(orb.size > 0)
    # Level-0 pixel coordinates: higher octaves cover the whole image too.
    high = orb.xy[orb.octave >= 3]
    assert high[:, 0].max() > 400 and high[:, 1].max() > 300
    ss = detect(graf1, "orb-ss", 1000)
    assert np.all(ss.octave == 0)


def test_orb_tops_up_with_low_fast_threshold(graf1):
    low_contrast = (graf1 // 6 + 100).astype(np.uint8)
    gray = cv2.cvtColor(low_contrast, cv2.COLOR_RGB2GRAY)
    strict = cv2.ORB_create(1000, 1.2, 8, 19, 0, 2, cv2.ORB_HARRIS_SCORE, 31, 20).detect(gray, None)
    assert len(strict) < 1000  # the photo really runs out of threshold-20 corners
    kpts = detect(low_contrast, "orb", 1000)
    assert len(strict) < len(kpts) <= 1000
    _, first = np.unique(np.c_[kpts.octave, np.rint(kpts.xy)], axis=0, return_index=True)
    assert len(first) == len(kpts), "top-up added duplicates"


def test_gray_input_and_determinism(graf1):
    gray = cv2.cvtColor(graf1, cv2.COLOR_RGB2GRAY)
    a, b = detect(gray, "gftt", 300), detect(graf1, "gftt", 300)
    np.testing.assert_array_equal(a.xy, b.xy)


def test_bad_input_raises(graf1):
    with pytest.raises(ValueError, match="unknown detector 'surf'.*orb"):
        detect(graf1, "surf")
    with pytest.raises(ValueError, match="max_keypoints"):
        detect(graf1, "orb", 0)
    with pytest.raises(ValueError, match="dtype"):
        detect(graf1.astype(np.float32), "orb")
