"""ORB-SLAM3 settings files (OpenCV YAML, `File.version: "1.0"`) written from our camera model.

ORB-SLAM3 reads its camera, depth and ORB-extractor parameters from one YAML file. We write it from the
CameraInfo-derived `CameraModel`, so the bridge never needs a hand-written file: plumb_bob -> "PinHole" with
k1 k2 p1 p2 (k3), equidistant -> "KannalaBrandt8" with k1..k4, no distortion -> "PinHole" with zeros.
`rational_polynomial` has no ORB-SLAM3 model: the bridge rectifies such images itself and writes a pinhole file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..io.camera import CameraModel

default_conf = {
    "n_features": 1000,  # ORBextractor.nFeatures (ORB-SLAM3's keypoints per frame)
    "scale_factor": 1.2,  # ORBextractor.scaleFactor
    "n_levels": 8,  # ORBextractor.nLevels
    "ini_th_fast": 20,  # ORBextractor.iniThFAST
    "min_th_fast": 7,  # ORBextractor.minThFAST
    "fps": 20,  # Camera.fps (integer) (ORB-SLAM3 uses it for keyframe insertion timing)
    "rgb": 1,  # Camera.RGB: 1 = images are RGB (we always pass RGB)
    "th_depth": 40.0,  # Stereo.ThDepth: close/far point threshold in baselines (RGB-D)
    "baseline_m": 0.08,  # Stereo.b: virtual baseline for RGB-D (bf = b * fx)
    "depth_map_factor": 1.0,  # RGBD.DepthMapFactor: we pass depth in metres
}

SETTINGS_MODELS = ("plumb_bob", "equidistant", "none", "")


def _fmt(v) -> str:
    """OpenCV YAML scalar: strings quoted, ints bare, floats always with a decimal point (ORB-SLAM3 rejects
    '250' where it reads a real number)."""
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    return repr(float(v))


def write_settings(path: str | os.PathLike, camera: CameraModel, rgbd: bool, conf: dict | None = None) -> Path:
    """Write an ORB-SLAM3 settings file for `camera`; returns its path.

    Args:
        camera: intrinsics and distortion of the images that will be tracked (raw pixels).
        rgbd: also write the RGB-D keys (depth in metres, DepthMapFactor 1).
    Raises:
        ValueError for a distortion model ORB-SLAM3 cannot represent (rectify the images first).
    """
    c = {**default_conf, **(conf or {})}
    unknown = set(c) - set(default_conf)
    if unknown:
        raise ValueError(f"unknown ORB-SLAM3 settings options {sorted(unknown)}")
    K = np.asarray(camera.K, np.float64)
    D = np.asarray(camera.D, np.float64).reshape(-1)
    model = camera.model if camera.distorted else "none"
    if model not in SETTINGS_MODELS:
        raise ValueError(f"ORB-SLAM3 has no '{model}' camera model: rectify the images to a pinhole camera first")
    rows = {"File.version": "1.0"}
    if model == "equidistant":
        rows["Camera.type"] = "KannalaBrandt8"
        dist = {f"Camera1.k{i + 1}": D[i] for i in range(4)}
    else:
        rows["Camera.type"] = "PinHole"
        D5 = np.zeros(5)
        D5[: min(5, D.size)] = D[:5]
        dist = {"Camera1.k1": D5[0], "Camera1.k2": D5[1], "Camera1.p1": D5[2], "Camera1.p2": D5[3]}
        if D5[4] != 0.0:
            dist["Camera1.k3"] = D5[4]
    rows.update({"Camera1.fx": K[0, 0], "Camera1.fy": K[1, 1], "Camera1.cx": K[0, 2], "Camera1.cy": K[1, 2]})
    rows.update(dist)
    rows.update({"Camera.width": int(camera.width), "Camera.height": int(camera.height), "Camera.fps": int(round(c["fps"])),
                 "Camera.RGB": int(c["rgb"])})
    if rgbd:
        rows.update({"Stereo.ThDepth": c["th_depth"], "Stereo.b": c["baseline_m"],
                     "RGBD.DepthMapFactor": c["depth_map_factor"]})
    rows.update({"ORBextractor.nFeatures": int(c["n_features"]), "ORBextractor.scaleFactor": c["scale_factor"],
                 "ORBextractor.nLevels": int(c["n_levels"]), "ORBextractor.iniThFAST": int(c["ini_th_fast"]),
                 "ORBextractor.minThFAST": int(c["min_th_fast"])})
    # the viewer keys are required by the settings reader even without a viewer
    rows.update({"Viewer.KeyFrameSize": 0.05, "Viewer.KeyFrameLineWidth": 1.0, "Viewer.GraphLineWidth": 0.9,
                 "Viewer.PointSize": 2.0, "Viewer.CameraSize": 0.08, "Viewer.CameraLineWidth": 3.0,
                 "Viewer.ViewpointX": 0.0, "Viewer.ViewpointY": -0.7, "Viewer.ViewpointZ": -1.8,
                 "Viewer.ViewpointF": 500.0})
    lines = ["%YAML:1.0"]
    for key, v in rows.items():
        lines.append(f"{key}: {_fmt(v)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
