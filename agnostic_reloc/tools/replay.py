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

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..eval.runs import GT_MAX_DT_S, evaluate_run
from ..io.bag_events import BagEvents
from ..io.bags import REQUIRED_ROLES, BagReader
from ..io.contract import MESSAGE_TYPES
from ..io.params import NODE_PARAMS, resolve_topics
from ..io.results import check_out_dir, dump_json, run_results, to_jsonable
from ..io.tum import load_tum
from ..loop.engine import Engine
from ..loop.runner import run
from ..map.store import KeyframeMap
from ..types import RunResult

logger = logging.getLogger(__name__)

default_conf = {
    "sync_queue_size": NODE_PARAMS["sync_queue_size"][0],  # the node's parameter: messages kept per sync input
    "sync_slop_s": NODE_PARAMS["sync_slop_s"][0],  # the node's parameter: stamp tolerance (0 = equal stamps)
    "gt_max_dt_s": GT_MAX_DT_S,  # ground truth is matched to the nearest stamp within this (s)
}

# a session replayed against a loaded map needs no keyframe topics: its queries are answered by the map
MAP_SESSION_ROLES = ("image", "camera_info")


def _load_map(path: str | os.PathLike) -> KeyframeMap:
    """The map file at `path` (as the node loads map_path); ValueError naming a missing one."""
    if not Path(path).is_file():
        raise ValueError(f"map file {path} does not exist (--map-in takes a file written by --map-out or the "
                         f"node's save_map)")
    kf_map = KeyframeMap.load(path)
    logger.info("loaded map %s: %d keyframes", path, len(kf_map))
    return kf_map


def _check_map_out(path: str | os.PathLike) -> Path:
    """`path` if a map can be saved there at the end (its folder exists, it is no folder); else ValueError."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--map-out {path} is a folder; give a file path")
    if not path.parent.is_dir():
        raise ValueError(f"--map-out {path}: the folder {path.parent} does not exist")
    return path


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
           progress: bool = True, conf: dict | None = None, report: bool = True,
           map_in: str | os.PathLike | None = None, map_out: str | os.PathLike | None = None) -> Replay:
    """Replay `bag` through the engine; writes results.json, and with GT plots and report.md, into `out`.

    map_in: a keyframe map file (written by `map_out` or the node's save_map) loaded before the first message,
    as the node loads `map_path`: this session's keyframes join it, its queries are relocalized against it (with
    a map, a bag without keyframe topics is fine: queries only). Relocalizations against loaded keyframes are
    judged with their ground truth, so the GT (bag topic or `gt_file`) must cover the map's keyframe stamps too;
    loops and ATE are judged over this session's keyframes. map_out: where the map (loaded + this session's
    keyframes, with their loop corrections) is saved at the end, atomically, as the node saves at shutdown (may
    be `map_in`: the file is replaced only once the new one is complete; an empty map is not saved).
    BagError for a bag that is unreadable or lacks required topics; ValueError for bad arguments (remaps,
    GT file, conf), MapFormatError (a ValueError) for a map file that cannot be loaded.
    """
    c = {**default_conf, **(conf or {})}
    unknown = set(c) - set(default_conf)
    if unknown:
        raise ValueError(f"unknown replay options {sorted(unknown)}")
    topics = resolve_topics(remap)
    file_gt = load_tum(gt_file) if gt_file is not None else None  # before the long replay: fail fast
    kf_map = _load_map(map_in) if map_in is not None else None  # before the long replay: fail fast
    map_out = _check_map_out(map_out) if map_out is not None else None
    out = Path(out) if out is not None else None
    if out is not None:
        check_out_dir(out)
    with BagReader(bag) as reader:
        # with a loaded map a session may consist of queries only (a robot lost from the start)
        reader.check(topics, REQUIRED_ROLES if not kf_map else MAP_SESSION_ROLES)
        notes = []
        for role in ("tracking_state", "frame_keypoints"):
            if topics[role] not in reader.topics:
                notes.append(f"the bag has no {topics[role]}: no relocalization queries from tracking loss")
        missing = [topics[r] for r in ("keyframe_keypoints", "keyframe_pose") if topics[r] not in reader.topics]
        if missing:
            notes.append(f"the bag has no {' and no '.join(missing)}: no keyframes, relocalization against the "
                         f"loaded map only")
        for n in notes:
            print(f"note: {n}")
        map_keyframes = {kf.id: (kf.stamp, np.array(kf.T_map_cam)) for kf in kf_map} if kf_map else {}
        engine = Engine(engine_conf or {}, kf_map)
        src = BagEvents({r: t for r, t in topics.items() if t in reader.topics}, c["sync_queue_size"],
                        c["sync_slop_s"])
        t0 = time.perf_counter()
        result = run(engine, src.events(reader, progress, realtime), progress=False)
        wall = time.perf_counter() - t0
        bag_info = {"path": str(Path(bag)), "storage": reader.storage,
                    "topics": {t: {"type": reader.topics[t], "count": reader.counts[t]}
                               for t in sorted(reader.topics)}}
    # relocalizations name loaded keyframes too: their stamps and SLAM poses come from the map
    with_map = dataclasses.replace(result, keyframes={**map_keyframes, **result.keyframes})
    results = run_results(with_map, src)
    results["counts"]["keyframes"] = len(result.keyframes)  # this session's
    results["bag"] = bag_info
    results["map"] = {"loaded": None if map_in is None else str(map_in), "loaded_keyframes": len(map_keyframes),
                      "saved": None, "saved_keyframes": 0}
    if map_out is not None:
        if len(engine.map):
            engine.save_map(str(map_out))
            results["map"].update(saved=str(map_out), saved_keyframes=len(engine.map))
        else:
            notes.append(f"the map is empty: not saved to {map_out}")
            print(f"note: {notes[-1]}")
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
            if not map_keyframes:
                results["metrics"], plot = evaluate_run(result, gt, c["gt_max_dt_s"])
            else:
                # loops and ATE over this session's keyframes (the map's own revisits are no queries of this
                # session); relocalizations in the frame of their matched keyframe, loaded ones included
                results["metrics"], plot = evaluate_run(dataclasses.replace(result, relocalizations=[]), gt,
                                                        c["gt_max_dt_s"])
                m, p = evaluate_run(dataclasses.replace(with_map, loops=[]), gt, c["gt_max_dt_s"])
                results["metrics"]["relocalization"] = m["relocalization"]
                results["metrics"]["gt_coverage"].update(
                    queries=m["gt_coverage"]["queries"],
                    map_keyframes=f"{sum(s in p['aligned'] for s, _ in map_keyframes.values())}/{len(map_keyframes)}")
                plot["aligned"] = p["aligned"]  # every keyframe (loaded and new) and query with GT
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

            rep.plots = write_plots(out, with_map, plot) if plot is not None else {}
            write_report(out, {rep.results["config"]["engine"]["matcher"]["name"]: (rep.results, rep.plots, ".")},
                         title=f"Replay of {Path(bag).name}")
    return rep


