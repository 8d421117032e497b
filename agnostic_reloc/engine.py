"""Loop-closure detection and global relocalization: what ORB-SLAM3's LoopClosing (DBoW2 + Sim3) and
Tracking::Relocalization (BoW + PnP) do, with ALIKED + LightGlue (or the classic ORB Hamming baseline).

Data flow: keyframe (SLAM keypoints, pose, map points) -> features -> retrieval (top-K, temporal
window excluded) -> batched matching of the query against the K candidates -> PnP against the
candidate's map points (metric, in the map frame) or the essential matrix -> acceptance:
inlier thresholds, agreement with the SLAM pose prior (drift is bounded), and consistency of the
implied drift correction over consecutive query keyframes. A false loop corrupts a map, so a
detection becomes a LoopClosure only when every check passes.

Frames: T_map_cam is camera-to-map. For a loop, T_match_query maps query-camera coordinates to
match-camera coordinates; the correction C = T_map_query_from_match @ inv(T_map_query_slam) is the
transform that would move the drifted SLAM pose onto the pose measured against the old map.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .features.keypoints import Keypoints
from .geometry import estimate_essential, estimate_pnp, invert_T, rotation_angle_deg
from .keyframe import Keyframe
from .mapstore import KeyframeMap
from .matching.nn import match_hamming
from .pipeline import PairPipeline
from .retrieval import RetrievalIndex, global_descriptor

logger = logging.getLogger(__name__)

default_conf = {
    # features (see pipeline.default_conf)
    "matcher": "lightglue",  # lightglue (learned) | nn (classic: ORB descriptors, Hamming mutual NN + ratio)
    "suppression": "none",  # nearby-keypoint remedy on the SLAM's keypoints: none | radius | octave
    "sampling": "octave",  # ALIKED sampling for multi-scale keypoints: full | octave
    "octave_levels": (0, 1, 2, 3, 4, 5, 6, 7),  # pyramid levels that get their own ALIKED map
    "weights": None,  # fine-tuned LightGlue checkpoint
    "device": "auto",  # cpu | cuda | auto
    "filter_threshold": 0.1,  # LightGlue match confidence
    "ensemble_detector": None,  # add this detector's keypoints (e.g. 'aliked') to every keyframe, or None
    "ensemble_keypoints": 512,  # how many ensemble keypoints
    # retrieval
    "num_candidates": 5,  # K keyframes verified per query
    "early_accept": True,  # verify candidates one by one in retrieval order and stop at the first accepted
    # (on CPU this saves most of the matching time; on CUDA all K are matched in one batch regardless)
    "temporal_window_s": 10.0,  # loops ignore keyframes within this many seconds of the query
    # geometry
    "pnp_threshold_px": 3.0,  # PnP inlier reprojection error
    "essential_threshold_px": 1.5,  # essential-matrix inlier error (no map points)
    "min_inliers": 50,  # inliers a candidate needs
    "min_inlier_ratio": 0.25,  # inliers / matches a candidate needs
    # loop acceptance
    "consistency_required": 3,  # detections with agreeing drift correction before a loop is accepted
    "consistency_window_s": 15.0,  # how far back agreeing detections may lie
    "consistency_dist_m": 0.3,  # correction agreement: translation
    "consistency_angle_deg": 3.0,  # correction agreement: rotation
    "prior_dist_m": 1.0,  # max correction translation: this + prior_dist_per_m * distance travelled since match
    "prior_dist_per_m": 0.05,
    "prior_angle_deg": 10.0,  # max correction rotation: this + prior_angle_per_m * distance travelled
    "prior_angle_per_m": 0.2,
    "use_pose_prior": True,  # reject loops whose correction exceeds the drift bound
    # relocalization
    "reloc_min_inliers": 40,  # inliers for a relocalization
    "reloc_agree_dist_m": 0.3,  # candidates whose poses agree within this support each other
    "reloc_agree_angle_deg": 5.0,
    "reloc_strong_inliers": 150,  # a single candidate this strong needs no second one
    "reloc_loop_corrected": True,  # compare candidates' poses after correcting the keyframes with our loops
    # (pose graph over the SLAM poses + accepted metric loops): copies of a place from different laps of a
    # drifting SLAM then agree; the pose published stays in the SLAM frame of the best candidate
}


@dataclass
class LoopClosure:
    """An accepted loop between a query keyframe and an older keyframe."""

    query_id: int
    query_stamp: float
    match_id: int
    match_stamp: float
    T_match_query: np.ndarray  # 4x4, query camera -> match camera (metric when `metric`)
    covariance: np.ndarray  # 6x6 [rx ry rz tx ty tz], right perturbation of T_match_query
    correspondences: np.ndarray  # [S x 2] int64 (query keypoint index, match keypoint index), SLAM rows
    inliers: int
    score: float
    metric: bool  # True: from PnP against map points; False: essential matrix (unit translation)


@dataclass
class Relocalization:
    """Result of a relocalization query; `success` False carries the reason."""

    stamp: float
    success: bool
    T_map_cam: np.ndarray | None = None
    covariance: np.ndarray | None = None
    inliers: int = 0
    matched_keyframes: list[int] = field(default_factory=list)
    reason: str = ""


@dataclass
class Detection:
    """A verified candidate before the consistency check."""

    kf_id: int
    stamp: float
    match_id: int
    T_match_query: np.ndarray
    T_map_query: np.ndarray  # query pose measured against the match's map (metric) or None-like
    covariance: np.ndarray
    correspondences: np.ndarray
    inliers: int
    ratio: float
    metric: bool
    correction: np.ndarray  # 4x4


def check_conf(conf: dict) -> dict:
    unknown = set(conf) - set(default_conf)
    if unknown:
        raise ValueError(f"unknown engine options: {sorted(unknown)}")
    conf = {**default_conf, **conf}
    if conf["matcher"] not in ("lightglue", "nn"):
        raise ValueError(f"engine matcher must be 'lightglue' or 'nn', got '{conf['matcher']}'")
    if conf["num_candidates"] < 1 or conf["consistency_required"] < 1:
        raise ValueError("num_candidates and consistency_required must be >= 1")
    return conf


class Engine:
    """Keyframe map + loop detection + relocalization. Thread-safe: insert from one thread, verify in another."""

    def __init__(self, conf: dict | None = None, kf_map: KeyframeMap | None = None) -> None:
        self.conf = check_conf(conf or {})
        c = self.conf
        self.pipe = PairPipeline(
            # the classic mode still computes ALIKED descriptors, for retrieval only: both modes share retrieval
            matcher="lightglue" if c["matcher"] == "lightglue" else "fused", suppression=c["suppression"],
            sampling=c["sampling"], octave_levels=c["octave_levels"], weights=c["weights"], device=c["device"],
            filter_threshold=c["filter_threshold"])
        self.map = kf_map if kf_map is not None else KeyframeMap()
        self.index = RetrievalIndex()
        self.lock = threading.RLock()
        self._path_length: dict[int, float] = {}  # cumulative SLAM path length at each keyframe
        self._stamp_of: dict[int, float] = {}  # keyframe stamps (loops never look forward in time)
        self._last_kf: Keyframe | None = None
        self._pending: deque[Detection] = deque()  # verified detections awaiting consistency
        self._accepted: deque[Detection] = deque()  # recent accepted detections (a group continues)
        self._loops: list[tuple[int, int, np.ndarray, np.ndarray]] = []  # accepted metric loops, for the graph
        self._corrections: dict[int, np.ndarray] = {}  # kf id -> T_corrected_slam from the last pose graph
        self._graph_loops = 0  # how many loops that pose graph used
        self.timing: dict[str, list[float]] = {}
        self._next_id = 0
        if len(self.map):
            self._rebuild_index()

    # ---------------------------------------------------------------- keyframes
    def _rebuild_index(self) -> None:
        ids, vecs = self.map.global_descriptors()
        self.index.rebuild(list(map(int, ids)), vecs, [self.map.get(int(i)).stamp for i in ids])
        last = None
        for kf_id in self.map.ids():
            kf = self.map.get(kf_id)
            step = 0.0 if last is None else float(np.linalg.norm(kf.position - last.position))
            self._path_length[kf_id] = (self._path_length.get(last.id, 0.0) if last else 0.0) + step
            self._stamp_of[kf_id] = kf.stamp
            last = kf
        self._last_kf = last
        self._next_id = max(self.map.ids()) + 1

    def reset(self) -> None:
        """Forget every keyframe and pending detection (the map file on disk is untouched)."""
        with self.lock:
            self.map.clear()
            self.index = RetrievalIndex()
            self._path_length.clear()
            self._stamp_of.clear()
            self._last_kf = None
            self._pending.clear()
            self._accepted.clear()
            self._loops.clear()
            self._corrections.clear()
            self._graph_loops = 0
            self._next_id = 0

    def save_map(self, path: str) -> None:
        """Write the keyframe map atomically (a crash mid-save leaves the previous file intact)."""
        with self.lock:
            self.map.save(path)

    def _tick(self, stage: str, t0: float) -> float:
        now = time.perf_counter()
        self.timing.setdefault(stage, []).append(1e3 * (now - t0))
        return now

    def make_keyframe(self, stamp: float, image: np.ndarray, keypoints: Keypoints, T_map_cam: np.ndarray,
                      K: np.ndarray, map_points: np.ndarray | None = None, map_point_ids: np.ndarray | None = None,
                      kf_id: int | None = None) -> Keyframe:
        """Build and validate a keyframe: suppression, descriptors, global descriptor (nothing stored yet)."""
        t0 = time.perf_counter()
        with self.lock:
            if kf_id is None:
                kf_id = self._next_id
            self._next_id = max(self._next_id, int(kf_id) + 1)
        h, w = image.shape[:2]
        n_slam = len(keypoints)
        kf = Keyframe(int(kf_id), float(stamp), keypoints, np.asarray(T_map_cam, np.float64),
                      np.asarray(K, np.float64), (w, h), n_slam,
                      None if map_points is None else np.asarray(map_points, np.float32),
                      None if map_point_ids is None else np.asarray(map_point_ids, np.int64))
        kf.validate()
        c = self.conf
        if c["ensemble_detector"]:
            extra = self.pipe.keypoints_of(image, c["ensemble_detector"], c["ensemble_keypoints"])
            kf.keypoints = Keypoints.concat([keypoints, extra])
            if kf.map_points is not None:
                kf.map_points = np.concatenate([kf.map_points, np.full((len(extra), 3), np.nan, np.float32)])
            if kf.map_point_ids is not None:
                kf.map_point_ids = np.concatenate([kf.map_point_ids, np.full(len(extra), -1, np.int64)])
        feats = self.pipe.extract(image, kf.keypoints)
        kf.kept = feats.kept.astype(np.int64)
        desc = feats.descriptors.float().cpu().numpy()
        if c["matcher"] == "lightglue":
            kf.descriptors = desc.astype(np.float16)
        else:
            kf.orb_desc, kf.orb_valid = feats.orb, feats.valid
        kf.global_desc = global_descriptor(desc, kf.keypoints.xy[kf.kept], (w, h))
        self._tick("extract", t0)
        return kf

    def insert_keyframe(self, kf: Keyframe) -> None:
        """Store a keyframe in the map and the retrieval index (never waits for verification)."""
        with self.lock:
            self.map.add(kf)
            self.index.add(kf.id, kf.global_desc, stamp=kf.stamp)
            last = self._last_kf
            step = 0.0 if last is None else float(np.linalg.norm(kf.position - last.position))
            self._path_length[kf.id] = (self._path_length.get(last.id, 0.0) if last else 0.0) + step
            self._stamp_of[kf.id] = kf.stamp
            self._last_kf = kf

    def process_keyframe(self, stamp: float, image: np.ndarray, keypoints: Keypoints, T_map_cam: np.ndarray,
                         K: np.ndarray, map_points: np.ndarray | None = None,
                         map_point_ids: np.ndarray | None = None, kf_id: int | None = None) -> list[LoopClosure]:
        """Extract, insert, then look for loops of this keyframe; returns the loops accepted now."""
        kf = self.make_keyframe(stamp, image, keypoints, T_map_cam, K, map_points, map_point_ids, kf_id)
        self.insert_keyframe(kf)
        return self.detect_loops(kf)

    # ---------------------------------------------------------------- matching + geometry
    def _candidates(self, kf: Keyframe, exclude_recent: bool) -> list[int]:
        window = self.conf["temporal_window_s"] if exclude_recent else 0.0
        exclude: set[int] | object = {kf.id}
        if exclude_recent:  # loops look only backwards in time, so a lagging verifier finds what a prompt one does
            stamps, q_stamp = self._stamp_of, kf.stamp
            exclude = lambda i: i == kf.id or stamps.get(i, -np.inf) > q_stamp  # noqa: E731
        hits = self.index.search(kf.global_desc, self.conf["num_candidates"], exclude=exclude,
                                 stamp=kf.stamp, window=window)
        return [cid for cid, _ in hits]

    def _match(self, q: Keyframe, cands: list[Keyframe]) -> list[np.ndarray]:
        """Matches [S x 2] in keypoint indices (not kept indices) of the query and each candidate."""
        if self.conf["matcher"] == "lightglue":
            def feats(kf: Keyframe) -> dict:
                return {"keypoints": kf.keypoints.xy[kf.kept], "descriptors": np.asarray(kf.descriptors, np.float32),
                        "image_size": kf.image_size}
            results = self.pipe.matcher.match(feats(q), [feats(c) for c in cands])
            pairs = [r.matches.numpy() for r in results]
        else:
            pairs = [match_hamming(q.orb_desc, c.orb_desc, q.orb_valid, c.orb_valid, ratio=self.pipe.conf["nn_ratio"])[0]
                     for c in cands]
        return [np.stack([q.kept[p[:, 0]], c.kept[p[:, 1]]], -1).reshape(-1, 2) for p, c in zip(pairs, cands)]

    def _verify(self, q: Keyframe, c: Keyframe, pairs: np.ndarray) -> Detection | None:
        """Geometry of one query/candidate pair: PnP on the candidate's map points, else essential matrix."""
        conf = self.conf
        if len(pairs) < conf["min_inliers"]:
            return None
        if c.map_points is not None:
            xyz = c.map_points[pairs[:, 1]]
            has3d = np.isfinite(xyz).all(1)
        else:
            has3d = np.zeros(len(pairs), bool)
        if has3d.sum() >= conf["min_inliers"]:
            sel = pairs[has3d]
            res = estimate_pnp(q.keypoints.xy[sel[:, 0]], xyz[has3d], q.K, conf["pnp_threshold_px"],
                               conf["min_inliers"])
            if not res.success:
                return None
            T_map_query = invert_T(res.model)
            T_match_query = invert_T(c.T_map_cam) @ T_map_query
            metric, inl_pairs = True, sel[res.inliers]
            ratio = res.num_inliers / len(sel)
        else:
            res = estimate_essential(q.keypoints.xy[pairs[:, 0]], c.keypoints.xy[pairs[:, 1]], q.K, c.K,
                                     conf["essential_threshold_px"], conf["min_inliers"])
            if not res.success:
                return None
            T_match_query = res.model  # T_1_0: query (0) -> match (1), unit translation
            T_map_query = c.T_map_cam @ T_match_query
            metric, inl_pairs = False, pairs[res.inliers]
            ratio = res.num_inliers / len(pairs)
        if ratio < conf["min_inlier_ratio"]:
            return None
        cov = res.covariance if res.covariance is not None else np.eye(6)
        correction = T_map_query @ invert_T(q.T_map_cam)
        inl_pairs = inl_pairs[(inl_pairs[:, 0] < q.n_slam) & (inl_pairs[:, 1] < c.n_slam)]
        return Detection(q.id, q.stamp, c.id, T_match_query, T_map_query, cov, inl_pairs.astype(np.int64),
                         res.num_inliers, ratio, metric, correction)

    # ---------------------------------------------------------------- loops
    def _within_prior(self, d: Detection) -> bool:
        c = self.conf
        if not c["use_pose_prior"]:
            return True
        travelled = abs(self._path_length.get(d.kf_id, 0.0) - self._path_length.get(d.match_id, 0.0))
        angle = rotation_angle_deg(d.correction)
        if angle > c["prior_angle_deg"] + c["prior_angle_per_m"] * travelled:
            return False
        if not d.metric:
            return True  # no metric translation to compare
        return float(np.linalg.norm(d.correction[:3, 3])) <= c["prior_dist_m"] + c["prior_dist_per_m"] * travelled

    def _agree(self, a: Detection, b: Detection) -> bool:
        c = self.conf
        delta = invert_T(a.correction) @ b.correction
        if rotation_angle_deg(delta) > c["consistency_angle_deg"]:
            return False
        return not (a.metric and b.metric) or float(np.linalg.norm(delta[:3, 3])) <= c["consistency_dist_m"]

    def detect_loops(self, kf: Keyframe) -> list[LoopClosure]:
        """Verify `kf` against its retrieval candidates; returns loops accepted by this call.

        A detection that is not yet confirmed is kept pending; when later keyframes confirm it,
        it is returned then (together with the confirming one).
        """
        t0 = time.perf_counter()
        with self.lock:
            cand_ids = self._candidates(kf, exclude_recent=True)
            cands = [self.map.get(i) for i in cand_ids]
        t0 = self._tick("retrieve", t0)
        if not cands:
            return []
        best: Detection | None = None
        for group in self._groups(cands):
            pairs = self._match(kf, group)
            t0 = self._tick("match", t0)
            for c, p in zip(group, pairs):
                d = self._verify(kf, c, p)
                if d is not None and self._within_prior(d) and (best is None or d.inliers > best.inliers):
                    best = d
            t0 = self._tick("geometry", t0)
            if best is not None:
                break
        if best is None:
            return []
        return self._consistency(best)

    def _groups(self, cands: list[Keyframe]) -> list[list[Keyframe]]:
        """Candidates in matching batches: one at a time with early acceptance on CPU, all at once otherwise."""
        sequential = self.conf["early_accept"] and self.pipe.aliked.device.type != "cuda"
        return [[c] for c in cands] if sequential else [cands]

    def _consistency(self, d: Detection) -> list[LoopClosure]:
        c = self.conf
        with self.lock:
            horizon = d.stamp - c["consistency_window_s"]
            while self._pending and self._pending[0].stamp < horizon:
                self._pending.popleft()
            while self._accepted and self._accepted[0].stamp < horizon:
                self._accepted.popleft()
            if any(self._agree(a, d) for a in self._accepted):
                self._accepted.append(d)
                return [self._to_loop(d)]
            support = [p for p in self._pending if p.kf_id != d.kf_id and self._agree(p, d)]
            if len({p.kf_id for p in support}) + 1 >= c["consistency_required"]:
                for p in support:
                    self._pending.remove(p)
                group = sorted(support + [d], key=lambda x: x.stamp)
                self._accepted.extend(group)
                return [self._to_loop(x) for x in group]
            self._pending.append(d)
            return []

    def _to_loop(self, d: Detection) -> LoopClosure:
        q, m = self.map.get(d.kf_id), self.map.get(d.match_id)
        if d.metric:
            self._loops.append((d.kf_id, d.match_id, d.T_match_query, d.covariance))
        return LoopClosure(d.kf_id, q.stamp, d.match_id, m.stamp, d.T_match_query, d.covariance,
                           d.correspondences, d.inliers, float(d.inliers), d.metric)

    # ---------------------------------------------------------------- relocalization
    def relocalize(self, stamp: float, image: np.ndarray, K: np.ndarray, keypoints: Keypoints | None = None) -> Relocalization:
        """Pose T_map_cam of a frame (SLAM keypoints, or detected with the configured detector when None)."""
        t0 = time.perf_counter()
        if keypoints is None:
            keypoints = self.pipe.keypoints(image)
        if len(keypoints) == 0:
            return Relocalization(stamp, False, reason="no keypoints in the query image")
        if len(self.map) == 0:
            return Relocalization(stamp, False, reason="no candidate: the map is empty")
        q = self.make_keyframe(stamp, image, keypoints, np.eye(4), K, kf_id=-1)
        with self.lock:
            cand_ids = self._candidates(q, exclude_recent=False)
            cands = [self.map.get(i) for i in cand_ids]
        t0 = self._tick("reloc_retrieve", t0)
        if not cands:
            return Relocalization(stamp, False, reason="no candidate from retrieval")
        c = self.conf
        dets = []
        for group in self._groups(cands):
            for cand, p in zip(group, self._match(q, group)):
                if cand.map_points is None or len(p) < c["reloc_min_inliers"]:
                    continue
                xyz = cand.map_points[p[:, 1]]
                ok = np.isfinite(xyz).all(1)
                if ok.sum() < c["reloc_min_inliers"]:
                    continue
                res = estimate_pnp(q.keypoints.xy[p[ok, 0]], xyz[ok], K, c["pnp_threshold_px"],
                                   c["reloc_min_inliers"])
                if res.success and res.num_inliers / ok.sum() >= c["min_inlier_ratio"]:
                    T = invert_T(res.model)
                    dets.append((cand.id, T, res.covariance, res.num_inliers, self._correction(cand.id) @ T))
            clusters = self._cluster(dets)
            if len(clusters) == 1 and len(clusters[0]) >= 2:
                break  # two agreeing candidates and no disagreeing one: early acceptance
        self._tick("reloc_verify", t0)
        if not dets:
            return Relocalization(stamp, False, matched_keyframes=[], reason="too few inliers with every candidate")
        # the best-supported cluster of candidate poses must be unambiguous
        clusters = self._cluster(dets)
        best = clusters[0]
        support = sum(d[3] for d in best)
        if len(clusters) > 1 and sum(d[3] for d in clusters[1]) > 0.5 * support:
            return Relocalization(stamp, False, matched_keyframes=[d[0] for d in dets],
                                  reason="inconsistent: candidates disagree on the pose")
        if len(best) < 2 and best[0][3] < c["reloc_strong_inliers"]:
            return Relocalization(stamp, False, matched_keyframes=[best[0][0]], inliers=best[0][3],
                                  reason=f"inconsistent: one candidate with {best[0][3]} inliers and no second "
                                         f"agreeing candidate")
        top = best[0]
        return Relocalization(stamp, True, top[1], top[2], top[3], [d[0] for d in best], "")

    def _correction(self, kf_id: int) -> np.ndarray:
        """T_corrected_slam of a keyframe: identity without loops, else from a pose graph over the SLAM poses
        and the accepted metric loops of this session (re-solved when loops were added; later keyframes take the
        correction of the newest keyframe in that solution; keyframes loaded from a map file keep identity)."""
        if not self.conf["reloc_loop_corrected"] or not self._loops:
            return np.eye(4)
        with self.lock:
            if self._graph_loops != len(self._loops):
                self._solve_pose_graph()
            if kf_id in self._corrections:
                return self._corrections[kf_id]
            if kf_id not in self._stamp_of:  # loaded from a map file: another session's frame, not in the graph
                return np.eye(4)
            stamp = self._stamp_of[kf_id]
            older = [i for i in self._corrections if self._stamp_of[i] <= stamp]
            return self._corrections[max(older, key=self._stamp_of.get)] if older else np.eye(4)

    def _solve_pose_graph(self) -> None:
        from .posegraph import optimize_pose_graph

        t0 = time.perf_counter()
        order = sorted((i for i in self._stamp_of if i in self.map), key=self._stamp_of.get)
        poses = {i: self.map.get(i).T_map_cam for i in order}
        loops = [lp for lp in self._loops if lp[0] in poses and lp[1] in poses]
        try:
            corrected = optimize_pose_graph(poses, order, loops) if loops and len(order) > 1 else {}
        except (RuntimeError, ValueError) as exc:  # an unsolvable graph: compare in the SLAM frame
            logger.warning("pose graph for relocalization failed (%s): comparing candidates uncorrected", exc)
            corrected = {}
        self._corrections = {i: corrected[i] @ invert_T(poses[i]) for i in corrected}
        self._graph_loops = len(self._loops)
        self._tick("reloc_pose_graph", t0)

    def _cluster(self, dets: list[tuple]) -> list[list[tuple]]:
        """Group (kf_id, T_map_cam, cov, inliers, loop-corrected T) detections whose corrected poses agree;
        best-supported first."""
        c = self.conf
        clusters: list[list[tuple]] = []
        for det in sorted(dets, key=lambda x: -x[3]):
            for cl in clusters:
                delta = invert_T(cl[0][4]) @ det[4]
                if (np.linalg.norm(delta[:3, 3]) <= c["reloc_agree_dist_m"]
                        and rotation_angle_deg(delta) <= c["reloc_agree_angle_deg"]):
                    cl.append(det)
                    break
            else:
                clusters.append([det])
        return sorted(clusters, key=lambda cl: -sum(d[3] for d in cl))
