"""Image-pair matching pipeline: detect -> suppress -> describe -> match, in the detector's own indices.

This is what `agnostic-reloc match` and the benchmark run; the loop-closure engine uses the same
pieces (extract once per keyframe, match one query against K candidates).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..conf import merge_conf
from ..features.aliked import get_aliked
from ..features.detectors import DETECTORS, detect
from ..features.keypoints import Keypoints
from ..features.suppression import SUPPRESSION_MODES, suppress
from ..io.image import check_image
from .fusion import fuse_matches
from .hamming import match_hamming, orb_descriptors
from .lightglue import LightGlueMatcher

MATCHERS = ("lightglue", "nn", "fused")

default_conf = {
    "detector": "orb",  # one of DETECTORS; 'orb' = ORB-SLAM3-like (8 levels, factor 1.2)
    "max_keypoints": 1000,  # keypoints the SLAM (or detector) sends per image
    "suppression": "none",  # none | radius | octave (nearby-keypoint remedies; chosen by measurement)
    "suppression_radius": 3.0,  # px, radius NMS across octaves
    "suppression_max_octave": 3,  # octave mode: keep octaves <= this
    "sampling": "octave",  # ALIKED descriptors: full-resolution map, or one map per ORB octave
    "octave_levels": (0, 1, 2, 3, 4, 5, 6, 7),  # pyramid levels with their own ALIKED map
    "evaluation": "sparse",  # ALIKED at given keypoints: sparse (backbone + the pixels SDDH reads) | dense (full map)
    "aliked_model": "aliked-n16",
    "matcher": "fused",  # lightglue | nn (ORB Hamming, classic) | fused (LightGlue + Hamming), see README
    "weights": None,  # fine-tuned LightGlue checkpoint path (default: official ALIKED LightGlue)
    "device": "auto",  # cpu | cuda | auto
    "backend": "auto",  # network runtime on CPU: auto | torch | openvino | onnxruntime (inference.backends)
    "filter_threshold": 0.01,  # LightGlue match confidence (0.01 beat LightGlue's 0.1 on hard pairs)
    "depth_confidence": 0.95,  # LightGlue adaptive depth (-1 off)
    "width_confidence": 0.99,  # LightGlue adaptive width (-1 off)
    "nn_ratio": 0.9,  # Hamming ratio test
    "load_matcher": True,  # False: extract only (the engine matches keyframes with its own KeyframeMatcher)
}


@dataclass
class Features:
    """Features of one image. `keypoints` are all detector keypoints (original indices);
    `kept` indexes the ones that survived suppression, `descriptors` rows follow `kept`."""

    keypoints: Keypoints
    kept: np.ndarray  # [K] int64 indices into keypoints
    descriptors: torch.Tensor | np.ndarray  # [K x D] float (ALIKED) or [K x 32] uint8 (ORB)
    image_size: tuple[int, int]  # (W, H)
    valid: np.ndarray | None = None  # [K] bool, ORB descriptors only (border keypoints have none)
    orb: np.ndarray | None = None  # [K x 32] uint8 ORB descriptors for the fused matcher


@dataclass
class MatchResult:
    """Matches between two images in the indices of `keypoints0` / `keypoints1`."""

    keypoints0: Keypoints
    keypoints1: Keypoints
    matches: np.ndarray  # [S x 2] int64
    scores: np.ndarray  # [S] float32
    timing_ms: dict = field(default_factory=dict)


def lightglue_from(c: dict) -> LightGlueMatcher:
    """The LightGlue matcher of a pipeline conf."""
    return LightGlueMatcher(weights=c["weights"], device=c["device"], filter_threshold=c["filter_threshold"],
                            depth_confidence=c["depth_confidence"], width_confidence=c["width_confidence"],
                            backend=c["backend"])


def check_conf(conf: dict) -> dict:
    conf = merge_conf(default_conf, conf, "pipeline options")
    if conf["detector"] not in DETECTORS:
        raise ValueError(f"unknown detector '{conf['detector']}'; choose from {', '.join(DETECTORS)}")
    if conf["suppression"] not in SUPPRESSION_MODES:
        raise ValueError(f"unknown suppression '{conf['suppression']}'; choose from {', '.join(SUPPRESSION_MODES)}")
    if conf["matcher"] not in MATCHERS:
        raise ValueError(f"unknown matcher '{conf['matcher']}'; choose from {', '.join(MATCHERS)}")
    if int(conf["max_keypoints"]) <= 0:
        raise ValueError(f"max_keypoints must be positive, got {conf['max_keypoints']}")
    return conf


class PairPipeline:
    """Detector-agnostic matching of two images (or of pre-extracted Features)."""

    def __init__(self, **conf) -> None:
        self.conf = check_conf(conf)
        c = self.conf
        self.aliked = None
        self.matcher = None
        if c["matcher"] in ("lightglue", "fused"):
            self.aliked = get_aliked(c["aliked_model"], c["device"], sampling=c["sampling"],
                                     octave_levels=tuple(c["octave_levels"]), backend=c["backend"],
                                     evaluation=c["evaluation"])
        if c["matcher"] in ("lightglue", "fused") and c["load_matcher"]:
            self.matcher = lightglue_from(c)

    def keypoints(self, image: np.ndarray) -> Keypoints:
        c = self.conf
        return detect(image, c["detector"], c["max_keypoints"], device=str(self.aliked.device if self.aliked else "cpu"))

    def keypoints_of(self, image: np.ndarray, detector: str, max_keypoints: int) -> Keypoints:
        """Keypoints of another detector (ensembles), on this pipeline's device."""
        return detect(image, detector, max_keypoints, device=str(self.aliked.device if self.aliked else "cpu"))

    def suppress(self, kpts: Keypoints) -> np.ndarray:
        c = self.conf
        return suppress(kpts, c["suppression"], radius=c["suppression_radius"],
                        max_octave=c["suppression_max_octave"], max_keypoints=c["max_keypoints"])

    def extract(self, image: np.ndarray, keypoints: Keypoints | None = None, timing: dict | None = None,
                ensemble: int = 0, ensemble_min_distance_px: float = 3.0, workers: int = 1,
                share_when: Callable[[], bool] | None = None) -> Features:
        """Features at `keypoints` (e.g. the SLAM's), or at the configured detector's keypoints.

        ensemble: add up to this many of ALIKED's own keypoints (from the same full-resolution map; those within
        `ensemble_min_distance_px` of a given keypoint are left out). They follow the given keypoints in
        `Features.keypoints` and `kept`, so the given keypoints keep their indices.
        workers, share_when: threads that share ALIKED's pyramid levels, and when the helpers may run (CPU;
        `AlikedExtractor.describe`).
        """
        timing = {} if timing is None else timing
        image = check_image(image)
        h, w = image.shape[:2]
        t = time.perf_counter()
        if keypoints is None:
            keypoints = self.keypoints(image)
            timing["detect"] = timing.get("detect", 0.0) + 1e3 * (time.perf_counter() - t)
        keypoints.validate(image.shape)
        t = time.perf_counter()
        kept = self.suppress(keypoints)
        timing["suppress"] = timing.get("suppress", 0.0) + 1e3 * (time.perf_counter() - t)
        sub = keypoints.subset(kept)
        t = time.perf_counter()
        orb = valid = None
        if self.conf["matcher"] in ("nn", "fused"):
            orb, valid = orb_descriptors(image, sub)
        desc = orb
        if self.aliked is not None and ensemble > 0:
            desc, extra, extra_desc = self.aliked.describe_and_detect(image, sub, ensemble, ensemble_min_distance_px,
                                                                      workers, share_when)
            n = len(keypoints)
            keypoints = Keypoints.concat([keypoints, extra])
            kept = np.concatenate([kept, n + np.arange(len(extra))]).astype(np.int64)
            desc = torch.cat([desc, extra_desc.to(desc)])
            if orb is not None:  # the classic mode matches ORB descriptors at the added keypoints too
                orb_x, valid_x = orb_descriptors(image, extra)
                orb, valid = np.concatenate([orb, orb_x]), np.concatenate([valid, valid_x])
        elif self.aliked is not None:
            desc = self.aliked.describe([image], [sub], workers=workers, share_when=share_when)[0]
        timing["describe"] = timing.get("describe", 0.0) + 1e3 * (time.perf_counter() - t)
        return Features(keypoints, kept, desc, (w, h), valid, orb)

    def match_features(self, f0: Features, f1: Features, timing: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Matches [S x 2] in ORIGINAL keypoint indices, and scores [S]."""
        timing = {} if timing is None else timing
        t = time.perf_counter()
        m = self.conf["matcher"]
        pairs, scores = np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
        if m in ("lightglue", "fused"):
            pm = self.matcher.match(self._lg_input(f0), [self._lg_input(f1)])[0]
            pairs, scores = pm.matches.numpy().astype(np.int64), pm.scores.numpy().astype(np.float32)
        if m in ("nn", "fused"):
            nn_pairs, nn_scores = match_hamming(f0.orb, f1.orb, f0.valid, f1.valid, ratio=self.conf["nn_ratio"])
            if m == "nn":
                pairs, scores = nn_pairs, nn_scores
            else:
                pairs, scores = fuse_matches(pairs, scores, nn_pairs, nn_scores)
        timing["match"] = timing.get("match", 0.0) + 1e3 * (time.perf_counter() - t)
        return np.stack([f0.kept[pairs[:, 0]], f1.kept[pairs[:, 1]]], -1).reshape(-1, 2), scores

    @staticmethod
    def _lg_input(f: Features) -> dict:
        return {"keypoints": f.keypoints.xy[f.kept], "descriptors": f.descriptors, "image_size": f.image_size}

    def match(self, image0: np.ndarray, image1: np.ndarray,
              keypoints0: Keypoints | None = None, keypoints1: Keypoints | None = None) -> MatchResult:
        timing: dict = {}
        t = time.perf_counter()
        f0 = self.extract(image0, keypoints0, timing)
        f1 = self.extract(image1, keypoints1, timing)
        matches, scores = self.match_features(f0, f1, timing)
        timing["total"] = 1e3 * (time.perf_counter() - t)
        return MatchResult(f0.keypoints, f1.keypoints, matches, scores, timing)


