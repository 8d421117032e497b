"""Drive the engine from a stream of SLAM events and collect the results (`eval.runs` evaluates them).

The same events come from the ground-truth world generator (`events_from_sequence`) and, in the
replay tool, from a bag, so every driver produces identical results for identical input.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Iterable, Iterator

from tqdm import tqdm

from ..types import Keyframe, KeyframeEvent, LoopClosure, QueryEvent, Relocalization, RunResult
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
        kf = _insert(engine, ev, result)
        if kf is not None:
            result.loops.extend(engine.detect_loops(kf))
        return None
    try:
        rel = engine.relocalize(ev.stamp, ev.image, ev.K, ev.keypoints)
    except ValueError as exc:
        result.rejected.append((ev.stamp, str(exc)))
        rel = Relocalization(ev.stamp, False, reason=f"bad query: {exc}")
    result.relocalizations.append(rel)
    return rel


def _insert(engine: Engine, ev: KeyframeEvent, result: RunResult) -> Keyframe | None:
    """Describe and store a keyframe (None, with the reason in `result.rejected`, when it is malformed)."""
    try:
        kf = engine.make_keyframe_from(ev)
    except ValueError as exc:
        result.rejected.append((ev.stamp, str(exc)))
        logger.warning("keyframe at %.3f rejected: %s", ev.stamp, exc)
        return None
    engine.insert_keyframe(kf)
    result.keyframes[kf.id] = (kf.stamp, kf.T_map_cam)
    return kf


def run(engine: Engine, events: Iterable[KeyframeEvent | QueryEvent], progress: bool = True,
        total: int | None = None, pipelined: bool = True) -> RunResult:
    """Feed events to the engine in order (`step`); malformed keyframes are rejected with their reason.

    pipelined: loop checks run on a second thread behind keyframe extraction (as in the node's worker, and as
    ORB-SLAM3's LoopClosing runs beside its LocalMapping), so the two stages overlap on two cores. A loop check
    never looks at keyframes newer than its query and a relocalization query waits until every earlier keyframe
    is checked, so the results are exactly those of the serial order (pipelined=False).
    """
    result = RunResult()
    checker = LoopChecker(engine, result) if pipelined else None
    try:
        for ev in tqdm(events, desc="events", total=total, disable=not progress):
            if checker is None:
                step(engine, ev, result)
            elif isinstance(ev, KeyframeEvent):
                kf = _insert(engine, ev, result)
                if kf is not None:
                    checker.submit(kf)
            else:
                checker.wait()  # the query sees the map, loops and corrections of the serial order
                step(engine, ev, result)
    finally:
        if checker is not None:
            checker.close()
    result.timing_ms = {k: list(v) for k, v in engine.timing.items()}
    return result


class LoopChecker:
    """`Engine.detect_loops` of inserted keyframes on a background thread, in insertion order; loops go to
    `result.loops`. An exception in a check is raised again by the next `wait` or `close`."""

    def __init__(self, engine: Engine, result: RunResult) -> None:
        self.engine, self.result = engine, result
        self.queue: queue.Queue[Keyframe | None] = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="agnostic_reloc-loops", daemon=True)
        self.thread.start()
        engine.loop_stage_idle = self.idle  # keyframes may then use two threads (features.parallel_levels)

    def idle(self) -> bool:
        """No keyframe waits for or is in a check (a hint, read without a lock)."""
        return self.queue.unfinished_tasks == 0

    def submit(self, kf: Keyframe) -> None:
        self._raise()
        self.queue.put(kf)

    def wait(self) -> None:
        """Block until every submitted keyframe is checked."""
        self.queue.join()
        self._raise()

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        self.engine.loop_stage_idle = None
        self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def _run(self) -> None:
        while True:
            kf = self.queue.get()
            try:
                if kf is None:
                    return
                if self.error is None:  # after a failure the rest is drained unchecked
                    self.result.loops.extend(self.engine.detect_loops(kf))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                self.error = exc
            finally:
                self.queue.task_done()
