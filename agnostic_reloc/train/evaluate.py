"""Zero-shot evaluation of LightGlue weights per detector: official vs fine-tuned, side by side.

For every detector (including detectors left out of training) keypoints are detected and described by the frozen
ALIKED once; every set of weights then matches the same features. By default the multi-scale ORB detector goes in
as the node feeds ORB-SLAM3's keypoints to LightGlue (the deployed pipeline: 1000 keypoints, no suppression,
octave-aware sampling, the engine's filter threshold); the other detectors are radius-NMS'd as at training time.
Homography pairs give AUC@3/5/10 px of the corner error (RANSAC homography); posed pairs give AUC@5/10/20 deg of
max(rotation, translation-angle) error (RANSAC essential matrix). Writes a table (stdout), results.json and a
grouped bar plot (PNG).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..eval.metrics import homography_corner_error, pose_auc, relative_pose_error
from ..geometry import estimate_essential, estimate_homography
from .data import KeypointSampler

logger = logging.getLogger("agnostic_reloc.train")

H_THRESHOLDS = (3, 5, 10)  # px
POSE_THRESHOLDS = (5, 10, 20)  # degrees

default_conf = {
    "max_keypoints": 1024,  # keypoints per image after NMS (non-deployed detectors)
    "nms_radius": 3.0,  # radius NMS (px), as at training time (non-deployed detectors)
    "sampling": "full",  # ALIKED sampling at the non-deployed detectors' keypoints (full | octave)
    "deployed": ["orb"],  # detectors evaluated as the engine takes the SLAM's keypoints (no NMS, octave sampling)
    "deployed_max_keypoints": 1000,  # keypoints per image of a deployed detector (ORB-SLAM3's nFeatures)
    "device": "auto",  # cpu | cuda | auto
    "ransac_px": 3.0,  # homography RANSAC threshold (px)
    "essential_px": 1.5,  # essential-matrix RANSAC threshold (px)
    "filter_threshold": 0.1,  # LightGlue match confidence threshold
    "depth_confidence": -1,  # LightGlue early exit (-1 = off, as trained)
    "width_confidence": -1,  # LightGlue pruning (-1 = off)
}


def world_posed_pairs(n: int, seed: int = 0, conf: dict | None = None) -> list[dict]:
    """Up to n posed revisit pairs of a generated `loop` world sequence (lap-2 keyframe, nearest lap-1 one).

    Lap 2 sees the places from another viewpoint and in darker light (world/trajectory.py), so these pairs are
    3D, wide-baseline and photometrically different: unlike the planar homography pairs. The world's textures
    are drawn from all photos (training ones included): say so when reporting these numbers.
    """
    from ..world import make_sequence
    from ..world.sequence import gt_revisits

    if n <= 0:
        raise ValueError(f"need a positive number of world pairs, got {n}")
    seq = make_sequence(seed=int(seed), profile="loop", conf={"keep_depth": False, **(conf or {})}, progress=False)
    revisits = gt_revisits(seq, max_dist=1.0, max_angle_deg=30.0)
    if not revisits:
        raise ValueError(f"the world sequence of seed {seed} has no revisit pair")
    pick = np.unique(np.linspace(0, len(revisits) - 1, min(n, len(revisits))).round().astype(int))
    K = np.asarray(seq.K, np.float64)
    out = []
    for k in pick:
        f0, f1 = seq.frames[revisits[k][1]], seq.frames[revisits[k][0]]
        T_0to1 = np.linalg.inv(f1.T_world_cam) @ f0.T_world_cam
        out.append({"image0": f0.image, "image1": f1.image, "K0": K, "K1": K, "T_0to1": T_0to1,
                    "name": f"world{seed}_{f0.index}_{f1.index}"})
    return out


def _weights_name(w: str) -> str:
    return "official" if w in (None, "official") else Path(w).stem


def evaluate_matcher(weights_list: list[str], detectors: list[str], pairs: list | None = None,
                     posed: list[dict] | None = None, out_dir: str | None = None, conf: dict | None = None) -> dict:
    """Evaluate each weights file on each detector.

    Args:
        weights_list: 'official' or paths of fine-tuned LightGlue checkpoints / exported weights.
        detectors: detector names (features.detectors.DETECTORS).
        pairs: homography pairs (homography_pairs.HomographyPair: image0, image1, H_0to1).
        posed: posed pairs, dicts with image0, image1 (RGB uint8), K0, K1 (3x3), T_0to1 (4x4, camera 0 -> 1).
        out_dir: where results.json and auc.png go (None: nothing written).
    Returns:
        {weights name: {detector: {"homography": {"auc@3": ..}, "pose": {"auc@5": ..}}}}, AUCs in percent.
    """
    from ..features.aliked import resolve_device
    from ..matching.lightglue import LightGlueMatcher

    unknown = set(conf or {}) - set(default_conf)
    if unknown:
        raise ValueError(f"unknown evaluation options {sorted(unknown)}; known: {sorted(default_conf)}")
    conf = {**default_conf, **(conf or {})}
    if not pairs and not posed:
        raise ValueError("evaluate_matcher needs homography pairs and/or posed pairs")
    device = str(resolve_device(conf["device"]))
    names = [_weights_name(w) for w in weights_list]
    if len(set(names)) != len(names):
        raise ValueError(f"weights must have distinct names, got {names}")
    matchers = {n: LightGlueMatcher(weights=None if w == "official" else str(w), device=device,
                                    depth_confidence=conf["depth_confidence"], width_confidence=conf["width_confidence"],
                                    filter_threshold=conf["filter_threshold"])
                for n, w in zip(names, weights_list)}
    results: dict = {n: {} for n in names}
    sets = [("homography", pairs or []), ("pose", posed or [])]
    for det in detectors:
        sampler = KeypointSampler({"detectors": [det], "max_keypoints": conf["max_keypoints"],
                                   "nms_radius": conf["nms_radius"], "sampling": conf["sampling"], "device": device,
                                   "deployed": conf["deployed"],
                                   "deployed_max_keypoints": conf["deployed_max_keypoints"]})
        errors = {n: {"homography": [], "pose": []} for n in names}
        for kind, items in sets:
            for item in tqdm(items, desc=f"eval {det} {kind}", leave=False):
                get = (lambda k: item[k]) if isinstance(item, dict) else (lambda k: getattr(item, k))
                im0, im1 = get("image0"), get("image1")
                k0, k1 = sampler.keypoints(im0, [det]), sampler.keypoints(im1, [det])
                d0, d1 = sampler.describe([im0, im1], [k0, k1], [det])
                f0 = {"keypoints": k0.xy, "descriptors": d0, "image_size": (im0.shape[1], im0.shape[0])}
                f1 = {"keypoints": k1.xy, "descriptors": d1, "image_size": (im1.shape[1], im1.shape[0])}
                for n, matcher in matchers.items():
                    m = matcher.match(f0, [f1])[0].matches.numpy() if len(k0) and len(k1) else np.zeros((0, 2), int)
                    p0, p1 = k0.xy[m[:, 0]], k1.xy[m[:, 1]]
                    if kind == "homography":
                        res = estimate_homography(p0, p1, conf["ransac_px"])
                        err = homography_corner_error(res.model if res.success else None, get("H_0to1"),
                                                      (im0.shape[1], im0.shape[0]))
                    else:
                        res = estimate_essential(p0, p1, get("K0"), get("K1"), conf["essential_px"])
                        err = max(relative_pose_error(res.model if res.success else None, get("T_0to1"),
                                                      ignore_sign=False))
                    errors[n][kind].append(err if math.isfinite(err) else math.inf)
        for n in names:
            entry = {}
            if pairs:
                entry["homography"] = {f"auc@{t}": a for t, a in
                                       zip(H_THRESHOLDS, pose_auc(errors[n]["homography"], H_THRESHOLDS))}
            if posed:
                entry["pose"] = {f"auc@{t}": a for t, a in zip(POSE_THRESHOLDS, pose_auc(errors[n]["pose"], POSE_THRESHOLDS))}
            results[n][det] = entry
    print(format_table(results))
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({"weights": dict(zip(names, map(str, weights_list))),
                                                      "conf": conf, "n_pairs": len(pairs or []),
                                                      "n_posed": len(posed or []), "results": results}, indent=1))
        plot_results(results, out / "auc.png")
        logger.info("wrote %s and %s", out / "results.json", out / "auc.png")
    return results


def format_table(results: dict) -> str:
    """Rows: detector x metric; columns: weights."""
    names = list(results)
    dets = list(results[names[0]]) if names else []
    lines = [f"{'detector':<10} {'metric':<16}" + "".join(f"{n[:14]:>15}" for n in names)]
    for det in dets:
        for kind, metrics in results[names[0]][det].items():
            for key in metrics:
                lines.append(f"{det:<10} {kind[:4] + ' ' + key:<16}" +
                             "".join(f"{results[n][det][kind][key]:>15.1f}" for n in names))
    return "\n".join(lines)


def plot_results(results: dict, path: str | Path) -> None:
    """Grouped bars: one group per detector, one bar per weights, for each metric (one panel each)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(results)
    dets = list(results[names[0]])
    panels = [(kind, key) for kind, metrics in results[names[0]][dets[0]].items() for key in metrics]
    fig = Figure(figsize=(max(6, 1.2 * len(dets) * len(names) / 2 + 3), 2.6 * len(panels)))
    FigureCanvasAgg(fig)
    width = 0.8 / len(names)
    x = np.arange(len(dets))
    for p, (kind, key) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, p + 1)
        for i, n in enumerate(names):
            ax.bar(x + (i - (len(names) - 1) / 2) * width, [results[n][d][kind][key] for d in dets], width, label=n)
        ax.set_xticks(x, dets)
        ax.set_ylabel(f"{kind} {key} (%)")
        ax.set_ylim(0, 100)
        if p == 0:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
