"""The node's parameters in one place (ROS-free): names, defaults, descriptions, ranges; YAML loading.

Engine options are the node parameters `engine.<key>` (see `engine.default_conf`); `None` defaults are the
empty string on the ROS side. `config/reloc.yaml` holds the values a user edits; the replay tool reads the
same file with `load_params`, so node and replay run the same engine configuration.
"""

from __future__ import annotations

import os
from typing import Any

import yaml

from .engine import default_conf as engine_defaults

NODE_NAME = "reloc_node"

# name: (default, description, (min, max) or None)
NODE_PARAMS: dict[str, tuple[Any, str, tuple | None]] = {
    "map_path": ("", "keyframe map file: loaded at start when it exists, written by ~/save_map and on shutdown", None),
    "load_map_on_start": (True, "load map_path at start when the file exists", None),
    "save_map_on_shutdown": (True, "write map_path when the node shuts down (if map_path is set)", None),
    "map_frame": ("map", "frame id of the SLAM map (relocalization and marker frames)", None),
    "publish_initialpose": (False, "also publish each relocalization on /initialpose", None),
    "query_queue_size": (2, "relocalization queries waiting for the worker; older ones are dropped and counted",
                         (1, 100)),
    "keyframe_backlog_warn": (20, "warn when this many keyframes wait for extraction (they are never dropped)",
                              (1, 100000)),
    "sync_queue_size": (30, "messages per input kept while waiting for the other inputs of the same stamp",
                        (1, 10000)),
    "sync_slop_s": (0.0, "stamp tolerance between keypoints, pose and image (0: equal stamps)", (0.0, 1.0)),
    "image_queue_depth": (30, "QoS depth of the image subscription (images are buffered for synchronisation)",
                          (1, 1000)),
    "diagnostics_period_s": (1.0, "period of /diagnostics", (0.1, 60.0)),
    "warn_throttle_s": (5.0, "minimum period between repeated warnings of the same kind", (0.0, 3600.0)),
    "matches_image_max_width": (1280, "width limit of ~/matches_image (both images side by side)", (64, 8192)),
}

ENGINE_DESCRIPTIONS: dict[str, tuple[str, tuple | None]] = {
    "matcher": ("lightglue (ALIKED at the SLAM keypoints + LightGlue) or nn (ORB Hamming, the classic baseline)",
                None),
    "suppression": ("nearby-keypoint remedy: none | radius | octave", None),
    "sampling": ("ALIKED sampling of multi-scale keypoints: full | octave", None),
    "octave_levels": ("pyramid levels that get their own ALIKED map", None),
    "weights": ("LightGlue checkpoint (fine-tuned agnostic weights); empty = official ALIKED LightGlue", None),
    "device": ("cpu | cuda | auto", None),
    "filter_threshold": ("LightGlue match confidence threshold", (0.0, 1.0)),
    "ensemble_detector": ("add this detector's keypoints to every keyframe (e.g. aliked); empty = off", None),
    "ensemble_keypoints": ("number of ensemble keypoints", (1, 10000)),
    "num_candidates": ("keyframes verified per query (top-K of retrieval)", (1, 100)),
    "early_accept": ("CPU: verify candidates one by one and stop at the first accepted", None),
    "temporal_window_s": ("loops ignore keyframes within this many seconds of the query", (0.0, 1e6)),
    "pnp_threshold_px": ("PnP inlier reprojection error (px)", (0.1, 50.0)),
    "essential_threshold_px": ("essential-matrix inlier error (px)", (0.1, 50.0)),
    "min_inliers": ("inliers a loop candidate needs", (5, 100000)),
    "min_inlier_ratio": ("inliers / matches a candidate needs", (0.0, 1.0)),
    "consistency_required": ("agreeing detections before a loop is accepted", (1, 100)),
    "consistency_window_s": ("how far back agreeing detections may lie (s)", (0.0, 1e6)),
    "consistency_dist_m": ("drift-correction agreement: translation (m)", (0.0, 1e3)),
    "consistency_angle_deg": ("drift-correction agreement: rotation (deg)", (0.0, 180.0)),
    "prior_dist_m": ("max loop correction: translation (m) at zero distance travelled", (0.0, 1e6)),
    "prior_dist_per_m": ("max loop correction growth per metre travelled", (0.0, 10.0)),
    "prior_angle_deg": ("max loop correction: rotation (deg) at zero distance travelled", (0.0, 180.0)),
    "prior_angle_per_m": ("max loop correction rotation growth per metre (deg/m)", (0.0, 180.0)),
    "use_pose_prior": ("reject loops whose correction exceeds the drift bound", None),
    "reloc_min_inliers": ("PnP inliers for a relocalization", (5, 100000)),
    "reloc_agree_dist_m": ("relocalization candidates agreeing within this distance support each other",
                           (0.0, 1e3)),
    "reloc_agree_angle_deg": ("... and this angle", (0.0, 180.0)),
    "reloc_strong_inliers": ("a single candidate this strong needs no second one", (5, 100000)),
    "reloc_loop_corrected": ("compare relocalization candidates after correcting their keyframes with the accepted "
                             "loops (pose graph), so copies of a place from different laps of a drifting SLAM agree",
                             None),
}


def ros_value(value: Any) -> Any:
    """Engine default -> ROS parameter value (None -> '', tuples -> lists)."""
    if value is None:
        return ""
    if isinstance(value, tuple):
        return list(value)
    return value


def engine_param_defaults() -> dict[str, Any]:
    """`engine.<key>` -> ROS default value for every engine option."""
    missing = set(engine_defaults) - set(ENGINE_DESCRIPTIONS)
    if missing:
        raise RuntimeError(f"engine options without a node parameter description: {sorted(missing)}")
    return {f"engine.{k}": ros_value(v) for k, v in engine_defaults.items()}


def engine_conf(params: dict[str, Any]) -> dict:
    """Node parameters (`engine.<key>` or a nested `engine` dict) -> engine conf ('' -> None, lists -> tuples)."""
    flat = dict(params)
    for k, v in (flat.pop("engine", None) or {}).items():
        flat[f"engine.{k}"] = v
    conf = {}
    for name, value in flat.items():
        if not name.startswith("engine."):
            continue
        key = name[len("engine."):]
        if key not in engine_defaults:
            raise ValueError(f"unknown engine parameter '{name}' (known: {', '.join(sorted(engine_defaults))})")
        if value == "" and engine_defaults[key] is None:
            value = None
        elif isinstance(engine_defaults[key], tuple):
            value = tuple(value)
        conf[key] = value
    return conf


def load_params(path: str | os.PathLike, node_name: str = NODE_NAME) -> dict[str, Any]:
    """Read a ROS 2 parameter file (`<node>: {ros__parameters: {...}}`, also `/**`); nested dicts are
    flattened to dotted names. ValueError naming the problem for a missing or malformed file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"parameter file {path} does not exist")
    with open(path) as f:
        try:
            doc = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"parameter file {path} is not valid YAML: {exc}") from None
    section = None
    for key in (node_name, f"/{node_name}", "/**"):
        if isinstance(doc.get(key), dict) and "ros__parameters" in doc[key]:
            section = doc[key]["ros__parameters"]
            break
    if section is None:
        raise ValueError(f"parameter file {path} has no '{node_name}: ros__parameters:' section")

    def flatten(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flatten(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    params = flatten(section)
    known = set(NODE_PARAMS) | set(engine_param_defaults())
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"parameter file {path}: unknown parameters {unknown}")
    return params
