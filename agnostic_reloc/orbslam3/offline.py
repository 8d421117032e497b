"""The bridge offline: frames -> real ORB-SLAM3 -> contract messages -> (bag, and/or our engine in the loop).

The contract messages go through exactly the replay tool's input path (`replay.BagEvents`: the node's decoders,
stamp synchronisers and event assembler), so `agnostic-reloc replay` of the written bag sees what the engine
saw here. With the engine in the loop, each successful relocalization of a frame the bridge published as lost
is answered back (`OrbSlam3Bridge.answer`), which anchors a new ORB-SLAM3 map to the first one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.bag_events import BagEvents
from ..io.bags import BagMessage, BagWriter, frame_messages
from ..io.params import resolve_topics
from ..loop.engine import Engine
from ..loop.runner import step
from ..loop.worker import EngineWorker
from ..types import QueryEvent, RunResult
from .bridge import OrbSlam3Bridge
from .source import FrameSource

logger = logging.getLogger(__name__)


@dataclass
class FrameRecord:
    """Per-frame outcome: stamp (s), ORB-SLAM3 state, what was published, ORB-SLAM3's own pose in the map frame
    (None when lost or in a map not anchored), our relocalization pose (None when none or failed), GT."""

    stamp: float
    state: str
    published_state: str
    epoch: int
    T_map_cam_slam: np.ndarray | None
    T_map_cam_reloc: np.ndarray | None
    T_world_cam: np.ndarray | None
    kidnapped: bool
    is_keyframe: bool


@dataclass
class OfflineRun:
    """What one bridge run produced: per-frame records, the engine's RunResult (None without engine), bridge
    summary, ORB-SLAM3's files, wall time and the bag written (or None)."""

    frames: list[FrameRecord] = field(default_factory=list)
    result: RunResult | None = None
    bridge: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)
    wall_s: float = 0.0
    bag: str | None = None
    gt: dict[float, np.ndarray] = field(default_factory=dict)
    worker: dict = field(default_factory=dict)  # beside=True: the worker's lags, backlog and counts


class _BesideWorker:
    """The engine in the node's `EngineWorker` beside tracking: events in without waiting, results collected into
    `result` (in the order they arrive) and relocalizations handed back to the tracking loop by `answers`."""

    def __init__(self, engine: Engine, result: RunResult, nice: int = 0) -> None:
        self.result = result
        self._answers: queue.SimpleQueue = queue.SimpleQueue()
        self._query_ns: dict[float, int] = {}
        self.max_backlog = 0
        self.worker = EngineWorker(engine, on_loops=lambda loops, kf: result.loops.extend(loops),
                                   on_relocalization=self._relocalized, on_keyframe=self._keyframe,
                                   on_error=self._failed, nice=nice)

    def _failed(self, kind: str, text: str) -> None:
        self.result.rejected.append((float("nan"), f"{kind}: {text}"))

    def _keyframe(self, kf, ev) -> None:
        self.result.keyframes[kf.id] = (kf.stamp, kf.T_map_cam)

    def _relocalized(self, r, q) -> None:
        self.result.relocalizations.append(r)
        if r.success:
            self._answers.put((self._query_ns.get(q.stamp, int(round(q.stamp * 1e9))), r.T_map_cam))

    def submit(self, ev, stamp_ns: int) -> None:
        if isinstance(ev, QueryEvent):
            self._query_ns[ev.stamp] = stamp_ns
            self.worker.submit_query(ev)
        else:
            self.worker.submit_keyframe(ev)
        d = self.worker.depths()
        self.max_backlog = max(self.max_backlog, d["keyframes"] + d["verify"])

    def answers(self) -> list[tuple[int, np.ndarray]]:
        out = []
        while not self._answers.empty():
            out.append(self._answers.get())
        return out

    def finish(self, run: "OfflineRun") -> None:
        """Wait for the backlog, stop, and put each relocalization pose on its frame's record."""
        t = time.perf_counter()
        self.worker.wait_idle()
        self.drain_s = time.perf_counter() - t
        self.worker.stop()
        poses = {r.stamp: r.T_map_cam for r in self.result.relocalizations if r.success}
        for rec in run.frames:
            if rec.T_map_cam_reloc is None and rec.stamp in poses:
                rec.T_map_cam_reloc = poses[rec.stamp]

    def summary(self) -> dict:
        return {"latency_ms": self.worker.latency(), "counts": dict(self.worker.counts),
                "dropped_queries": self.worker.dropped_queries, "max_backlog": self.max_backlog,
                "drain_s": round(self.drain_s, 2)}


