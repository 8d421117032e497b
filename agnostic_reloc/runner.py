"""Drive the engine from a stream of SLAM events and collect results; evaluate them against ground truth.

The same events come from the ground-truth world generator (`events_from_sequence`) and, in the
replay tool, from a bag, so every driver produces identical results for identical input.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from .engine import Engine, LoopClosure, Relocalization
from .features.keypoints import Keypoints
from .geometry import invert_T

logger = logging.getLogger(__name__)


@dataclass
class KeyframeEvent:
    """A SLAM keyframe: keypoints in SLAM order, T_map_cam (camera-to-map), optional map points."""

    stamp: float
    image: np.ndarray
    keypoints: Keypoints
    T_map_cam: np.ndarray
    K: np.ndarray
    map_points: np.ndarray | None = None
    map_point_ids: np.ndarray | None = None
    kf_id: int | None = None


@dataclass
class QueryEvent:
    """A frame to relocalize (tracking lost); keypoints None -> detected with the configured detector."""

    stamp: float
    image: np.ndarray
    K: np.ndarray
    keypoints: Keypoints | None = None


@dataclass
class RunResult:
    loops: list[LoopClosure] = field(default_factory=list)
    relocalizations: list[Relocalization] = field(default_factory=list)
    keyframes: dict[int, tuple[float, np.ndarray]] = field(default_factory=dict)  # id -> (stamp, T_map_cam)
    rejected: list[tuple[float, str]] = field(default_factory=list)  # (stamp, reason) of malformed input
    timing_ms: dict[str, list[float]] = field(default_factory=dict)


def events_from_sequence(seq) -> Iterator[KeyframeEvent | QueryEvent]:
    """World-generator sequence -> events: keyframes while tracking is OK, queries while it is lost."""
    for f in seq.frames:
        if f.tracking_state != "OK" or f.T_map_cam is None:
            if f.kidnapped or f.tracking_state in ("LOST", "RECENTLY_LOST"):
                yield QueryEvent(f.stamp, f.image, seq.K, f.keypoints)
        elif f.is_keyframe:
            yield KeyframeEvent(f.stamp, f.image, f.keypoints, f.T_map_cam, seq.K, f.map_points, f.map_point_ids)


def step(engine: Engine, ev: KeyframeEvent | QueryEvent, result: RunResult) -> LoopClosure | Relocalization | None:
    """Feed one event to the engine and record the outcome in `result`; returns the relocalization of a query
    (success or not) or None for a keyframe. Malformed input is rejected with its reason, never fatal."""
    if isinstance(ev, KeyframeEvent):
        try:
            kf = engine.make_keyframe(ev.stamp, ev.image, ev.keypoints, ev.T_map_cam, ev.K, ev.map_points,
                                      ev.map_point_ids, ev.kf_id)
        except ValueError as exc:
            result.rejected.append((ev.stamp, str(exc)))
            logger.warning("keyframe at %.3f rejected: %s", ev.stamp, exc)
            return None
        engine.insert_keyframe(kf)
        result.keyframes[kf.id] = (kf.stamp, kf.T_map_cam)
        result.loops.extend(engine.detect_loops(kf))
        return None
    try:
        rel = engine.relocalize(ev.stamp, ev.image, ev.K, ev.keypoints)
    except ValueError as exc:
        result.rejected.append((ev.stamp, str(exc)))
        rel = Relocalization(ev.stamp, False, reason=f"bad query: {exc}")
    result.relocalizations.append(rel)
    return rel


def run(engine: Engine, events: Iterable[KeyframeEvent | QueryEvent], progress: bool = True,
        total: int | None = None) -> RunResult:
    """Feed events to the engine in order (`step`); malformed keyframes are rejected with their reason."""
    result = RunResult()
    for ev in tqdm(events, desc="events", total=total, disable=not progress):
        step(engine, ev, result)
    result.timing_ms = {k: list(v) for k, v in engine.timing.items()}
    return result


def evaluate(result: RunResult, gt: dict[float, np.ndarray], conf: dict | None = None) -> dict:
    """Loop and relocalization metrics against ground truth poses (stamp -> T_world_cam).

    Relocalization poses live in the drifting SLAM map frame; each is compared in the local map
    frame of its first matched keyframe: T_map_world = T_map_cam(kf) @ inv(T_world_cam_gt(kf)).
    """
    from .loop_metrics import evaluate_loops, evaluate_relocalization

    conf = conf or {}
    stamps = {kid: s for kid, (s, _) in result.keyframes.items()}
    gt_kf = {kid: gt[s] for kid, s in stamps.items() if s in gt}
    loops = [{"query_id": l.query_id, "match_id": l.match_id, "T_match_query": l.T_match_query, "score": l.score,
              "scale_free": not l.metric} for l in result.loops]
    out = {"loops": evaluate_loops(loops, gt_kf, stamps, conf.get("loops"))}
    recs, T_map_world = [], {}
    for r in result.relocalizations:
        recs.append({"stamp": r.stamp, "T_map_cam": r.T_map_cam if r.success else None, "reason": r.reason})
        if r.success and r.matched_keyframes and r.matched_keyframes[0] in gt_kf:
            kid = r.matched_keyframes[0]
            T_map_world[r.stamp] = result.keyframes[kid][1] @ invert_T(gt_kf[kid])
    queries = {r.stamp: gt[r.stamp] for r in result.relocalizations if r.stamp in gt}
    out["relocalization"] = evaluate_relocalization(recs, queries, T_map_world) if recs else {}
    return out
