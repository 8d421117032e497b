"""Loop-closure detection and global relocalization: what ORB-SLAM3's LoopClosing (DBoW2 + Sim3) and
Tracking::Relocalization (BoW + PnP) do, with ALIKED + LightGlue (or the classic ORB Hamming baseline).

The engine is a facade over one job per module:
  keyframe (SLAM keypoints, pose, map points) -> features (matching.pipeline) -> map + retrieval index
  (retrieval: top-K, recent keyframes excluded) -> matching of the query against the candidates -> geometry of
  each pair (verify: PnP against the candidate's map points, or the essential matrix) -> loop acceptance
  (acceptance: drift prior, consistency over consecutive query keyframes) or the relocalization decision
  (relocalize: agreeing candidate poses, loop-corrected). A false loop corrupts a map, so a detection becomes
  a LoopClosure only when every check passes.

Conf: one tree, `{device, features, matcher, retrieval, verify, loop, reloc}`; each section is handed whole to
the part that uses it. `OPTIONS` holds every option with its default, description and range; the node's
parameters (`engine.<section>.<name>`) and config/reloc.yaml are generated from it. Named presets (`PRESETS`)
choose a pipeline by name; the flat option names of earlier releases are still accepted, with a warning.

Frames: T_map_cam is camera-to-map (SLAM map frame).
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..conf import deep_update, merge_conf, option_defaults, unflatten
from ..features.keypoints import Keypoints
from ..geometry import estimate_pnp, invert_T
from ..inference.backends import intra_op_threads
from ..map.store import KeyframeMap
from ..matching.keyframes import HammingKeyframes, LightGlueKeyframes
from ..matching.pipeline import PairPipeline, lightglue_from
from ..types import Keyframe, LoopClosure, Relocalization
from . import acceptance, candidates, relocalize, verify
from .retrieval import RetrievalIndex, global_descriptor

logger = logging.getLogger(__name__)

MATCHERS = ("lightglue", "nn")
HOODS_KEPT = 10000  # neighbourhoods of inserted keyframes kept for their loop check (a verification backlog)

# The engine's options, the one table: name -> (default, what it does and what raising / lowering it does,
# (min, max) or None), or section -> table. `default_conf` is its first column; the node declares each option
# as the parameter `engine.<section>.<name>` with this description and range, and config/reloc.yaml is
# generated from it (io.params).
OPTIONS: dict = {
    "device": ("auto", "cpu | cuda | auto (CUDA when available)", None),
    "backend": ("auto", "runtime of the networks on CPU: auto (per network the fastest measured: torch for ALIKED's "
                "backbone; openvino, else onnxruntime, else torch for LightGlue and ALIKED's dense map) | torch | "
                "openvino | onnxruntime; same matches as torch fp32 (README: latency)", None),
    "features": {  # the SLAM keypoints' descriptors (see matching.pipeline.default_conf)
        "sampling": ("octave", "ALIKED sampling of multi-scale keypoints: full | octave (one map per pyramid "
                     "level)", None),
        "octave_levels": ((0, 1, 2, 3, 4, 5, 6, 7), "pyramid levels that get their own ALIKED map (fewer: faster, "
                          "less accurate)", None),
        "evaluation": ("sparse", "sparse: ALIKED's backbone, then its descriptor head reads the map only where it "
                       "samples (same descriptors to 1e-5, ~4x less CPU) | dense: the full-resolution map, as "
                       "ALIKED ships it", None),
        "suppression": ("none", "nearby-keypoint remedy on the SLAM's keypoints: none | radius | octave", None),
        "ensemble_detector": (None, "add this detector's keypoints to every keyframe (e.g. aliked); empty = off",
                              None),
        "ensemble_keypoints": (512, "number of ensemble keypoints", (1, 10000)),
        "query_detector": ("orb", "detector of relocalization queries that come without SLAM keypoints "
                           "(~/query/image): orb (ORB-SLAM3-like) | orb-ss | sift | gftt | akaze | aliked | disk",
                           None),
        "query_max_keypoints": (1000, "keypoints detected in such a query", (1, 100000)),
        "query_ensemble": (512, "ALIKED's own keypoints added on the query side of relocalization queries (from "
                           "the same full-resolution ALIKED map; those within 3 px of a SLAM keypoint are left "
                           "out), matched against the candidates' map-point keypoints; results keep the SLAM's "
                           "keypoint indices; 0 = off (fewer relocalizations in the dark)", (0, 10000)),
        "query_ensemble_when": ("fallback", "fallback: match the ensemble keypoints only when the query's own "
                                "keypoints found no pose (no extra cost where they suffice) | always", None),
        "query_ensemble_loops": (False, "add them to loop query keyframes too (the map stores the SLAM's keypoints "
                                 "only; costs LightGlue time on every keyframe)", None),
        "parallel_levels": (True, "CPU: while the loop stage is idle (the node's worker or the replay says so), "
                            "describe a keyframe's pyramid levels on two threads, each with the stage's threads "
                            "(the same descriptors in about half the time; relocalization queries: reloc.parallel)",
                            None),
    },
    "matcher": {
        "name": ("lightglue", "lightglue (ALIKED at the SLAM keypoints + LightGlue) or nn (ORB Hamming, the "
                 "classic baseline)", None),
        "weights": (None, "LightGlue weights: empty or official = official ALIKED LightGlue; the name of weights "
                          "shipped in agnostic_reloc/weights/; or a checkpoint path",
                    None),
        "filter_threshold": (0.1, "LightGlue match confidence threshold (lower: more, less certain matches)",
                             (0.0, 1.0)),
    },
    "retrieval": {
        "num_candidates": (5, "keyframes verified per query, top-K of retrieval (higher: more recall, more time)",
                           (1, 100)),
        **candidates.OPTIONS,  # which keyframes may be loop candidates: covisibility and trajectory, not time
        "temporal_window_s": (0.0, "also ignore keyframes within this many seconds of the query (0: off; "
                              "covisibility and distance travelled decide)", (0.0, 1e6)),
        "min_mutual_matches": (5, "learned mode: a candidate is verified only when its ALIKED descriptors and the "
                               "query's have at least this many mutual nearest neighbours with cosine >= "
                               "mutual_min_cosine (a few ms instead of LightGlue's ~0.2 s on CPU; as ORB-SLAM3 needs "
                               "enough BoW matches before its Sim3). Verified loops had >= 38 by day and at night "
                               "(benchmarks/results/match_gate); 0 = verify every candidate", (0, 100000)),
        "mutual_min_cosine": (0.7, "cosine floor of those mutual nearest neighbours (lower: fewer candidates "
                              "skipped)", (-1.0, 1.0)),
        "early_accept": (True, "CPU: verify candidates one by one in retrieval order and stop at the first "
                         "accepted (saves most matching time; on CUDA all K are matched in one batch regardless)",
                         None),
        "lookahead": (True, "CPU, with early_accept: while the keyframe stage is idle (the node's worker says so), "
                      "match the next candidate beside the current one on the idle core (same loops; a check whose "
                      "first candidates are refused finishes sooner)", None),
    },
    "verify": verify.OPTIONS,
    "loop": acceptance.OPTIONS,
    "reloc": relocalize.OPTIONS,
}
default_conf = option_defaults(OPTIONS)

# Named pipelines (hloc style): what a user chooses by name; a preset is a partial conf over default_conf.
PRESETS: dict[str, dict] = {
    "learned": {"matcher": {"name": "lightglue"}},  # ALIKED at the SLAM keypoints + LightGlue (default)
    "classic": {"matcher": {"name": "nn"}},  # ORB descriptors + Hamming mutual NN (ORB-SLAM3's own matching)
}

# flat option names of earlier releases -> their place in the tree (accepted with a warning for one release)
LEGACY_KEYS = {
    "matcher": "matcher.name", "weights": "matcher.weights", "filter_threshold": "matcher.filter_threshold",
    "suppression": "features.suppression", "sampling": "features.sampling",
    "octave_levels": "features.octave_levels", "ensemble_detector": "features.ensemble_detector",
    "ensemble_keypoints": "features.ensemble_keypoints", "num_candidates": "retrieval.num_candidates",
    "early_accept": "retrieval.early_accept", "temporal_window_s": "retrieval.temporal_window_s",
    "pnp_threshold_px": "verify.pnp_threshold_px", "essential_threshold_px": "verify.essential_threshold_px",
    "min_inlier_ratio": "verify.min_inlier_ratio", "min_inliers": "loop.min_inliers",
    "consistency_window_s": "",  # replaced by loop.consistency_window_kf (keyframes, not seconds): ignored
    **{k: f"loop.{k}" for k in ("consistency_required", "consistency_dist_m",
                                 "consistency_angle_deg", "prior_dist_m", "prior_dist_per_m", "prior_angle_deg",
                                 "prior_angle_per_m", "use_pose_prior")},
    **{f"reloc_{k}": f"reloc.{k}" for k in ("min_inliers", "agree_dist_m", "agree_angle_deg", "strong_inliers",
                                             "loop_corrected")},
}


def upgrade_conf(conf: dict | None) -> dict:
    """A conf that may use the flat names of earlier releases -> the nested tree (one FutureWarning naming the
    new names). Nested confs pass unchanged."""
    conf = dict(conf or {})
    legacy = {k: conf.pop(k) for k in list(conf)
              if k in LEGACY_KEYS and not (k in default_conf and isinstance(conf[k], dict))}
    if not legacy:
        return conf
    warnings.warn("flat engine options are deprecated and will be removed in the next release: "
                  + ", ".join(f"{k} -> {LEGACY_KEYS[k]}" for k in legacy if LEGACY_KEYS[k]), FutureWarning,
                  stacklevel=3)
    dropped = [k for k in legacy if not LEGACY_KEYS[k]]
    if dropped:
        warnings.warn(f"engine options {dropped} no longer exist and are ignored (see loop.engine.OPTIONS)",
                      FutureWarning, stacklevel=3)
    nested = unflatten({LEGACY_KEYS[k]: v for k, v in legacy.items() if LEGACY_KEYS[k]})
    for section, values in nested.items():
        given = conf.get(section) or {}
        if not isinstance(given, dict):
            raise ValueError(f"engine options: '{section}' must be a dict, got {type(given).__name__}")
        conf[section] = {**values, **given}
    return conf


def check_conf(conf: dict | None) -> dict:
    """The full engine conf: defaults updated with `conf` (nested, or flat legacy names); ValueError naming any
    unknown or invalid option."""
    conf = merge_conf(default_conf, upgrade_conf(conf), "engine options")
    if conf["matcher"]["name"] not in MATCHERS:
        raise ValueError(f"engine matcher must be 'lightglue' or 'nn', got '{conf['matcher']['name']}'")
    if conf["retrieval"]["num_candidates"] < 1 or conf["loop"]["consistency_required"] < 1:
        raise ValueError("num_candidates and consistency_required must be >= 1")
    return conf


def preset_conf(name: str, overrides: dict | None = None) -> dict:
    """The conf of a named preset (`PRESETS`), deep-updated with `overrides`."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset '{name}'; choose from {', '.join(PRESETS)}")
    return deep_update(PRESETS[name], upgrade_conf(overrides))


