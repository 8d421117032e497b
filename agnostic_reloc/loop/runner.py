"""Drive the engine from a stream of SLAM events and collect the results (`eval.runs` evaluates them).

The same events come from the ground-truth world generator (`events_from_sequence`) and, in the
replay tool, from a bag, so every driver produces identical results for identical input.
"""

from __future__ import annotations

import logging
from typing import Iterable, Iterator

from tqdm import tqdm

from ..types import KeyframeEvent, LoopClosure, QueryEvent, Relocalization, RunResult
from .engine import Engine

logger = logging.getLogger(__name__)



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
            kf = engine.make_keyframe_from(ev)
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


