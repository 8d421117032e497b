"""Keyframe matchers: one interface (`describe` / `match`) for the learned and the classic engine modes.

The engine chooses one at start-up and never asks which mode it is in. Both keep indices in the keyframe's
own keypoint rows (SLAM rows first); `describe` stores the descriptors the matcher needs on the keyframe.
"""

from __future__ import annotations

import numpy as np
import torch

from ..types import Keyframe
from .hamming import match_hamming
from .lightglue import LightGlueMatcher
from .pipeline import Features


class LightGlueKeyframes:
    """ALIKED descriptors at the SLAM keypoints, matched by LightGlue (the learned mode).

    The candidate side is matched with its map-point keypoints only when it has at least `min_map_points` of
    them: PnP uses nothing else, and attention costs grow with the product of the point counts (about 30 % fewer
    candidate points with ORB-SLAM3's map-point ratio). Candidates with fewer map points keep every keypoint
    (the essential-matrix fallback needs them).
    """

    name = "lightglue"
    needs_orb = False  # the pipeline need not compute ORB descriptors

    def __init__(self, matcher: LightGlueMatcher, min_map_points: int = 100) -> None:
        self.matcher = matcher
        self.min_map_points = min_map_points

    @property
    def backend(self) -> str:
        return self.matcher.backend

    def describe(self, kf: Keyframe, feats: Features) -> None:
        kf.descriptors = feats.descriptors.float().cpu().numpy().astype(np.float16)

    def match(self, q: Keyframe, cands: list[Keyframe]) -> list[np.ndarray]:
        """Matches [S x 2] (query row, candidate row) in keyframe keypoint indices, one array per candidate."""
        def lg(kf: Keyframe, sel: np.ndarray) -> dict:
            return {"keypoints": kf.keypoints.xy[kf.kept[sel]],
                    "descriptors": np.asarray(kf.descriptors[sel], np.float32), "image_size": kf.image_size}

        q_all = np.arange(len(q.kept))
        sel = [self._with_map_points(c) for c in cands]
        results = self.matcher.match(lg(q, q_all), [lg(c, s) for c, s in zip(cands, sel)])
        out = []
        for r, c, s in zip(results, cands, sel):
            m = r.matches.numpy().reshape(-1, 2)
            out.append(_rows(q, c, np.stack([m[:, 0], s[m[:, 1]]], -1)))
        return out

    def mutual_matches(self, q: Keyframe, c: Keyframe, min_cosine: float) -> int:
        """Mutual nearest neighbours with cosine >= min_cosine between the query's descriptors and the candidate's
        rows that LightGlue would see: a cheap ([N x M] product, a few ms) lower bound on how matchable a pair is."""
        a = torch.from_numpy(np.asarray(q.descriptors, np.float32))
        b = torch.from_numpy(np.asarray(c.descriptors[self._with_map_points(c)], np.float32))
        if len(a) == 0 or len(b) == 0:
            return 0
        sim = a @ b.T
        best, nn_ab = sim.max(1)
        mutual = sim.argmax(0)[nn_ab] == torch.arange(len(a))
        return int((mutual & (best >= min_cosine)).sum())

    def _with_map_points(self, kf: Keyframe) -> np.ndarray:
        """Indices into kf.kept to match: those with a map point when there are enough of them, else all."""
        every = np.arange(len(kf.kept))
        if kf.map_points is None:
            return every
        has = np.isfinite(kf.map_points[kf.kept]).all(1) & (kf.kept < kf.n_slam)
        return every[has] if has.sum() >= self.min_map_points else every


class HammingKeyframes:
    """ORB descriptors at the SLAM keypoints, Hamming mutual nearest neighbour + ratio (the classic mode)."""

    name = "nn"
    needs_orb = True
    backend = "numpy"

    def __init__(self, ratio: float = 0.9) -> None:
        self.ratio = ratio

    def describe(self, kf: Keyframe, feats: Features) -> None:
        kf.orb_desc, kf.orb_valid = feats.orb, feats.valid

    def mutual_matches(self, q: Keyframe, c: Keyframe, min_cosine: float) -> int | None:
        """None: no pre-check (Hamming matching is itself cheap)."""

    def match(self, q: Keyframe, cands: list[Keyframe]) -> list[np.ndarray]:
        pairs = [match_hamming(q.orb_desc, c.orb_desc, q.orb_valid, c.orb_valid, ratio=self.ratio)[0] for c in cands]
        return [_rows(q, c, p) for p, c in zip(pairs, cands)]


def _rows(q: Keyframe, c: Keyframe, pairs: np.ndarray) -> np.ndarray:
    """Matches in kept-descriptor indices -> keyframe keypoint rows [S x 2] int64."""
    return np.stack([q.kept[pairs[:, 0]], c.kept[pairs[:, 1]]], -1).reshape(-1, 2).astype(np.int64)