class Engine:
    """Keyframe map + loop detection + relocalization. Thread-safe: insert from one thread, verify in another."""

    def __init__(self, conf: dict | None = None, kf_map: KeyframeMap | None = None) -> None:
        self.conf = check_conf(conf)
        c, f = self.conf, self.conf["features"]
        learned = c["matcher"]["name"] == "lightglue"
        self.pipe = PairPipeline(
            # the classic mode still computes ALIKED descriptors, for retrieval only: both modes share retrieval
            matcher="lightglue" if learned else "fused", suppression=f["suppression"], sampling=f["sampling"],
            octave_levels=f["octave_levels"], evaluation=f["evaluation"], weights=c["matcher"]["weights"],
            device=c["device"],
            backend=c["backend"], filter_threshold=c["matcher"]["filter_threshold"], detector=f["query_detector"],
            max_keypoints=f["query_max_keypoints"], load_matcher=False)
        self.matcher = (LightGlueKeyframes(lightglue_from(self.pipe.conf)) if learned
                        else HammingKeyframes(self.pipe.conf["nn_ratio"]))
        self.map = kf_map if kf_map is not None else KeyframeMap()
        self.index = RetrievalIndex()
        self.lock = threading.RLock()
        self.acceptance = acceptance.LoopAcceptance(c["loop"])
        self.neighbourhood = candidates.Neighbourhood(c["retrieval"])
        self.corrections = relocalize.LoopCorrections()
        self.relocalizer = relocalize.Relocalizer(c["reloc"], c["loop"]["common_min_matches"])
        self._path_length: dict[int, float] = {}  # cumulative SLAM path length at each keyframe
        self._stamp_of: dict[int, float] = {}  # keyframe stamps (loops never look forward in time)
        self._pose_of: dict[int, np.ndarray] = {}  # SLAM T_map_cam of each keyframe (for the pose graph)
        self._order: list[int] = []  # keyframe ids in insertion order
        self._ordinal: dict[int, int] = {}  # keyframe id -> position in _order
        # keyframe id -> its neighbourhood (`Neighbourhood.group`) as it was at insertion, until its loop check:
        # a verifier that lags behind insertion must not count later keyframes as the query's predecessors
        self._hood_of: dict[int, tuple[set[int], np.ndarray]] = {}
        self._last_kf: Keyframe | None = None
        self.timing: dict[str, list[float]] = {}
        self._next_id = 0
        self._threads = torch.get_num_threads()  # intra-op threads of each stage (set before the engine is built)
        self._on_cpu = self.pipe.aliked.device.type != "cuda"  # both modes run ALIKED (retrieval needs it)
        self._query_pool: ThreadPoolExecutor | None = None  # matches candidates side by side (CPU)
        # is a second core free now? The worker sets it (its keyframe stage has nothing to do); see
        # retrieval.lookahead. Default: never.
        self.spare_core: Callable[[], bool] = lambda: False
        # is the loop stage idle now? Then a keyframe's description may take its core (features.parallel_levels).
        # The worker and the pipelined runner set it; None: there is no second stage.
        self.loop_stage_idle: Callable[[], bool] | None = None
        if len(self.map):
            self._rebuild_index()

    # ---------------------------------------------------------------- keyframes
    def _remember(self, kf: Keyframe) -> None:
        last = self._last_kf
        step = 0.0 if last is None else float(np.linalg.norm(kf.position - last.position))
        self._path_length[kf.id] = (self._path_length.get(last.id, 0.0) if last else 0.0) + step
        self._stamp_of[kf.id] = kf.stamp
        self._pose_of[kf.id] = np.array(kf.T_map_cam, np.float64)
        self._ordinal[kf.id] = len(self._order)
        self._order.append(kf.id)
        self.neighbourhood.push(kf)
        self._last_kf = kf

    def _rebuild_index(self) -> None:
        ids, vecs = self.map.global_descriptors()
        self.index.rebuild(list(map(int, ids)), vecs, [self.map.get(int(i)).stamp for i in ids])
        for kf_id in self.map.ids():
            self._remember(self.map.get(kf_id))
        self._next_id = max(self.map.ids()) + 1
        self.neighbourhood.reset()  # another session's keyframes are no predecessors of this session's first ones
        self.corrections.hold(self.map.corrections())  # a map saved with its loop corrections starts corrected

    def reset(self) -> None:
        """Forget every keyframe and pending detection (the map file on disk is untouched)."""
        with self.lock:
            self.map.clear()
            self.index = RetrievalIndex()
            self._path_length.clear()
            self._stamp_of.clear()
            self._pose_of.clear()
            self._order.clear()
            self._ordinal.clear()
            self._hood_of.clear()
            self.neighbourhood.reset()
            self._last_kf = None
            self.acceptance.reset()
            self.corrections.reset()
            self.relocalizer.reset()
            self._next_id = 0

    def save_map(self, path: str) -> None:
        """Write the keyframe map with every keyframe's current loop correction (`correction`) atomically (a crash
        mid-save leaves the previous file intact). Loaded again, its keyframes keep these corrections."""
        with self.lock:
            self.map.set_corrections({i: self._corrected(i) for i in self._order})
            self.map.save(path)

    def _tick(self, stage: str, t0: float) -> float:
        now = time.perf_counter()
        self.timing.setdefault(stage, []).append(1e3 * (now - t0))
        return now

    def make_keyframe(self, stamp: float, image: np.ndarray, keypoints: Keypoints, T_map_cam: np.ndarray,
                      K: np.ndarray, map_points: np.ndarray | None = None, map_point_ids: np.ndarray | None = None,
                      kf_id: int | None = None, query_ensemble: int = 0, workers: int = 1,
                      share_when: Callable[[], bool] | None = None) -> Keyframe:
        """Build and validate a keyframe: suppression, descriptors, global descriptor (nothing stored yet).

        query_ensemble: add this many of ALIKED's own keypoints as extra rows (no map points), for the query side
        of matching only (see `features.query_ensemble`); the global descriptor ignores them.
        workers: threads that share the description's pyramid levels (CPU), each with this thread's intra-op threads;
        share_when: the helpers take a level only while it returns True (None: always).
        """
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
        f = self.conf["features"]
        if f["ensemble_detector"]:
            extra = self.pipe.keypoints_of(image, f["ensemble_detector"], f["ensemble_keypoints"])
            kf.keypoints = Keypoints.concat([keypoints, extra])
            if kf.map_points is not None:
                kf.map_points = np.concatenate([kf.map_points, np.full((len(extra), 3), np.nan, np.float32)])
            if kf.map_point_ids is not None:
                kf.map_point_ids = np.concatenate([kf.map_point_ids, np.full(len(extra), -1, np.int64)])
        n_rows = len(kf.keypoints)
        feats = self.pipe.extract(image, kf.keypoints, ensemble=query_ensemble, workers=workers,
                                  share_when=share_when)
        n_extra = len(feats.keypoints) - n_rows
        if n_extra:  # query-side ensemble rows: no map points, never stored
            kf.keypoints, kf.n_query_rows = feats.keypoints, n_extra
            if kf.map_points is not None:
                kf.map_points = np.concatenate([kf.map_points, np.full((n_extra, 3), np.nan, np.float32)])
            if kf.map_point_ids is not None:
                kf.map_point_ids = np.concatenate([kf.map_point_ids, np.full(n_extra, -1, np.int64)])
        kf.kept = feats.kept.astype(np.int64)
        self.matcher.describe(kf, feats)
        own = kf.kept < n_rows
        kf.global_desc = global_descriptor(feats.descriptors[torch.from_numpy(own)].float().cpu().numpy(),
                                           kf.keypoints.xy[kf.kept[own]], (w, h))
        self._tick("extract", t0)
        return kf

    def make_keyframe_from(self, ev) -> Keyframe:
        """`make_keyframe` of a `types.KeyframeEvent` (a loop query: with `features.query_ensemble_loops`, the
        query-side ensemble rows, which `insert_keyframe` does not store)."""
        # features.parallel_levels: a helper describes pyramid levels while the loop stage leaves its core idle
        idle = self.loop_stage_idle
        parallel = self._on_cpu and self.conf["features"]["parallel_levels"] and idle is not None
        return self.make_keyframe(ev.stamp, ev.image, ev.keypoints, ev.T_map_cam, ev.K, ev.map_points,
                                  ev.map_point_ids, ev.kf_id, self._loop_ensemble(), 2 if parallel else 1, idle)

    def _loop_ensemble(self) -> int:
        f = self.conf["features"]
        return f["query_ensemble"] if f["query_ensemble_loops"] else 0

    def insert_keyframe(self, kf: Keyframe) -> None:
        """Store a keyframe (without its query-only rows) in the map and the retrieval index (never waits for
        verification)."""
        kf = kf.stored()
        with self.lock:
            self.map.add(kf)
            self.index.add(kf.id, kf.global_desc, stamp=kf.stamp)
            self._remember(kf)
            self._hood_of[kf.id] = self.neighbourhood.group(kf)
            if len(self._hood_of) > HOODS_KEPT:  # keyframes nobody verifies (an engine used for insertion only)
                del self._hood_of[next(iter(self._hood_of))]

    def process_keyframe(self, stamp: float, image: np.ndarray, keypoints: Keypoints, T_map_cam: np.ndarray,
                         K: np.ndarray, map_points: np.ndarray | None = None,
                         map_point_ids: np.ndarray | None = None, kf_id: int | None = None) -> list[LoopClosure]:
        """Extract, insert, then look for loops of this keyframe; returns the loops accepted now."""
        kf = self.make_keyframe(stamp, image, keypoints, T_map_cam, K, map_points, map_point_ids, kf_id,
                                self._loop_ensemble())
        self.insert_keyframe(kf)
        return self.detect_loops(kf)

    # ---------------------------------------------------------------- candidates and matching
    def _travelled(self, a: int, b: int) -> float:
        """SLAM trajectory length between two keyframes of this session (inf when one is unknown)."""
        if a not in self._path_length or b not in self._path_length:
            return float("inf")
        return abs(self._path_length[a] - self._path_length[b])

    def _middle(self, a: int, b: int) -> Keyframe | None:
        """The keyframe halfway (in insertion order) between two keyframes, or None when they are adjacent."""
        ia, ib = self._ordinal.get(a), self._ordinal.get(b, len(self._order))
        if ia is None or abs(ib - ia) < 2:
            return None
        return self.map.get(self._order[(ia + ib) // 2])

    def _candidates(self, kf: Keyframe, hood: tuple[set[int], np.ndarray] | None) -> list[int]:
        """Retrieval top-K for a loop query (hood = `neighbourhood.group(kf)`: only older keyframes outside the
        query's neighbourhood, see loop.candidates) or a relocalization query (hood None: any keyframe)."""
        r = self.conf["retrieval"]
        exclude: set[int] | object = {kf.id}
        loop = hood is not None
        if loop:  # loops look only backwards in time, so a lagging verifier finds what a prompt one does
            recent, points = hood
            stamps, q_stamp = self._stamp_of, kf.stamp

            def exclude(i: int) -> bool:
                if i == kf.id or stamps.get(i, -np.inf) > q_stamp:
                    return True
                why = candidates.excluded(self.map.get(i), kf, recent, points, self._travelled(i, kf.id), r,
                                          self._middle(i, kf.id))
                if why:
                    self.neighbourhood.excluded[why.split(" (")[0]] += 1
                return why is not None

        window = r["temporal_window_s"] if loop else 0.0
        hits = self.index.search(kf.global_desc, r["num_candidates"], exclude=exclude, stamp=kf.stamp, window=window)
        return [cid for cid, _ in hits]

    def _matchable(self, q: Keyframe, c: Keyframe) -> bool:
        """Worth verifying: enough mutual descriptor matches (`retrieval.min_mutual_matches`), or no gate."""
        r = self.conf["retrieval"]
        if not r["min_mutual_matches"]:
            return True
        n = self.matcher.mutual_matches(q, c, r["mutual_min_cosine"])
        if n is None or n >= r["min_mutual_matches"]:
            return True
        self.acceptance.refused["too few mutual descriptor matches"] += 1
        return False

    def _groups(self, cands: list[Keyframe]) -> list[list[Keyframe]]:
        """Candidates in matching batches: one at a time with early acceptance on CPU, all at once otherwise."""
        sequential = self.conf["retrieval"]["early_accept"] and self._on_cpu
        return [[c] for c in cands] if sequential else [cands]

    # ---------------------------------------------------------------- loops
    def detect_loops(self, kf: Keyframe) -> list[LoopClosure]:
        """Verify `kf` against its retrieval candidates; returns loops accepted by this call.

        A detection that is not yet confirmed is kept pending; when later keyframes confirm it,
        it is returned then (together with the confirming one).
        """
        t0 = time.perf_counter()
        with self.lock:
            hood = self._hood_of.pop(kf.id, None) or self.neighbourhood.group(kf)
            cand_ids = self._candidates(kf, hood)
            cands = [self.map.get(i) for i in cand_ids]
        t0 = self._tick("retrieve", t0)
        cands = [c for c in cands if self._matchable(kf, c)]
        t0 = self._tick("gate", t0)
        if not cands:
            return []
        best: verify.Detection | None = None
        min_inliers = self.conf["loop"]["min_inliers"]
        groups = self._groups(cands)
        ahead: dict[int, np.ndarray] = {}  # candidate id -> its matches, computed beside the previous candidate's
        for i, group in enumerate(groups):
            if len(group) == 1 and group[0].id in ahead:
                pairs = [ahead.pop(group[0].id)]
            elif (len(group) == 1 and i + 1 < len(groups) and self.conf["retrieval"]["lookahead"]
                  and self.spare_core()):
                pairs = self._match_side_by_side(kf, [group[0], groups[i + 1][0]])
                ahead[groups[i + 1][0].id] = pairs.pop()
            else:
                pairs = self.matcher.match(kf, group)
            t0 = self._tick("match", t0)
            for c, p in zip(group, pairs):
                d = verify.verify_pair(kf, c, p, min_inliers, self.conf["verify"])
                if d is None:
                    self.acceptance.refused["too few inliers"] += 1
                    continue
                d.ordinal = self._ordinal.get(kf.id, len(self._order))
                travelled = self._travelled(d.kf_id, d.match_id)
                if (self.acceptance.supported(d) and self.acceptance.within_prior(d, travelled)
                        and self._common_region(kf, c, d, hood[0]) and (best is None or d.inliers > best.inliers)):
                    best = d
            t0 = self._tick("geometry", t0)
            if best is not None:
                break
        if best is None:
            return []
        with self.lock:
            return [self._to_loop(d) for d in self.acceptance.add(best)]

    def _common_region(self, q: Keyframe, c: Keyframe, d: verify.Detection, recent: set[int]) -> bool:
        """Does the detection's pose also explain matches to a keyframe next to the candidate? (metric only;
        recent: the query's neighbourhood, whose keyframes prove nothing)"""
        lc = self.conf["loop"]
        if not (lc["common_region"] and d.metric):
            return True
        support = self._neighbour_support(q, c.id, d.T_map_query, d.correspondences[:, 0], recent, q.stamp)
        if support is None or support[0] >= lc["common_min_matches"]:
            return True
        self.acceptance.refused["no common region with the candidate's neighbours"] += 1
        return False

    def _neighbour_support(self, q: Keyframe, cand_id: int, T_map_query: np.ndarray, used_rows: np.ndarray,
                           skip: set[int] = frozenset(), before: float | None = None,
                           pairs_out: list | None = None) -> tuple[int, int, int] | None:
        """How well the keyframes next to a candidate explain a query pose: ORB-SLAM3's check of a candidate's
        covisible keyframes, shared by loop detection (common region) and relocalization.

        The map points of up to `loop.common_neighbours` keyframes on each side of the candidate (insertion
        order; none in `skip`, none stamped at or after `before`) are projected into the query with
        T_map_query ([4 x 4] query camera -> SLAM map) and matched to query keypoints other than `used_rows`
        (`verify.projection_matches`). Returns (most matches of one neighbour, map points in view over all
        neighbours tried, that neighbour's id), or None when the candidate has no such neighbour. pairs_out
        receives the matches (query keypoint row, map point [3]) of every neighbour tried.
        """
        lc = self.conf["loop"]
        with self.lock:
            k = self._ordinal.get(cand_id)
            if k is None:
                return None
            n = lc["common_neighbours"]
            near = [self._order[j] for j in range(max(0, k - n), min(len(self._order), k + n + 1)) if j != k]
            near = [i for i in near if i != q.id and i not in skip
                    and (before is None or self._stamp_of.get(i, np.inf) < before)]
            neighbours = [self.map.get(i) for i in near]
        if not neighbours:
            return None
        best, in_view, best_id = 0, 0, neighbours[0].id
        for nb in neighbours:
            m, v = verify.projection_matches(q, T_map_query, nb, used_rows, lc["common_radius_px"],
                                             lc["common_min_similarity"], lc["common_max_hamming"], pairs_out)
            in_view += v
            if m > best:
                best, best_id = m, nb.id
            if best >= lc["common_min_matches"] and pairs_out is None:
                break
        return best, in_view, best_id

    def _to_loop(self, d: verify.Detection) -> LoopClosure:
        q, m = self.map.get(d.kf_id), self.map.get(d.match_id)
        if d.metric:
            self.corrections.add_loop(d.kf_id, d.match_id, d.T_match_query, d.covariance)
        return LoopClosure(d.kf_id, q.stamp, d.match_id, m.stamp, d.T_match_query, d.covariance,
                           d.correspondences, d.inliers, float(d.inliers), d.metric)

    # ---------------------------------------------------------------- relocalization
    def relocalize(self, stamp: float, image: np.ndarray, K: np.ndarray, keypoints: Keypoints | None = None) -> Relocalization:
        """Pose T_map_cam of a frame (SLAM keypoints, or detected with features.query_detector when None).

        With `features.query_ensemble`, the query also gets ALIKED's own keypoints; with
        `query_ensemble_when: fallback` they are detected, described and matched only when the query's own
        keypoints found no pose (too few inliers, or one candidate not confirmed): queries that relocalize anyway
        cost no more, the others are described a second time with them.
        """
        t0 = time.perf_counter()
        if keypoints is None:
            keypoints = self.pipe.keypoints(image)
        if len(keypoints) == 0:
            return Relocalization(stamp, False, reason="no keypoints in the query image")
        if len(self.map) == 0:
            return Relocalization(stamp, False, reason="no candidate: the map is empty")
        f = self.conf["features"]
        # fallback: the ensemble keypoints (ALIKED's dense map and detection) are computed only when needed
        lazy = bool(f["query_ensemble"]) and f["query_ensemble_when"] == "fallback"
        q = self.make_keyframe(stamp, image, keypoints, np.eye(4), K, kf_id=-1,
                               query_ensemble=0 if lazy else f["query_ensemble"], workers=self._query_workers())
        with self.lock:
            cand_ids = self._candidates(q, None)
            cands = [self.map.get(i) for i in cand_ids]
        t0 = self._tick("reloc_retrieve", t0)
        if not cands:
            return Relocalization(stamp, False, reason="no candidate from retrieval")
        result = self._relocalize_view(stamp, q, cands, final=not lazy)
        if lazy and not result.success and result.reason.startswith(("too few inliers", "unconfirmed")):
            q = self.make_keyframe(stamp, image, keypoints, np.eye(4), K, kf_id=-1,
                                   query_ensemble=f["query_ensemble"], workers=self._query_workers())
            result = self._relocalize_view(stamp, q, cands, final=True)
        self._tick("reloc_verify", t0)
        return result

    def _relocalize_view(self, stamp: float, q: Keyframe, cands: list[Keyframe], final: bool) -> Relocalization:
        """Match and verify one query view against the candidates, then decide (final: the last view tried)."""
        rc = self.conf["reloc"]
        # poses below min_inliers count only against a pose (ambiguity)
        floor = min(rc["min_inliers"], rc["ambiguity_min_inliers"]) if rc["ambiguity_ratio"] > 0 else rc["min_inliers"]
        poses: list[relocalize.CandidatePose] = []
        done: set[int] = set()

        def verify_round(group: list[Keyframe]) -> None:
            for cand, p in zip(group, self._match_side_by_side(q, group)):
                done.add(cand.id)
                pose = verify.pnp_pose(q, cand, p, floor, self.conf["verify"])
                if pose is not None:
                    T, cov, inl, _ = pose
                    with self.lock:  # loop-corrected comparison (identity with reloc.loop_corrected off)
                        T_corr = self._corrected(cand.id) if rc["loop_corrected"] else np.eye(4)
                    poses.append(relocalize.CandidatePose(cand.id, T, cov, len(inl), T_corr @ T, inl[:, 0],
                                                          cand.map_points[inl[:, 1]]))

        for group in self._query_groups(cands):
            verify_round(group)
            if relocalize.settled(poses, rc):
                break  # two agreeing candidates and no disagreeing one: early acceptance
        elsewhere = self._elsewhere(q, [c for c in cands if c.id not in done], poses)
        for group in self._query_groups(elsewhere):  # what the early stop skipped at other places
            verify_round(group)
        # the relocalizer is the query thread's own state: no lock
        return self.relocalizer.decide(stamp, poses, self._neighbour_check(q), remember=final,
                                       query_xy=q.keypoints.xy)

    def _elsewhere(self, q: Keyframe, rest: list[Keyframe], poses: list[relocalize.CandidatePose]
                   ) -> list[Keyframe]:
        """Candidates left unverified by an early stop that lie at another place than the best pose (keyframe
        farther than reloc.ambiguity_dist_m, loop-corrected) and share descriptor matches with the query
        (retrieval.min_mutual_matches; every one where there is no such pre-check): the aliasing check."""
        rc, r = self.conf["reloc"], self.conf["retrieval"]
        best = relocalize.strong(poses, rc)
        if not rest or not best or rc["ambiguity_ratio"] <= 0:
            return []
        top = max(best, key=lambda p: p.inliers).T_corrected
        out = []
        for c in rest:
            with self.lock:
                T_c = (self._corrected(c.id) if rc["loop_corrected"] else np.eye(4)) @ c.T_map_cam
            if relocalize.distance_m(T_c, top) <= rc["ambiguity_dist_m"]:
                continue
            n = self.matcher.mutual_matches(q, c, r["mutual_min_cosine"]) if r["min_mutual_matches"] else None
            if n is None or n >= r["min_mutual_matches"]:
                out.append(c)
        return out

    def _query_workers(self) -> int:
        """Threads of a relocalization query's description (`reloc.parallel` on CPU), each with the stage's."""
        return self.conf["reloc"]["parallel"] if self._on_cpu else 1

    def _query_groups(self, cands: list[Keyframe]) -> list[list[Keyframe]]:
        """A query's candidates in matching rounds: `reloc.parallel` at a time on CPU (early stop between
        rounds), else as loop checks group them."""
        n = self.conf["reloc"]["parallel"]
        if n < 2 or not self._on_cpu or not self.conf["retrieval"]["early_accept"]:
            return self._groups(cands)
        return [cands[i:i + n] for i in range(0, len(cands), n)]

    def _match_side_by_side(self, q: Keyframe, group: list[Keyframe]) -> list[np.ndarray]:
        """`matcher.match` of each candidate on its own thread (one round of `_query_groups`, or a loop check's
        lookahead), or in one call."""
        if len(group) < 2 or not self._on_cpu:
            return self.matcher.match(q, group)
        if self._query_pool is None:
            self._query_pool = ThreadPoolExecutor(2, "agnostic_reloc-side")

        def one(c: Keyframe) -> np.ndarray:
            with intra_op_threads(self._threads):
                return self.matcher.match(q, [c])[0]

        return list(self._query_pool.map(one, group))

    def _neighbour_check(self, q: Keyframe) -> relocalize.NeighbourCheck:
        """The relocalizer's check of a candidate pose of query `q`: neighbour support and the refined pose."""
        def check(p: relocalize.CandidatePose):
            found: list = []
            support = self._neighbour_support(q, p.kf_id, p.T_map_cam, p.inlier_rows, pairs_out=found)
            return None if support is None else (*support, self._refined(q, p, found))

        return check

    def _refined(self, q: Keyframe, p: relocalize.CandidatePose, found: list) -> tuple | None:
        """The pose of `p` re-estimated by PnP from its inliers plus the neighbours' projected matches `found`
        ((query row, map point) pairs): more points over more of the image pin down the rotation / translation
        trade-off of a narrow view (ORB-SLAM3 also re-optimizes after its search by projection). Returns
        (T_map_cam [4 x 4], covariance [6 x 6] or None), or None when it does not keep at least as many inliers."""
        if not found or p.inlier_xyz is None:
            return None
        rows = np.concatenate([p.inlier_rows, [r for r, _ in found]])
        xyz = np.concatenate([p.inlier_xyz, np.stack([x for _, x in found])]).astype(np.float64)
        _, first = np.unique(rows, return_index=True)  # one point per query keypoint, the PnP inlier's first
        res = estimate_pnp(q.keypoints.xy[rows[first]], xyz[first], q.K, self.conf["verify"]["pnp_threshold_px"],
                           p.inliers)
        if not res.success or res.num_inliers < p.inliers:
            return None
        return invert_T(res.model), res.covariance

    # ---------------------------------------------------------------- loop-corrected poses
    def correction(self, kf_id: int | None = None) -> np.ndarray:
        """T_corrected_slam [4 x 4] of a keyframe (default: the newest): the transform that moves its SLAM pose
        onto the pose graph's solution over this session's SLAM poses and accepted metric loops. Identity
        before the first loop. The corrected frame is the SLAM frame at the session's first keyframe, or, once a
        loop joins this session to a map loaded with its corrections, that map's corrected frame. Keyframes of
        such a map keep the correction they were saved with (see relocalize.LoopCorrections)."""
        with self.lock:
            if kf_id is None:
                if self._last_kf is None:
                    return np.eye(4)
                kf_id = self._last_kf.id
            return self._corrected(kf_id)

    def corrected_poses(self) -> dict[int, np.ndarray]:
        """Keyframe id -> corrected T_map_cam [4 x 4] (SLAM pose after the pose graph), insertion order."""
        with self.lock:
            return {i: self._corrected(i) @ self._pose_of[i] for i in self._order}

    def stamps(self) -> dict[int, float]:
        """Keyframe id -> stamp (s) of every keyframe in the map."""
        with self.lock:
            return dict(self._stamp_of)

    def _corrected(self, kf_id: int) -> np.ndarray:
        """T_corrected_slam of a keyframe (call under the lock); a pose-graph solve it triggers is timed."""
        n = len(self.corrections.solve_ms)
        T = self.corrections.correction(kf_id, self._stamp_of, self._pose_of)
        if len(self.corrections.solve_ms) > n:
            self.timing.setdefault("reloc_pose_graph", []).append(self.corrections.solve_ms[-1])
        return T