def run_bridge(source: str | os.PathLike | FrameSource, out_dir: str | os.PathLike, bridge_conf: dict | None = None,
               engine_conf: dict | None = None, with_engine: bool = True, bag: str | os.PathLike | None = None,
               storage: str = "sqlite3", max_frames: int | None = None, progress: bool = True,
               beside: bool = False, realtime: float = 0.0, nice: int = 0) -> OfflineRun:
    """Run ORB-SLAM3 over `source` through the bridge; optionally our engine in the loop and a contract bag.

    Args:
        source: a bag or sequence folder (see orbslam3/source.py) or an open FrameSource.
        out_dir: ORB-SLAM3's settings, log and keyframe trajectory go here.
        with_engine: run our engine on the bridge's output and answer lost frames with its relocalizations.
        bag: write the bridge's contract messages (plus depth and GT when the source has them) to this new bag.
        beside: run the engine in the node's two-thread worker beside tracking, as on a robot (keyframes and
            queries are handed over without waiting; a relocalization is answered when it arrives); default:
            each event is processed before the next frame is tracked (deterministic results).
        realtime: track each frame no earlier than its stamp after the first, divided by this (1: the camera's
            pace; 0.5: a robot moving at half the speed; 0: as fast as possible).
        nice: with `beside`, the worker threads' lower CPU priority (the node's `nice`).
    """
    from tqdm import tqdm

    src = source if isinstance(source, FrameSource) else FrameSource(source)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bridge = OrbSlam3Bridge(src.camera, bridge_conf, rgbd=src.has_depth, workdir=out_dir)
    engine = Engine(engine_conf or {}) if with_engine else None
    events = BagEvents(resolve_topics()) if with_engine else None
    result = RunResult() if with_engine else None
    stack = contextlib.ExitStack()
    writer = stack.enter_context(BagWriter(bag, storage)) if bag is not None else None
    run = OfflineRun(bag=None if bag is None else str(bag))
    worker = _BesideWorker(engine, result, nice) if (beside and engine is not None) else None
    t0 = time.perf_counter()
    first_ns = None
    total = src.n_frames if max_frames is None else min(src.n_frames, max_frames)
    bar = tqdm(total=total, desc="ORB-SLAM3 bridge", unit="frame", disable=not progress)
    try:
        for n, fr in enumerate(src):
            if max_frames is not None and n >= max_frames:
                break
            first_ns = fr.stamp_ns if first_ns is None else first_ns
            if realtime:
                time.sleep(max(0.0, (fr.stamp_ns - first_ns) / 1e9 / realtime - (time.perf_counter() - t0)))
            if worker is not None:
                for stamp_ns, T in worker.answers():
                    bridge.answer(stamp_ns, T)
            bf = bridge.track(fr.stamp_ns, fr.image, fr.depth if bridge.rgbd else None)
            kf = (bf.T_map_cam, bf.map_points, bf.map_point_ids) if bf.is_keyframe else None
            msgs = frame_messages(fr.stamp_ns, src.camera, bf.published_state, fr.image, bf.keypoints, kf,
                                  fr.depth if src.has_depth else None, fr.T_world_cam)
            if writer is not None:
                for m in msgs:
                    writer.write(m)
            reloc_T = None
            if events is not None:
                for m in msgs:
                    if m.topic in events.role_of:
                        events.feed(BagMessage(m.topic, m.log_ns, m.msg))
                while events.pending:
                    ev = events.pending.popleft()
                    if worker is not None:
                        worker.submit(ev, fr.stamp_ns)
                        continue
                    rel = step(engine, ev, result)
                    if isinstance(ev, QueryEvent) and rel is not None and rel.success:
                        reloc_T = rel.T_map_cam
                        bridge.answer(fr.stamp_ns, rel.T_map_cam)
            if fr.T_world_cam is not None:
                run.gt[fr.stamp_ns / 1e9] = fr.T_world_cam
            run.frames.append(FrameRecord(fr.stamp_ns / 1e9, bf.state, bf.published_state, bf.epoch, bf.T_map_cam,
                                          reloc_T, fr.T_world_cam, fr.kidnapped, bf.is_keyframe))
            bar.update()
            bar.set_postfix(state=bf.state, maps=bridge.epoch + 1, refresh=False)
    finally:
        bar.close()
        stack.close()
        if worker is not None:
            worker.finish(run)
        run.files = bridge.shutdown(out_dir)
    run.wall_s = time.perf_counter() - t0
    run.bridge = bridge.summary()
    if worker is not None:
        run.worker = worker.summary()
    if result is not None:
        result.timing_ms = {k: list(v) for k, v in engine.timing.items()}
        result.rejected.extend((r["stamp"], f"{r['kind']}: {r['reason']}") for r in events.rejected)
        run.result = result
    return run
