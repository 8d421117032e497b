"""Loop acceptance: which verified detections become loop closures.

A false loop corrupts a map, so a detection is accepted only when (1) its drift correction is plausible
(optional drift prior: bounded by distance travelled) and (2) it is consistent: enough detections of
consecutive query keyframes imply the same drift correction. Once a group is accepted, later agreeing
detections of the same revisit are accepted at once.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from ..conf import option_defaults
from ..geometry import invert_T, rotation_angle_deg
from .verify import Detection

# name: (default, description, (min, max) or None); engine conf section "loop"
OPTIONS = {
    "min_inliers": (50, "inliers a loop candidate needs (higher: fewer, surer loops)", (5, 100000)),
    "consistency_required": (3, "detections with agreeing drift correction before a loop is accepted (higher: "
                             "surer, later loops)", (1, 100)),
    "consistency_window_s": (15.0, "how far back agreeing detections may lie (s)", (0.0, 1e6)),
    "consistency_dist_m": (0.3, "drift-correction agreement: translation (m)", (0.0, 1e3)),
    "consistency_angle_deg": (3.0, "drift-correction agreement: rotation (deg)", (0.0, 180.0)),
    "use_pose_prior": (True, "reject loops whose correction exceeds the drift bound below", None),
    "prior_dist_m": (1.0, "max loop correction translation (m): this + prior_dist_per_m * distance travelled "
                     "since the match", (0.0, 1e6)),
    "prior_dist_per_m": (0.05, "max loop correction translation growth per metre travelled", (0.0, 10.0)),
    "prior_angle_deg": (10.0, "max loop correction rotation (deg): this + prior_angle_per_m * distance travelled",
                        (0.0, 180.0)),
    "prior_angle_per_m": (0.2, "max loop correction rotation growth per metre travelled (deg/m)", (0.0, 180.0)),
}
default_conf = option_defaults(OPTIONS)


class LoopAcceptance:
    """Drift prior + consistency of detections over consecutive query keyframes (not thread-safe: the engine
    calls it under its lock)."""

    def __init__(self, conf: dict) -> None:
        self.conf = conf
        self.pending: deque[Detection] = deque()  # verified detections awaiting consistency
        self.accepted: deque[Detection] = deque()  # recent accepted detections (a group continues)

    def reset(self) -> None:
        self.pending.clear()
        self.accepted.clear()

    def within_prior(self, d: Detection, travelled_m: float) -> bool:
        """Is the drift correction of `d` plausible after `travelled_m` metres of SLAM path since the match?"""
        c = self.conf
        if not c["use_pose_prior"]:
            return True
        if rotation_angle_deg(d.correction) > c["prior_angle_deg"] + c["prior_angle_per_m"] * travelled_m:
            return False
        if not d.metric:
            return True  # no metric translation to compare
        return float(np.linalg.norm(d.correction[:3, 3])) <= c["prior_dist_m"] + c["prior_dist_per_m"] * travelled_m

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
        horizon = d.stamp - c["consistency_window_s"]
        while self.pending and self.pending[0].stamp < horizon:
            self.pending.popleft()
        while self.accepted and self.accepted[0].stamp < horizon:
            self.accepted.popleft()
        if any(self.agree(a, d) for a in self.accepted):
            self.accepted.append(d)
            return [d]
        support = [p for p in self.pending if p.kf_id != d.kf_id and self.agree(p, d)]
        if len({p.kf_id for p in support}) + 1 >= c["consistency_required"]:
            for p in support:
                self.pending.remove(p)
            group = sorted(support + [d], key=lambda x: x.stamp)
            self.accepted.extend(group)
            return group
        self.pending.append(d)
        return []
