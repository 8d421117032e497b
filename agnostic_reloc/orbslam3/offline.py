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
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.bag_events import BagEvents
from ..io.bags import BagMessage, BagWriter, frame_messages
from ..io.params import resolve_topics
from ..loop.engine import Engine
from ..loop.runner import step
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


def run_bridge(source: str | os.PathLike | FrameSource, out_dir: str | os.PathLike, bridge_conf: dict | None = None,
               engine_conf: dict | None = None, with_engine: bool = True, bag: str | os.PathLike | None = None,
               storage: str = "sqlite3", max_frames: int | None = None, progress: bool = True) -> OfflineRun:
    """Run ORB-SLAM3 over `source` through the bridge; optionally our engine in the loop and a contract bag.

    Args:
        source: a bag or sequence folder (see orbslam3/source.py) or an open FrameSource.
        out_dir: ORB-SLAM3's settings, log and keyframe trajectory go here.
        with_engine: run our engine on the bridge's output and answer lost frames with its relocalizations.
        bag: write the bridge's contract messages (plus depth and GT when the source has them) to this new bag.
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
    t0 = time.perf_counter()
    total = src.n_frames if max_frames is None else min(src.n_frames, max_frames)
    bar = tqdm(total=total, desc="ORB-SLAM3 bridge", unit="frame", disable=not progress)
    try:
        for n, fr in enumerate(src):
            if max_frames is not None and n >= max_frames:
                break
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
        run.files = bridge.shutdown(out_dir)
    run.wall_s = time.perf_counter() - t0
    run.bridge = bridge.summary()
    if result is not None:
        result.timing_ms = {k: list(v) for k, v in engine.timing.items()}
        result.rejected.extend((r["stamp"], f"{r['kind']}: {r['reason']}") for r in events.rejected)
        run.result = result
    return run
