"""Keypoint detectors behind one call: `detect(image, name, max_keypoints)` -> Keypoints.

Every detector returns at most `max_keypoints` keypoints with xy in full-resolution pixels,
sorted by decreasing response. Octaves follow each detector's own pyramid, whose ratio is
`Keypoints.scale_factor`:

- orb / orb-ss: ORB-SLAM3-like ORB (8 levels x 1.2, or a single level), octave = pyramid level.
- sift, akaze: OpenCV's octaves (ratio 2.0); SIFT's up-sampled octave -1 is clipped to 0.
  akaze needs an OpenCV with AKAZE (4.x; OpenCV 5 moved it to contrib), else RuntimeError.
- gftt, aliked, disk: single-scale, octave 0.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from agnostic_reloc.features.keypoints import Keypoints
from agnostic_reloc.io.image import check_image

DETECTORS = ("orb", "orb-ss", "sift", "akaze", "gftt", "aliked", "disk")

# ORB-SLAM3's ORBextractor settings (EuRoC/TUM yaml files): 8 levels x 1.2, iniThFAST 20, minThFAST 7.
ORB_CONF = {
    "n_levels": 8,
    "scale_factor": 1.2,
    "ini_th_fast": 20,
    "min_th_fast": 7,
    "edge_threshold": 19,
    "patch_size": 31,
}
GFTT_CONF = {"quality_level": 0.01, "min_distance": 5.0, "block_size": 3, "size": 7.0}
DISK_CONF = {"window_size": 5, "score_threshold": 0.0, "size": 7.0}

_DISK_MODELS: dict[str, torch.nn.Module] = {}


def _sorted_capped(kpts: Keypoints, max_keypoints: int) -> Keypoints:
    """Strongest `max_keypoints` keypoints, by decreasing response (stable: ties keep detector order)."""
    order = np.argsort(-kpts.response, kind="stable")[:max_keypoints]
    return kpts.subset(order)


def _from_cv(kps, scale_factor: float, octaves: np.ndarray | None = None) -> Keypoints:
    """OpenCV KeyPoint list -> Keypoints (octave taken from kp.octave unless given)."""
    if len(kps) == 0:
        return Keypoints(np.zeros((0, 2), np.float32), scale_factor=scale_factor)
    xy = np.array([kp.pt for kp in kps], np.float32)
    if octaves is None:
        octaves = np.array([kp.octave for kp in kps], np.int32)
    return Keypoints(
        xy, octaves,
        np.array([kp.response for kp in kps], np.float32),
        np.array([kp.angle for kp in kps], np.float32),
        np.array([kp.size for kp in kps], np.float32),
        scale_factor,
    )


def _orb(gray: np.ndarray, max_keypoints: int, n_levels: int) -> Keypoints:
    """ORB-SLAM3-like ORB.

    ORB-SLAM3 runs FAST with iniThFAST=20 per 35-px grid cell and retries a cell with minThFAST=7
    when it yields nothing, then spreads keypoints with an octree. Emulation here: OpenCV ORB
    (same per-level budget, Harris ranking, 31-px patch, orientation) with threshold 20; if that
    gives fewer than `max_keypoints`, ORB at threshold 7 tops it up with its strongest keypoints
    not already found (same octave and pixel). Positions are in level-0 pixels.
    """
    c = ORB_CONF

    def run(threshold: int):
        orb = cv2.ORB_create(nfeatures=max_keypoints, scaleFactor=c["scale_factor"], nlevels=n_levels,
                             edgeThreshold=c["edge_threshold"], firstLevel=0, WTA_K=2,
                             scoreType=cv2.ORB_HARRIS_SCORE, patchSize=c["patch_size"], fastThreshold=threshold)
        return list(orb.detect(gray, None))

    kps = run(c["ini_th_fast"])
    if len(kps) < max_keypoints:
        seen = {(kp.octave, round(kp.pt[0]), round(kp.pt[1])) for kp in kps}
        extra = [kp for kp in run(c["min_th_fast"])
                 if (kp.octave, round(kp.pt[0]), round(kp.pt[1])) not in seen]
        extra.sort(key=lambda kp: -kp.response)
        kps += extra[:max_keypoints - len(kps)]
    return _from_cv(kps, c["scale_factor"])


def _sift(gray: np.ndarray, max_keypoints: int) -> Keypoints:
    """OpenCV SIFT; one keypoint per location (SIFT repeats a point per extra orientation: the strongest is kept)."""
    # Ask for a third more: duplicates (extra orientations) are dropped below.
    kps = cv2.SIFT_create(nfeatures=max_keypoints + max_keypoints // 3 + 1).detect(gray, None)
    octave = np.array([kp.octave & 255 for kp in kps], np.int32)
    octave = np.where(octave >= 128, 0, octave)  # 255 = up-sampled octave -1
    kpts = _from_cv(kps, 2.0, octave)
    order = np.argsort(-kpts.response, kind="stable")
    _, first = np.unique(kpts.xy[order], axis=0, return_index=True)
    return kpts.subset(order[np.sort(first)])


def akaze_available() -> bool:
    """True if this OpenCV build has AKAZE (OpenCV 4.x; OpenCV 5 moved it to opencv-contrib)."""
    return hasattr(cv2, "AKAZE_create")


def _akaze(gray: np.ndarray, max_keypoints: int) -> Keypoints:
    """OpenCV AKAZE with its default threshold (octave ratio 2.0)."""
    if not akaze_available():
        raise RuntimeError(f"detector 'akaze' needs OpenCV's AKAZE, which OpenCV {cv2.__version__} lacks "
                           "(OpenCV 5 moved it to opencv-contrib): install opencv-python-headless<5")
    return _from_cv(cv2.AKAZE_create().detect(gray, None), 2.0)


def _gftt(gray: np.ndarray, max_keypoints: int) -> Keypoints:
    """Shi-Tomasi corners (cv2.goodFeaturesToTrack), response = min-eigenvalue quality, octave 0."""
    c = GFTT_CONF
    corners, quality = cv2.goodFeaturesToTrackWithQuality(
        gray, maxCorners=max_keypoints, qualityLevel=c["quality_level"], minDistance=c["min_distance"],
        mask=None, blockSize=c["block_size"])
    if corners is None or len(corners) == 0:
        return Keypoints(np.zeros((0, 2), np.float32), scale_factor=1.0)
    xy = corners.reshape(-1, 2).astype(np.float32)
    return Keypoints(xy, response=quality.reshape(-1), size=np.full(len(xy), c["size"]), scale_factor=1.0)


def _disk_model(device: str) -> torch.nn.Module:
    """kornia DISK with the official weights (never downloaded), cached per device."""
    key = str(torch.device(device))
    if key not in _DISK_MODELS:
        from kornia.feature import DISK

        from agnostic_reloc.weights import official_path
        state = torch.load(official_path("disk"), map_location="cpu", weights_only=True)["extractor"]
        model = DISK()
        model.load_state_dict(state)
        _DISK_MODELS[key] = model.eval().to(device)
    return _DISK_MODELS[key]


def _disk(image: np.ndarray, max_keypoints: int, device: str) -> Keypoints:
    """DISK keypoints: NMS window 5, heatmap logit > 0, image zero-padded to multiples of 16."""
    c = DISK_CONF
    model = _disk_model(device)
    x = torch.from_numpy(image).to(device).permute(2, 0, 1)[None].float() / 255.0
    with torch.inference_mode():
        feats = model(x, n=max_keypoints, window_size=c["window_size"], score_threshold=c["score_threshold"],
                      pad_if_not_divisible=True)[0]
    xy = feats.keypoints.cpu().numpy().astype(np.float32)
    score = feats.detection_scores.cpu().numpy().astype(np.float32)
    return Keypoints(xy, response=score, size=np.full(len(xy), c["size"]), scale_factor=1.0)


def detect(image: np.ndarray, name: str, max_keypoints: int = 1000, device: str = "cpu") -> Keypoints:
    """Detect keypoints with a named detector (see DETECTORS).

    Args:
        image: RGB uint8 [H x W x 3] (or anything `check_image` accepts).
        name: one of DETECTORS.
        max_keypoints: upper bound on the number returned (> 0).
        device: torch device for the learned detectors (aliked, disk).
    Returns:
        At most `max_keypoints` Keypoints, xy in full-resolution pixels, by decreasing response.
    """
    if name not in DETECTORS:
        raise ValueError(f"unknown detector '{name}'; known detectors: {', '.join(DETECTORS)}")
    if int(max_keypoints) != max_keypoints or max_keypoints <= 0:
        raise ValueError(f"max_keypoints must be a positive integer, got {max_keypoints}")
    max_keypoints = int(max_keypoints)
    image = check_image(image)
    if name in ("aliked", "disk"):
        if name == "aliked":
            from agnostic_reloc.features.aliked import get_aliked
            kpts = get_aliked("aliked-n16", device).detect(image, max_keypoints)
        else:
            kpts = _disk(image, max_keypoints, device)
    else:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        if name == "orb":
            kpts = _orb(gray, max_keypoints, ORB_CONF["n_levels"])
        elif name == "orb-ss":
            kpts = _orb(gray, max_keypoints, 1)
        elif name == "sift":
            kpts = _sift(gray, max_keypoints)
        elif name == "akaze":
            kpts = _akaze(gray, max_keypoints)
        else:
            kpts = _gftt(gray, max_keypoints)
    return _sorted_capped(kpts, max_keypoints)
