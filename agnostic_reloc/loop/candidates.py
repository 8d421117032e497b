"""Which keyframes may be loop candidates of a query: everything outside the query's own neighbourhood.

ORB-SLAM3 never proposes a keyframe that is connected to the query in its covisibility graph: a place the
SLAM still tracks is no loop. The same rule here, with the contract's map point ids: a keyframe is excluded
when it shares at least `min_shared_points` map points with the query or one of the query's `recent_keyframes`
predecessors, and the keyframe halfway between them still observes those points (the SLAM tracked them all
along). Points that were out of view in between and are seen again are a revisit, whatever the id source does
with them (ORB-SLAM3 gives a revisited place new ids until its loop closer fuses them; a source with
physical ids, like the world generator, gives the old ones). Where ids are unknown (-1 on either side) the
neighbourhood is the `recent_keyframes` predecessors themselves. Either way, a keyframe less than `min_travel_m` of SLAM trajectory away from the query
is excluded (a parked robot, a turn on the spot). Distances are along the SLAM's keyframe positions, in SLAM
units (metres for stereo / RGB-D / inertial, the map's scale for monocular). Wall-clock time never decides:
a corridor revisited two seconds after the first pass is a loop, a robot parked for a minute is none.
"""

from __future__ import annotations

from collections import Counter, deque

import numpy as np

from ..types import Keyframe

# name: (default, description, (min, max) or None); part of the engine conf section "retrieval"
OPTIONS = {
    "recent_keyframes": (5, "the query's neighbourhood: its this many predecessors are never loop candidates "
                         "(where map point ids are unknown) and their map points count for covisibility", (0, 1000)),
    "min_shared_points": (15, "a keyframe sharing at least this many map points (map_id) with the query or its "
                          "recent keyframes is covisible, so no loop candidate (ORB-SLAM3's covisibility "
                          "threshold; lower: excludes more)", (1, 100000)),
    "min_travel_m": (1.0, "keyframes less than this far along the SLAM trajectory from the query are no loop "
                     "candidates (SLAM units; higher: ignores short loops)", (0.0, 1e6)),
}


def point_ids(kf: Keyframe) -> np.ndarray:
    """Sorted unique known map point ids [P] int64 of a keyframe's SLAM keypoints (empty when unknown)."""
    if kf.map_point_ids is None:
        return np.zeros(0, np.int64)
    ids = np.asarray(kf.map_point_ids[: kf.n_slam], np.int64)
    return np.unique(ids[ids >= 0])


class Neighbourhood:
    """The recent keyframes of the session and their map point ids (what the SLAM is tracking now)."""

    def __init__(self, conf: dict) -> None:
        self.conf = conf
        self.recent: deque[tuple[int, np.ndarray]] = deque(maxlen=max(1, int(conf["recent_keyframes"]) + 1))
        self.excluded: Counter[str] = Counter()  # retrieval hits that were no candidates, by reason

    def reset(self) -> None:
        self.recent.clear()
        self.excluded.clear()

    def push(self, kf: Keyframe) -> None:
        """Call once per inserted keyframe, in insertion order."""
        self.recent.append((kf.id, point_ids(kf)))

    def group(self, query: Keyframe) -> tuple[set[int], np.ndarray]:
        """(ids of the query's recent predecessors, sorted map point ids of the query and those predecessors)."""
        before = [(i, p) for i, p in self.recent if i != query.id]
        before = before[len(before) - int(self.conf["recent_keyframes"]):] if self.conf["recent_keyframes"] else []
        points = [point_ids(query)] + [p for _, p in before]
        return {i for i, _ in before}, np.unique(np.concatenate(points)) if points else np.zeros(0, np.int64)


def excluded(candidate: Keyframe, query: Keyframe, recent_ids: set[int], group_points: np.ndarray,
             travelled_m: float, conf: dict, middle: Keyframe | None = None) -> str | None:
    """Why `candidate` is no loop candidate of `query` (a short reason, details in parentheses), or None.

    Args:
        recent_ids, group_points: `Neighbourhood.group(query)`.
        travelled_m: SLAM trajectory length between the candidate and the query.
        middle: the keyframe halfway between the candidate and the query (None: adjacent keyframes).
    """
    if travelled_m < conf["min_travel_m"]:
        return f"too close along the trajectory ({travelled_m:.2f} m)"
    cand_points = point_ids(candidate)
    if len(cand_points) and len(group_points):
        shared = np.intersect1d(cand_points, group_points, assume_unique=True)
        if len(shared) < conf["min_shared_points"]:
            return None
        if middle is not None:
            tracked = np.intersect1d(shared, point_ids(middle), assume_unique=True).size
            if tracked < conf["min_shared_points"]:
                return None  # seen again after being out of view: a revisit
        return f"covisible ({len(shared)} shared map points)"
    if candidate.id in recent_ids:
        return "one of the query's recent keyframes (map point ids unknown)"
    return None
