"""Shared fixtures: real photos (Debian opencv-doc) and the shared networks, loaded once per session."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

torch.set_num_threads(2)

TEST_ROOT = Path(__file__).resolve().parent
FOLDER_MARKERS = {"ros": "ros", "orbslam3": "orbslam3"}  # test/<folder> -> marker of every test in it


def pytest_collection_modifyitems(config, items):
    """Mark tests by folder (test/ mirrors the package), so `-m "not ros"` or `-m orbslam3` select by need."""
    for item in items:
        folder = Path(item.fspath).resolve().relative_to(TEST_ROOT).parts[0]
        if folder in FOLDER_MARKERS:
            item.add_marker(getattr(pytest.mark, FOLDER_MARKERS[folder]))


@pytest.fixture(scope="session")
def photos():
    from agnostic_reloc.eval.photos import PhotosMissing, list_photos

    try:
        return list_photos()
    except PhotosMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def graf():
    """Oxford graf1, graf3 at 640x480 and the ground-truth homography between the resized images."""
    from agnostic_reloc.eval.photos import PhotosMissing, oxford_graf

    try:
        img1, img3, H = oxford_graf()
    except PhotosMissing as exc:
        pytest.skip(str(exc))
    h, w = img1.shape[:2]
    S = np.diag([640 / w, 480 / h, 1.0])
    H = S @ H @ np.linalg.inv(S)
    return cv2.resize(img1, (640, 480)), cv2.resize(img3, (640, 480)), H / H[2, 2]


@pytest.fixture(scope="session")
def aliked():
    from agnostic_reloc.features.aliked import get_aliked

    return get_aliked("aliked-n16", "cpu")


@pytest.fixture(scope="session")
def hard_pairs(photos):
    """Eight hard synthetic homography pairs (fixed seed, difficulty >= 0.75) from real photos."""
    from agnostic_reloc.eval.homography_pairs import make_pairs

    return make_pairs(photos, 8, seed=123, conf={"difficulty_range": (0.75, 1.0)})
