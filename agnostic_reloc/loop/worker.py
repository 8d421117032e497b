"""Engine work off the caller's thread: keyframes are never dropped, relocalization queries are bounded.

Two threads, as ORB-SLAM3 runs LocalMapping beside LoopClosing, so that description and matching overlap on
two cores (each stage with `torch.get_num_threads()` intra-op threads; the node sets half the cores):
  keyframes: extract + insert waiting keyframes, in order (insertion always happens, never waits for a loop
             check);
  loops:     (1) answer the newest relocalization query, (2) check inserted keyframes for loops, oldest first
             (the check may lag behind insertion and catches up when the input pauses).
A loop check never looks at keyframes newer than its query, and takes the query's neighbourhood as it was at
insertion, so a lagging check gives the same loops as an immediate one. Results go to callbacks, called from
the thread that produced them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import Callable

from ..eval.metrics import percentiles
from ..types import Keyframe, KeyframeEvent, LoopClosure, QueryEvent, Relocalization
from .engine import Engine

logger = logging.getLogger(__name__)

ROLES = ("keyframes", "loops")  # the worker's threads (see the module docstring)


class EngineWorker:
    """Bounded-latency driver of an `Engine` on two background threads (see the module docstring)."""

    def __init__(self, engine: Engine, on_loops: Callable[[list[LoopClosure], Keyframe], None] | None = None,
                 on_relocalization: Callable[[Relocalization, QueryEvent], None] | None = None,
                 on_keyframe: Callable[[Keyframe, KeyframeEvent], None] | None = None,
                 on_error: Callable[[str, str], None] | None = None, query_queue_size: int = 2,
                 nice: int = 0) -> None:
        """nice: lower the worker threads' CPU priority by this much (Linux, per thread; threads they start, such
        as a query's matching threads, inherit it), so that the SLAM's tracking sharing the cores goes first."""
        if query_queue_size < 1:
            raise ValueError("query_queue_size must be >= 1")
        if not 0 <= nice <= 19:
            raise ValueError(f"nice must be in [0, 19], got {nice}")
        self.nice = int(nice)
        self.engine = engine
        self.on_loops = on_loops or (lambda loops, kf: None)
        self.on_relocalization = on_relocalization or (lambda r, q: None)
        self.on_keyframe = on_keyframe or (lambda kf, ev: None)
        self.on_error = on_error or (lambda kind, text: None)
        self.query_queue_size = query_queue_size
        self._keyframes: deque[tuple[float, KeyframeEvent]] = deque()
        self._verify: deque[tuple[float, Keyframe]] = deque()
        self._queries: deque[tuple[float, QueryEvent]] = deque()
        self._cv = threading.Condition()
        self._busy: set[str] = set()  # roles running a job now
        self._stop = False
        self._generation = 0  # bumped by clear(): work from before a reset is discarded
        self.dropped_queries = 0
        self.counts = {"keyframes": 0, "loops": 0, "relocalized": 0, "not_relocalized": 0, "errors": 0}
        self.latency_ms: dict[str, deque] = {k: deque(maxlen=2000) for k in ("keyframe", "loop_check", "query")}
        engine.spare_core = self._keyframe_stage_idle  # loop checks may then match ahead (retrieval.lookahead)
        engine.loop_stage_idle = self._loop_stage_idle  # keyframes may then use two threads (parallel_levels)
        self._threads = [threading.Thread(target=self._run, args=(role,), name=f"agnostic_reloc-{role}", daemon=True)
                         for role in ROLES]
        self._started = threading.Barrier(len(ROLES) + 1)  # the threads run (at their priority) once built
        for t in self._threads:
            t.start()
        self._started.wait()

    # ------------------------------------------------------------------ input
    def submit_keyframe(self, event: KeyframeEvent) -> None:
        with self._cv:
            self._keyframes.append((time.perf_counter(), event))
            self._cv.notify_all()

    def submit_query(self, event: QueryEvent) -> bool:
        """Queue a query; when the queue is full the oldest waiting query is dropped (counted). False if so."""
        with self._cv:
            dropped = len(self._queries) >= self.query_queue_size
            if dropped:
                self._queries.popleft()
                self.dropped_queries += 1
            self._queries.append((time.perf_counter(), event))
            self._cv.notify_all()
        return not dropped

    def clear(self) -> None:
        """Discard waiting work (used with Engine.reset); a job already running finishes but is not reported."""
        with self._cv:
            self._keyframes.clear()
            self._verify.clear()
            self._queries.clear()
            self._generation += 1

    # ------------------------------------------------------------------ state
    def depths(self) -> dict[str, int]:
        with self._cv:
            return {"keyframes": len(self._keyframes), "verify": len(self._verify), "queries": len(self._queries)}

    def latency(self) -> dict[str, dict[str, float]]:
        return {k: percentiles(list(v)) for k, v in self.latency_ms.items() if v}

    def _keyframe_stage_idle(self) -> bool:
        """No keyframe waits or is being described (read without the lock: a hint, never a guarantee)."""
        return not self._keyframes and "keyframes" not in self._busy

    def _loop_stage_idle(self) -> bool:
        """No loop check or query waits or runs (read without the lock: a hint, never a guarantee)."""
        return not self._verify and not self._queries and "loops" not in self._busy

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every queue is empty and no thread runs a job; False on timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while self._busy or self._keyframes or self._verify or self._queries:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def stop(self, timeout: float = 30.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))

    # ------------------------------------------------------------------ work
    def _next(self, role: str):
        if role == "keyframes":
            return ("keyframe", self._keyframes.popleft()) if self._keyframes else None
        if self._queries:
            return "query", self._queries.pop()  # newest first: older queries are stale
        if self._verify:
            return "verify", self._verify.popleft()
        return None

    def _lower_priority(self) -> None:
        if not self.nice:
            return
        try:  # on Linux the "process" of setpriority is this thread
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + self.nice))
        except (AttributeError, OSError) as exc:
            logger.warning("could not lower the worker's priority (%s): it competes with tracking as an equal", exc)

    def _run(self, role: str) -> None:
        self._lower_priority()
        self._started.wait()
        while True:
            with self._cv:
                while not self._stop and (job := self._next(role)) is None:
                    self._busy.discard(role)
                    self._cv.notify_all()
                    self._cv.wait()
                if self._stop:
                    self._busy.discard(role)
                    self._cv.notify_all()
                    return
                kind, (t_in, item) = job
                if kind == "query":
                    self.dropped_queries += len(self._queries)  # older queries than the answered one are stale
                    self._queries.clear()
                self._busy.add(role)
                gen = self._generation
            try:
                self._do(kind, t_in, item, gen)
            except Exception as exc:  # never let one bad job stop the worker
                with self._cv:
                    self.counts["errors"] += 1
                logger.exception("%s job failed", kind)
                self.on_error(kind, f"{type(exc).__name__}: {exc}")

    def _do(self, kind: str, t_in: float, item, gen: int) -> None:
        eng = self.engine
        if kind == "keyframe":
            ev: KeyframeEvent = item
            try:
                kf = eng.make_keyframe_from(ev)
            except ValueError as exc:
                self.on_error("keyframe", str(exc))
                return
            with self._cv:
                if gen != self._generation:
                    return
                eng.insert_keyframe(kf)
                self._verify.append((t_in, kf))
                self.counts["keyframes"] += 1
                self._cv.notify_all()
            self.latency_ms["keyframe"].append(1e3 * (time.perf_counter() - t_in))
            self.on_keyframe(kf, ev)
        elif kind == "verify":
            kf: Keyframe = item
            loops = eng.detect_loops(kf)
            self.latency_ms["loop_check"].append(1e3 * (time.perf_counter() - t_in))
            if loops and gen == self._generation:
                self.counts["loops"] += len(loops)
                self.on_loops(loops, kf)
        else:
            q: QueryEvent = item
            try:
                r = eng.relocalize(q.stamp, q.image, q.K, q.keypoints)
            except ValueError as exc:
                r = Relocalization(q.stamp, False, reason=f"bad query: {exc}")
            self.latency_ms["query"].append(1e3 * (time.perf_counter() - t_in))
            if gen == self._generation:
                self.counts["relocalized" if r.success else "not_relocalized"] += 1
                self.on_relocalization(r, q)
