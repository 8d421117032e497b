"""Loop acceptance: which verified detections become loop closures.

A false loop corrupts a map, so a detection is accepted only when every guard passes:
  1. support: enough inliers, spread over the query image (`min_spread`: an aliased poster or a lamp gives
     inliers in one corner), and (for metric detections) the common-region check: the same pose must also
     explain matches to a keyframe next to the candidate (`common_*`; ORB-SLAM3 checks the candidate's
     covisible keyframes the same way). An aliased place (the same poster on two walls) matches the candidate
     but not its neighbours.
  2. drift prior (optional): the implied drift correction is bounded by the distance travelled. Its default
     covers real ORB-SLAM3 drift (~1-2 deg/m); measured on world sequences with that drift, it is what stops
     3-7 consistent false loops per sequence and refused no true loop (README, loops on unseen sequences).
  3. consistency: detections of `consistency_required` query keyframes among the last
     `consistency_window_kf` imply the same drift correction (counted in keyframes, never in seconds).
Once a group is accepted, later agreeing detections of the same revisit are accepted at once.
Every refusal is counted by reason (`refused`).
"""

from __future__ import annotations

from collections import Counter, deque

import numpy as np

from ..geometry import invert_T, rotation_angle_deg
from .verify import Detection

# name: (default, description, (min, max) or None); engine conf section "loop"
OPTIONS = {
    "min_inliers": (50, "inliers a loop candidate needs (higher: fewer, surer loops)", (5, 100000)),
    "min_spread": (0.125, "share of a 4 x 4 grid of the query image its inliers must cover (0.125: 2 cells; "
                   "higher: refuses matches on one small object)", (0.0, 1.0)),
    "common_region": (True, "metric loops must also be explained by a keyframe next to the candidate: its map "
                      "points, projected with the loop's pose, match the query (refuses aliased places)", None),
    "common_neighbours": (2, "keyframes before and after the candidate tried for the common-region check",
                          (1, 50)),
    "common_min_matches": (12, "projected matches one neighbour must give (higher: stricter)", (1, 10000)),
    "common_radius_px": (6.0, "search radius around a projected map point (px)", (0.5, 100.0)),
    "common_min_similarity": (0.6, "ALIKED descriptor cosine a projected match needs", (-1.0, 1.0)),
    "common_max_hamming": (64, "ORB Hamming distance a projected match may have (classic mode)", (0, 256)),
    "consistency_required": (3, "query keyframes whose detections agree on the drift correction before a loop is "
                             "accepted (higher: surer, later loops)", (1, 100)),
    "consistency_window_kf": (10, "how many query keyframes back agreeing detections may lie", (1, 100000)),
    "consistency_dist_m": (0.3, "drift-correction agreement: translation (m)", (0.0, 1e3)),
    "consistency_angle_deg": (3.0, "drift-correction agreement: rotation (deg)", (0.0, 180.0)),
    "use_pose_prior": (True, "reject loops whose correction exceeds the drift bound below", None),
    "prior_dist_m": (1.0, "max loop correction translation (m): this + prior_dist_per_m * distance travelled "
                     "since the match", (0.0, 1e6)),
    "prior_dist_per_m": (0.15, "max loop correction translation growth per metre travelled (covers the position "
                         "error that ~2 deg/m of rotation drift causes over a room-sized loop)", (0.0, 10.0)),
    "prior_angle_deg": (10.0, "max loop correction rotation (deg): this + prior_angle_per_m * distance travelled",
                        (0.0, 180.0)),
    "prior_angle_per_m": (2.0, "max loop correction rotation growth per metre travelled (deg/m; real ORB-SLAM3 "
                          "drifts ~1-1.3 deg/m at 640x480)", (0.0, 180.0)),
}


class LoopAcceptance:
    """Inlier spread, drift prior and consistency of detections over consecutive query keyframes (one caller at
    a time: the engine's verification thread, `add` under the engine's lock)."""

    def __init__(self, conf: dict) -> None:
        self.conf = conf
        self.pending: deque[Detection] = deque()  # verified detections awaiting consistency
        self.accepted: deque[Detection] = deque()  # recent accepted detections (a group continues)
        self.refused: Counter[str] = Counter()  # refusals by guard

    def reset(self) -> None:
        self.pending.clear()
        self.accepted.clear()
        self.refused.clear()

    def supported(self, d: Detection) -> bool:
        """Inlier spread over the query image (the common-region check needs the map: see Engine)."""
        if d.spread < self.conf["min_spread"]:
            self.refused["inliers in a small part of the image"] += 1
            return False
        return True

    def within_prior(self, d: Detection, travelled_m: float) -> bool:
        """Is the drift correction of `d` plausible after `travelled_m` metres of SLAM path since the match?"""
        c = self.conf
        if not c["use_pose_prior"]:
            return True
        ok = rotation_angle_deg(d.correction) <= c["prior_angle_deg"] + c["prior_angle_per_m"] * travelled_m
        if ok and d.metric:  # scale-free detections have no metric translation to compare
            ok = float(np.linalg.norm(d.correction[:3, 3])) <= c["prior_dist_m"] + c["prior_dist_per_m"] * travelled_m
        if not ok:
            self.refused["correction beyond the drift prior"] += 1
        return ok

    def agree(self, a: Detection, b: Detection) -> bool:
        """Do two detections imply the same drift correction?"""
        c = self.conf
        delta = invert_T(a.correction) @ b.correction
        if rotation_angle_deg(delta) > c["consistency_angle_deg"]:
            return False
        return not (a.metric and b.metric) or float(np.linalg.norm(delta[:3, 3])) <= c["consistency_dist_m"]

    def add(self, d: Detection) -> list[Detection]:
        """Add a detection; returns the detections accepted now (oldest first), possibly none."""
        c = self.conf
        horizon = d.ordinal - c["consistency_window_kf"]
        while self.pending and self.pending[0].ordinal < horizon:
            self.pending.popleft()
        while self.accepted and self.accepted[0].ordinal < horizon:
            self.accepted.popleft()
        if any(self.agree(a, d) for a in self.accepted):
            self.accepted.append(d)
            return [d]
        support = [p for p in self.pending if p.kf_id != d.kf_id and self.agree(p, d)]
        if len({p.kf_id for p in support}) + 1 >= c["consistency_required"]:
            for p in support:
                self.pending.remove(p)
            group = sorted(support + [d], key=lambda x: x.ordinal)
            self.accepted.extend(group)
            return group
        self.pending.append(d)
        self.refused["pending: awaiting consistency"] += 1
        return []
