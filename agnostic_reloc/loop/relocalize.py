"""Relocalization decision: candidate poses from PnP -> one unambiguous pose, or a refusal with its reason.

Each verified candidate gives a pose of the query camera in the SLAM map frame. Candidates support each other
when their poses agree; copies of one place from different laps of a drifting SLAM disagree by the drift, so
poses are compared after correcting each candidate's keyframe with this session's accepted loops
(`LoopCorrections`: pose graph over the SLAM keyframe poses). The published pose stays in the SLAM frame of
the best candidate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..geometry import invert_T, rotation_angle_deg
from ..types import Relocalization

logger = logging.getLogger(__name__)

# name: (default, description, (min, max) or None); engine conf section "reloc"
OPTIONS = {
    "min_inliers": (40, "PnP inliers for a relocalization", (5, 100000)),
    "agree_dist_m": (0.3, "relocalization candidates whose (loop-corrected) poses agree within this distance (m) "
                     "support each other", (0.0, 1e3)),
    "agree_angle_deg": (5.0, "... and within this angle (deg)", (0.0, 180.0)),
    "strong_inliers": (150, "a single relocalization candidate this strong needs no second one (lower: more "
                       "relocalizations, less certain)", (5, 100000)),
    "loop_corrected": (True, "compare relocalization candidates after correcting their keyframes with the "
                       "accepted loops (pose graph), so copies of a place from different laps of a drifting SLAM "
                       "agree; the published pose stays in the SLAM frame of the best candidate", None),
}


@dataclass
class CandidatePose:
    """The query pose measured against one candidate keyframe."""

    kf_id: int
    T_map_cam: np.ndarray  # [4 x 4] query camera -> SLAM map (the candidate's frame)
    covariance: np.ndarray | None  # [6 x 6] or None
    inliers: int
    T_corrected: np.ndarray  # [4 x 4] the same pose after the candidate keyframe's loop correction


class LoopCorrections:
    """T_corrected_slam per keyframe from a pose graph over the SLAM keyframe poses and the accepted metric loops.

    The graph is re-solved lazily when loops were added; a keyframe newer than the last solution takes the
    correction of the newest solved keyframe. Keyframes of a loaded map that was saved with its corrections are
    held (`hold`): they keep their stored correction and stay out of the graph's free poses, so the loops of an
    earlier session (not stored) are not undone; a loop of this session to one of them enters the graph with
    that keyframe fixed at its corrected pose, which moves this session's keyframes into the loaded map's
    corrected frame. Keyframes of a map saved without corrections are part of the graph like this session's;
    keyframes unknown to `stamps` / `poses` keep the identity.
    """

    def __init__(self) -> None:
        self.loops: list[tuple[int, int, np.ndarray, np.ndarray]] = []  # (query, match, T_match_query, cov)
        self.corrections: dict[int, np.ndarray] = {}  # kf id -> T_corrected_slam from the last solve
        self.held: dict[int, np.ndarray] = {}  # kf id -> T_corrected_slam stored with a loaded map (never solved)
        self._solved_loops = 0  # loops used by the last solve
        self._newest: tuple[float, int] | None = None  # (stamp, id) of the newest solved keyframe
        self.solve_ms: list[float] = []

    def reset(self) -> None:
        self.__init__()

    def add_loop(self, query_id: int, match_id: int, T_match_query: np.ndarray, covariance: np.ndarray) -> None:
        self.loops.append((query_id, match_id, T_match_query, covariance))

    def hold(self, corrections: Mapping[int, np.ndarray]) -> None:
        """Keep these keyframes at the given T_corrected_slam [4 x 4] (a loaded map's stored corrections)."""
        self.held.update({int(i): np.asarray(T, np.float64) for i, T in corrections.items()})
        self._solved_loops = -1  # the graph's free keyframes changed

    def correction(self, kf_id: int, stamps: dict[int, float], poses: dict[int, np.ndarray]) -> np.ndarray:
        """T_corrected_slam [4 x 4] of a keyframe. stamps / poses: the engine's keyframes (id -> stamp,
        id -> SLAM T_map_cam), held ones included."""
        if kf_id in self.held:
            return self.held[kf_id]
        if not self.loops:
            return np.eye(4)
        if self._solved_loops != len(self.loops):
            self._solve(stamps, poses)
        if kf_id in self.corrections:
            return self.corrections[kf_id]
        if kf_id not in stamps or self._newest is None:  # not in the graph
            return np.eye(4)
        if stamps[kf_id] >= self._newest[0]:
            return self.corrections[self._newest[1]]
        older = [i for i in self.corrections if stamps[i] <= stamps[kf_id]]
        return self.corrections[max(older, key=stamps.get)] if older else np.eye(4)

    def _solve(self, stamps: dict[int, float], poses: dict[int, np.ndarray]) -> None:
        from .posegraph import optimize_pose_graph

        t0 = time.perf_counter()
        free = {i: T for i, T in poses.items() if i not in self.held}
        order = sorted(free, key=stamps.get)
        loops, anchors = [], {}  # anchors: held keyframe -> its corrected pose T_corrected_cam
        for lp in self.loops:
            q, m = lp[0], lp[1]
            held = [k for k in (q, m) if k in self.held and k in poses]
            if all(k in free or k in held for k in (q, m)) and len(held) < 2:
                loops.append(lp)
                anchors.update({k: self.held[k] @ poses[k] for k in held})
        try:
            corrected = optimize_pose_graph(free, order, loops, fixed=anchors) if loops and order else {}
        except (RuntimeError, ValueError) as exc:  # an unsolvable graph: compare in the SLAM frame
            logger.warning("pose graph for relocalization failed (%s): comparing candidates uncorrected", exc)
            corrected = {}
        self.corrections = {i: corrected[i] @ invert_T(poses[i]) for i in corrected}
        self._newest = max(((stamps[i], i) for i in self.corrections), default=None)
        self._solved_loops = len(self.loops)
        self.solve_ms.append(1e3 * (time.perf_counter() - t0))


def cluster(poses: list[CandidatePose], conf: dict) -> list[list[CandidatePose]]:
    """Group candidate poses whose corrected poses agree; best-supported (most inliers) cluster first."""
    clusters: list[list[CandidatePose]] = []
    for p in sorted(poses, key=lambda x: -x.inliers):
        for cl in clusters:
            delta = invert_T(cl[0].T_corrected) @ p.T_corrected
            if np.linalg.norm(delta[:3, 3]) <= conf["agree_dist_m"] and rotation_angle_deg(delta) <= conf["agree_angle_deg"]:
                cl.append(p)
                break
        else:
            clusters.append([p])
    return sorted(clusters, key=lambda cl: -sum(p.inliers for p in cl))


def settled(poses: list[CandidatePose], conf: dict) -> bool:
    """Early stop: two agreeing candidates and no disagreeing one."""
    clusters = cluster(poses, conf)
    return len(clusters) == 1 and len(clusters[0]) >= 2


def decide(stamp: float, poses: list[CandidatePose], conf: dict) -> Relocalization:
    """The relocalization of a query from its verified candidate poses, or a refusal naming the check."""
    if not poses:
        return Relocalization(stamp, False, matched_keyframes=[], reason="too few inliers with every candidate")
    clusters = cluster(poses, conf)
    best = clusters[0]
    support = sum(p.inliers for p in best)
    if len(clusters) > 1 and sum(p.inliers for p in clusters[1]) > 0.5 * support:
        return Relocalization(stamp, False, matched_keyframes=[p.kf_id for p in poses],
                              reason="inconsistent: candidates disagree on the pose")
    if len(best) < 2 and best[0].inliers < conf["strong_inliers"]:
        return Relocalization(stamp, False, matched_keyframes=[best[0].kf_id], inliers=best[0].inliers,
                              reason=f"inconsistent: one candidate with {best[0].inliers} inliers and no second "
                                     f"agreeing candidate")
    top = best[0]
    return Relocalization(stamp, True, top.T_map_cam, top.covariance, top.inliers, [p.kf_id for p in best], "")
