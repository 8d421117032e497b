"""Replay a rosbag2 bag through the node's own input path, deterministically, and evaluate against ground truth.

Messages go in bag (log-time) order through the pieces the ROS node uses: bagio copies each rosbags message
into the contract's plain types, two `StampSync`s pair them (keyframe: keypoints + pose + image; frame: frame
keypoints + image; equal stamps unless sync_slop_s > 0) and the `EventAssembler` turns sets into keyframe and
query events (a frame becomes a relocalization query while the tracking state is not OK). The events drive the
engine exactly like `runner.run`, as fast as possible, or paced by the log times with `realtime`. Malformed
messages are dropped, counted and recorded, never fatal. Unlike the node, no query is ever dropped for a busy
worker: replay processes every event in order, so two replays of one bag give identical results.

Ground truth: the bag's /ground_truth/pose (T_world_cam) or a TUM file, matched to event stamps within
gt_max_dt_s. With it: loop precision / recall, relocalization success, ATE before / after the pose graph,
plots and report.md (report.py). Output: `results.json` (format in the README).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..eval.runs import GT_MAX_DT_S, evaluate_run
from ..io.bag_events import BagEvents
from ..io.bags import REQUIRED_ROLES, BagReader
from ..io.contract import MESSAGE_TYPES
from ..io.params import NODE_PARAMS, resolve_topics
from ..io.results import check_out_dir, dump_json, run_results, to_jsonable
from ..io.tum import load_tum
from ..loop.engine import Engine
from ..loop.runner import run
from ..types import RunResult

logger = logging.getLogger(__name__)

default_conf = {
    "sync_queue_size": NODE_PARAMS["sync_queue_size"][0],  # the node's parameter: messages kept per sync input
    "sync_slop_s": NODE_PARAMS["sync_slop_s"][0],  # the node's parameter: stamp tolerance (0 = equal stamps)
    "gt_max_dt_s": GT_MAX_DT_S,  # ground truth is matched to the nearest stamp within this (s)
}



@dataclass
class Replay:
    """What `replay` produced: results.json content, the engine's RunResult, plot data (None without GT) and
    the plot files written ({kind: file name in the output folder})."""

    results: dict
    run: RunResult
    plot: dict | None = None
    plots: dict[str, str] = field(default_factory=dict)


def replay(bag: str | os.PathLike, out: str | os.PathLike | None = None, engine_conf: dict | None = None,
           gt_file: str | os.PathLike | None = None, remap: dict[str, str] | None = None, realtime: bool = False,
           progress: bool = True, conf: dict | None = None, report: bool = True) -> Replay:
    """Replay `bag` through the engine; writes results.json, and with GT plots and report.md, into `out`.

    BagError for a bag that is unreadable or lacks required topics; ValueError for bad arguments (remaps,
    GT file, conf).
    """
    c = {**default_conf, **(conf or {})}
    unknown = set(c) - set(default_conf)
    if unknown:
        raise ValueError(f"unknown replay options {sorted(unknown)}")
    topics = resolve_topics(remap)
    file_gt = load_tum(gt_file) if gt_file is not None else None  # before the long replay: fail fast
    out = Path(out) if out is not None else None
    if out is not None:
        check_out_dir(out)
    with BagReader(bag) as reader:
        reader.check(topics, REQUIRED_ROLES)
        notes = []
        for role in ("tracking_state", "frame_keypoints"):
            if topics[role] not in reader.topics:
                notes.append(f"the bag has no {topics[role]}: no relocalization queries from tracking loss")
        for n in notes:
            print(f"note: {n}")
        engine = Engine(engine_conf or {})
        src = BagEvents({r: t for r, t in topics.items() if t in reader.topics}, c["sync_queue_size"],
                        c["sync_slop_s"])
        t0 = time.perf_counter()
        result = run(engine, src.events(reader, progress, realtime), progress=False)
        wall = time.perf_counter() - t0
        bag_info = {"path": str(Path(bag)), "storage": reader.storage,
                    "topics": {t: {"type": reader.topics[t], "count": reader.counts[t]}
                               for t in sorted(reader.topics)}}
    results = run_results(result, src)
    results["bag"] = bag_info
    results["config"] = {"engine": to_jsonable(engine.conf),
                         "replay": c, "topics": topics, "realtime": realtime}
    results["wall_s"] = wall
    results["notes"] = notes
    gt, plot = None, None
    if file_gt is not None:
        gt, source = file_gt, f"file {gt_file}"
    elif src.gt:
        gt, source = src.gt, f"bag topic {topics['ground_truth']}"
    if gt is not None:
        try:
            results["metrics"], plot = evaluate_run(result, gt, c["gt_max_dt_s"])
            results["metrics"]["gt_source"] = source
        except (KeyError, ValueError) as exc:  # e.g. GT that covers too few keyframes
            results["metrics_skipped"] = f"evaluation against the ground truth ({source}) failed: {exc!r}"
    else:
        results["metrics_skipped"] = (f"no ground truth: the bag has no {topics['ground_truth']} "
                                      f"({MESSAGE_TYPES['ground_truth']}, T_world_cam) and no --gt TUM file was given")
    rep = Replay(to_jsonable(results), result, plot)
    if out is not None:
        (out / "results.json").write_text(dump_json(rep.results))
        if report:
            from ..eval.report import write_plots, write_report

            rep.plots = write_plots(out, result, plot) if plot is not None else {}
            write_report(out, {rep.results["config"]["engine"]["matcher"]["name"]: (rep.results, rep.plots, ".")},
                         title=f"Replay of {Path(bag).name}")
    return rep


