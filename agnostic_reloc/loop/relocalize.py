"""Relocalization decision: candidate poses from PnP -> one unambiguous pose, or a refusal with its reason.

Each verified candidate gives a pose of the query camera in the SLAM map frame. Candidates support each other
when their poses agree; copies of one place from different laps of a drifting SLAM disagree by the drift, so
poses are compared after correcting each candidate's keyframe with this session's accepted loops
(`LoopCorrections`: pose graph over the SLAM keyframe poses). The published pose stays in the SLAM frame of
the best candidate.

A pose is refused when another place explains the same part of the image (`ambiguity_ratio`): a poster, sign
or door that exists twice looks the same from close by, and when the view holds little else both copies give a
pose. The candidates that the early stop would skip are therefore verified too where their keyframes lie
elsewhere (`ambiguity_dist_m`). A candidate whose pose lies there with at least `ambiguity_ratio` of the best
candidate's inliers (and `ambiguity_min_inliers`, below `min_inliers`: a weaker view of the other copy still
counts against the pose, never for one) is a rival; the best pose survives it only when at least
`ambiguity_min_inliers` of its inliers lie outside the image region of the rival's (their convex hull): image
content that the other place cannot explain (the wall around the poster), and fewer of the rival's lie outside
the best's (else each explains something the other does not: inconsistent). With the check on, candidates at
another place are judged by it alone; the older rule (a disagreeing cluster with half the best's inliers is
inconsistent) keeps the poses nearby that disagree. Inlier counts alone do not separate
the cases: a true pose whose view holds a twin poster and a wrong one at the twin both had rivals with 0.35-0.5
of their inliers (benchmarks/aliased_places.py, night_reloc.py).

Every pose is then checked against the keyframes next to its best candidate (`neighbour_check`; the loop's
common-region mechanism): their map points, projected with the pose, must match the query. A pose whose
neighbours' points are in view and do not match is refuted, however many inliers or agreeing candidates it has.
A pose is then published at once when it is certain:
  1. two or more candidates agree on it (and no comparable group disagrees), or
  2. one candidate gives it and its neighbours' points match.
The published pose is re-estimated from the PnP inliers plus the neighbours' matches (more points over more
of the image, as ORB-SLAM3 re-optimizes after its search by projection).
Otherwise (one candidate, its neighbours out of view or unmatched in the dark) it is held back: published only
when `confirm_frames` consecutive queries agree on where the camera is, within the motion possible between
them, or when it has `strong_inliers`. Holding back trades latency (one more frame, ~0.1-0.5 s) for certainty:
a lone pose that the next frames contradict is never published.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
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
    "ambiguity_ratio": (0.33, "refuse a pose when a candidate at another place (farther than ambiguity_dist_m) "
                        "gives a pose with at least this fraction of the best candidate's inliers (an aliased "
                        "place: the same poster twice); 0 = off, higher: refuses fewer", (0.0, 1.0)),
    "ambiguity_min_inliers": (20, "... and at least this many PnP inliers (below min_inliers: counted against a "
                              "pose, never for one); the best pose survives a rival with at least this many "
                              "inliers outside the image region (convex hull) of the rival's", (5, 100000)),
    "ambiguity_dist_m": (1.5, "another place: a pose or candidate keyframe farther than this (m, loop-corrected) "
                         "from the best pose; candidates there are verified even after an early stop",
                         (0.0, 1e3)),
    "strong_inliers": (150, "a single relocalization candidate this strong needs no second one nor confirmation, "
                       "unless its neighbours refute it (lower: more relocalizations, less certain)", (5, 100000)),
    "neighbour_check": (True, "check every pose against the map points of the best candidate's neighbour "
                        "keyframes (loop.common_* thresholds): refused when they are in view and do not match, "
                        "published from one candidate when they match, refined with their matches", None),
    "neighbour_min_in_view": (40, "projected neighbour map points in view that refute a pose they do not match "
                              "(fewer in view: neither support nor refutation)", (1, 100000)),
    "confirm_frames": (2, "consecutive queries that must agree before a pose from one candidate without "
                       "neighbour support is published (1: at once; higher: surer, later)", (1, 10)),
    "confirm_window_s": (1.0, "queries further apart than this (s) do not confirm each other", (0.0, 60.0)),
    "confirm_speed_mps": (1.0, "camera motion allowed between confirming queries (m/s), added to agree_dist_m",
                          (0.0, 100.0)),
    "confirm_rate_dps": (30.0, "camera rotation allowed between confirming queries (deg/s), added to "
                         "agree_angle_deg", (0.0, 1000.0)),
    "parallel": (2, "CPU: a relocalization query describes its pyramid levels on this many threads and matches "
                 "this many candidates at once, each thread with the stage's threads (while the SLAM is lost no "
                 "keyframe comes, so the keyframe stage's cores are free); 1 = one thread, one candidate at a time",
                 (1, 2)),
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
    inlier_rows: np.ndarray | None = None  # [I] query keypoint rows of the PnP inliers
    inlier_xyz: np.ndarray | None = None  # [I x 3] their map points (SLAM map frame)


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
    """Early stop: two agreeing candidates (with min_inliers each) and no disagreeing one."""
    clusters = cluster(strong(poses, conf), conf)
    return len(clusters) == 1 and len(clusters[0]) >= 2


def strong(poses: list[CandidatePose], conf: dict) -> list[CandidatePose]:
    """The poses with min_inliers (the others only count against a pose: ambiguity)."""
    return [p for p in poses if p.inliers >= conf["min_inliers"]]


def distance_m(a: np.ndarray, b: np.ndarray) -> float:
    """Distance between the positions of two poses T [4 x 4] (m)."""
    return float(np.linalg.norm(a[:3, 3] - b[:3, 3]))


def rival_place(poses: list[CandidatePose], top: CandidatePose, conf: dict, query_xy: np.ndarray | None = None
                ) -> tuple[CandidatePose, int] | None:
    """The strongest pose at another place (farther than ambiguity_dist_m from `top`'s) with at least
    ambiguity_ratio of top's inliers and ambiguity_min_inliers that `top` does not overcome, with the number of
    top's inliers outside the rival's image region; None when there is none (ambiguity_ratio 0: off).
    query_xy: [N x 2] the query's keypoint positions (px; None: no image-region test, every rival counts)."""
    if conf["ambiguity_ratio"] <= 0:
        return None
    floor = max(conf["ambiguity_min_inliers"], conf["ambiguity_ratio"] * top.inliers)
    rivals = sorted((p for p in poses if p.inliers >= floor
                     and distance_m(p.T_corrected, top.T_corrected) > conf["ambiguity_dist_m"]),
                    key=lambda p: -p.inliers)
    n = conf["ambiguity_min_inliers"]
    for rival in rivals:
        outside = -1
        if query_xy is not None and rival.inlier_rows is not None and top.inlier_rows is not None:
            top_xy, rival_xy = query_xy[top.inlier_rows], query_xy[rival.inlier_rows]
            outside = outside_region(top_xy, rival_xy)
            if outside >= n and outside_region(rival_xy, top_xy) < n:
                continue  # top explains image content that the rival's place does not, and not the reverse
        return rival, outside
    return None


def outside_region(xy: np.ndarray, region_xy: np.ndarray, margin_px: float = 2.0) -> int:
    """How many of the points xy [N x 2] lie more than margin_px outside the convex hull of region_xy [M x 2]."""
    import cv2

    if len(region_xy) < 3:
        return len(xy)
    hull = cv2.convexHull(np.asarray(region_xy, np.float32).reshape(-1, 1, 2))
    return sum(cv2.pointPolygonTest(hull, (float(x), float(y)), True) < -margin_px for x, y in xy)


# The engine's check of a pose against the candidate's neighbour keyframes: (most matches of one neighbour,
# neighbour map points in view, that neighbour's id, the pose refined with the matches found (T_map_cam [4 x 4],
# covariance [6 x 6] or None) or None), or None when the candidate has no neighbour.
NeighbourCheck = Callable[[CandidatePose], "tuple[int, int, int, tuple | None] | None"]


class Relocalizer:
    """The relocalization decision of each query, with memory of the poses of recent queries (confirmation).

    One caller at a time (the engine's query thread). `neighbour_check` is the engine's projection of the
    candidate's neighbours with the pose refined from their matches (`Engine._neighbour_check`); `min_matches`
    the matches one neighbour must give.
    """

    def __init__(self, conf: dict, min_matches: int) -> None:
        self.conf = conf
        self.min_matches = min_matches
        self.recent: deque[tuple[float, np.ndarray]] = deque(maxlen=8)  # (stamp, corrected pose) of past queries

    def reset(self) -> None:
        self.recent.clear()

    def decide(self, stamp: float, poses: list[CandidatePose], neighbour_check: NeighbourCheck | None = None,
               remember: bool = True, query_xy: np.ndarray | None = None) -> Relocalization:
        """The relocalization of a query from its verified candidate poses, or a refusal naming the check.

        remember: keep an unconfirmed pose for confirming later queries (False for a first attempt that another
        attempt at the same query may follow; a published pose is always kept). query_xy: [N x 2] the query's
        keypoint positions (px), rows of CandidatePose.inlier_rows (the ambiguity check's image regions)."""
        c = self.conf
        usable = strong(poses, c)
        if not usable:
            return Relocalization(stamp, False, matched_keyframes=[], reason="too few inliers with every candidate")
        clusters = cluster(usable, c)
        best = clusters[0]
        others = [cl for cl in clusters[1:] if c["ambiguity_ratio"] <= 0  # else other places: the check below
                  or distance_m(cl[0].T_corrected, best[0].T_corrected) <= c["ambiguity_dist_m"]]
        if others and sum(p.inliers for p in others[0]) > 0.5 * sum(p.inliers for p in best):
            return Relocalization(stamp, False, matched_keyframes=[p.kf_id for p in poses],
                                  reason="inconsistent: candidates disagree on the pose")
        found = rival_place(poses, best[0], c, query_xy)
        if found is not None:
            rival, outside = found
            return Relocalization(stamp, False, matched_keyframes=[p.kf_id for p in poses], inliers=best[0].inliers,
                                  reason=f"ambiguous place: keyframe {rival.kf_id} gives a pose "
                                         f"{distance_m(rival.T_corrected, best[0].T_corrected):.1f} m away with "
                                         f"{rival.inliers} inliers (best: keyframe {best[0].kf_id}, "
                                         f"{best[0].inliers}" + (f", {outside} outside the rival's image region)"
                                                                 if outside >= 0 else ")"))
        check = neighbour_check(best[0]) if (neighbour_check is not None and c["neighbour_check"]) else None
        top = best[0]
        matches, in_view, nb, refined = check if check is not None else (0, 0, None, None)
        if matches < self.min_matches and in_view >= c["neighbour_min_in_view"]:
            return Relocalization(stamp, False, matched_keyframes=[p.kf_id for p in best], inliers=top.inliers,
                                  reason=f"refuted by the candidate's neighbours: {matches} projected matches of "
                                         f"{in_view} map points in view ({top.inliers} inliers, {len(best)} "
                                         f"agreeing candidate{'s' if len(best) > 1 else ''})")
        if len(best) >= 2:
            return self._accept(stamp, best, f"{len(best)} agreeing candidates", refined)
        if matches >= self.min_matches:
            return self._accept(stamp, best, f"neighbour keyframe {nb} explains it ({matches} projected matches)",
                                refined)
        if top.inliers >= c["strong_inliers"]:
            return self._accept(stamp, best, f"one candidate with {top.inliers} inliers")
        agreeing = self._agreeing(stamp, top.T_corrected)
        if agreeing + 1 >= c["confirm_frames"]:
            return self._accept(stamp, best, f"one candidate with {top.inliers} inliers, confirmed by {agreeing} "
                                             f"previous quer{'y' if agreeing == 1 else 'ies'}")
        if remember:
            self.recent.append((stamp, top.T_corrected))
        return Relocalization(stamp, False, matched_keyframes=[top.kf_id], inliers=top.inliers,
                              reason=f"unconfirmed: one candidate with {top.inliers} inliers, no neighbour or "
                                     f"previous query confirms it yet")

    def _accept(self, stamp: float, best: list[CandidatePose], support: str, refined: tuple | None = None
                ) -> Relocalization:
        """Publish the best cluster's top pose, or its refinement with the neighbours' matches (remembered: it
        confirms the next queries)."""
        top = best[0]
        T, cov = refined if refined is not None else (top.T_map_cam, top.covariance)
        self.recent.append((stamp, top.T_corrected @ invert_T(top.T_map_cam) @ T))
        if refined is not None:
            support += ", refined with the neighbours' matches"
        return Relocalization(stamp, True, T, cov, top.inliers, [p.kf_id for p in best], "", support=support)

    def _agreeing(self, stamp: float, T: np.ndarray) -> int:
        """Recent queries (within confirm_window_s, older than `stamp`) whose pose agrees with T [4 x 4] given the
        camera motion possible in between."""
        c, n = self.conf, 0
        for s, T_prev in self.recent:
            dt = stamp - s
            if not 0 < dt <= c["confirm_window_s"]:
                continue
            delta = invert_T(T_prev) @ T
            if (np.linalg.norm(delta[:3, 3]) <= c["agree_dist_m"] + c["confirm_speed_mps"] * dt
                    and rotation_angle_deg(delta) <= c["agree_angle_deg"] + c["confirm_rate_dps"] * dt):
                n += 1
        return n
