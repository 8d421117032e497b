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

import json
import logging
import math
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .bagio import (CONTRACT_TOPICS, REQUIRED_ROLES, BagMessage, BagReader, header_ns, msg_to_camera, msg_to_cloud,
                    msg_to_image, msg_to_T)
from .contract import MESSAGE_TYPES, ContractError, seconds_to_ns
from .engine import Engine
from .events import EventAssembler
from .metrics import percentiles
from .node_params import NODE_NAME, NODE_PARAMS, engine_conf as node_engine_conf, load_params
from .runner import KeyframeEvent, QueryEvent, RunResult, evaluate, run
from .sync import StampSync

logger = logging.getLogger(__name__)

default_conf = {
    "sync_queue_size": NODE_PARAMS["sync_queue_size"][0],  # the node's parameter: messages kept per sync input
    "sync_slop_s": NODE_PARAMS["sync_slop_s"][0],  # the node's parameter: stamp tolerance (0 = equal stamps)
    "gt_max_dt_s": 0.005,  # ground truth is matched to the nearest stamp within this (s)
}
RESULT_KEYS = ("loop_closures", "relocalizations", "failed_relocalizations", "timing_ms", "metrics")
# names a --remap may use for the node's private query topic, besides the role name and ~/query/image
_QUERY_ALIASES = (f"/{NODE_NAME}/query/image", "query/image")


# ---------------------------------------------------------------------------- configuration
def load_node_config(path: str | os.PathLike) -> tuple[dict, dict]:
    """(engine conf, replay conf) from the node's parameter file (`config/reloc.yaml`), read exactly as the
    node reads it (`node_params.load_params`: unknown parameters are an error naming them). The replay conf
    takes the node's sync_queue_size / sync_slop_s. ValueError for a missing or malformed file."""
    params = load_params(path)
    replay = {k: params[k] for k in ("sync_queue_size", "sync_slop_s") if k in params}
    return node_engine_conf(params), replay


def load_engine_conf(path: str | os.PathLike) -> dict:
    """Engine conf from the node's parameter file (see `load_node_config`)."""
    return load_node_config(path)[0]


def parse_remaps(items: Iterable[str] | None) -> dict[str, str]:
    """`from:=to` items -> {role: bag topic}. `from` is a role (INPUT_TOPICS key, ground_truth, depth) or its
    contract topic name; ValueError for anything else."""
    out: dict[str, str] = {}
    for item in items or ():
        src, sep, dst = item.partition(":=")
        if not sep or not src or not dst:
            raise ValueError(f"--remap '{item}' is not of the form from:=to")
        role = next((r for r, t in CONTRACT_TOPICS.items() if src in (r, t)), None)
        if role is None and src in _QUERY_ALIASES:
            role = "query_image"
        if role is None:
            raise ValueError(f"--remap '{item}': '{src}' is no contract topic (known: "
                             f"{', '.join(sorted(CONTRACT_TOPICS.values()))})")
        out[role] = dst
    return out


def resolve_topics(remaps: dict[str, str] | None = None) -> dict[str, str]:
    """Role -> bag topic after remapping; the query image only when remapped (bags do not carry it)."""
    remaps = remaps or {}
    topics = {r: remaps.get(r, t) for r, t in CONTRACT_TOPICS.items() if r != "query_image" or r in remaps}
    seen: dict[str, str] = {}
    for role, topic in topics.items():
        if topic in seen:
            raise ValueError(f"topic {topic} is mapped to both {seen[topic]} and {role}")
        seen[topic] = role
    return topics


def load_tum(path: str | os.PathLike) -> dict[float, np.ndarray]:
    """TUM trajectory (`stamp tx ty tz qx qy qz qw` rows, # comments) -> stamp (s) -> 4x4 T_world_cam."""
    from .contract import pose_to_T

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"ground-truth file {path} does not exist")
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            v = [float(x) for x in line.replace(",", " ").split()]
            if len(v) != 8:
                raise ValueError(f"{len(v)} values, expected 8 (stamp tx ty tz qx qy qz qw)")
            out[v[0]] = pose_to_T(v[1:4], v[4:8])
        except ValueError as exc:
            raise ValueError(f"{path}:{n}: not a TUM row: {exc}") from None
    if not out:
        raise ValueError(f"ground-truth file {path} holds no poses")
    return out


def align_gt(gt: dict[float, np.ndarray], stamps: Iterable[float], max_dt: float) -> dict[float, np.ndarray]:
    """GT at each of `stamps`: the pose of the nearest GT stamp within max_dt s (stamps without one left out)."""
    gs = np.array(sorted(gt), np.float64)
    out = {}
    if not gs.size:
        return out
    for s in stamps:
        k = int(np.searchsorted(gs, s))
        best = min((j for j in (k - 1, k) if 0 <= j < len(gs)), key=lambda j: abs(gs[j] - s))
        if abs(gs[best] - s) <= max_dt:
            out[s] = gt[float(gs[best])]
    return out


# ---------------------------------------------------------------------------- bag -> events
class BagEvents:
    """Bag messages -> engine events through the node's input path (bagio copies, StampSync, EventAssembler).

    `rejected` records every dropped message {"stamp", "kind", "reason"} (kinds as in the node's counters);
    `gt` collects the bag's ground truth (stamp s -> T_world_cam); `counts` the messages read per role.
    """

    def __init__(self, topics: dict[str, str], sync_queue_size: int = default_conf["sync_queue_size"],
                 sync_slop_s: float = default_conf["sync_slop_s"]) -> None:
        self.role_of = {t: r for r, t in topics.items()}
        self.assembler = EventAssembler()
        slop = seconds_to_ns(float(sync_slop_s))
        self.kf_sync = StampSync(3, self._on_keyframe_set, int(sync_queue_size), slop)
        self.fr_sync = StampSync(2, self._on_frame_set, int(sync_queue_size), slop)
        self.pending: deque[KeyframeEvent | QueryEvent] = deque()
        self.rejected: list[dict] = []
        self.counts: Counter[str] = Counter()
        self.events_out: Counter[str] = Counter()
        self.gt: dict[float, np.ndarray] = {}

    def _reject(self, kind: str, ns: int, reason: str) -> None:
        self.rejected.append({"stamp": ns / 1e9, "kind": kind, "reason": reason})
        logger.debug("dropped %s at %.3f s: %s", kind, ns / 1e9, reason)

    def feed(self, m: BagMessage) -> None:
        """One bag message; completed sets append events to `pending`."""
        role = self.role_of[m.topic]
        self.counts[role] += 1
        if m.error is not None:
            self._reject(role, m.log_ns, m.error)
            return
        msg = m.msg
        if role == "camera_info":
            try:
                cam = msg_to_camera(msg)
            except ContractError as exc:
                self._reject("camera_info", header_ns(msg), str(exc))
                return
            old = self.assembler.camera
            if old is None or not (np.array_equal(old.K, cam.K) and np.array_equal(old.D, cam.D)
                                   and (old.width, old.height, old.model) == (cam.width, cam.height, cam.model)):
                self.assembler.set_camera(cam)
        elif role == "tracking_state":
            if self.assembler.set_tracking_state(msg.data).unknown:
                self._reject("tracking_state", m.log_ns, f"unknown tracking state '{msg.data}' (treated as not "
                                                         f"tracking)")
        elif role == "image":
            ns, img = header_ns(msg), msg_to_image(msg)
            self.kf_sync.add(2, ns, (ns, img))
            self.fr_sync.add(1, ns, (ns, img))
        elif role == "keyframe_keypoints":
            ns = header_ns(msg)
            self.kf_sync.add(0, ns, (ns, msg_to_cloud(msg)))
        elif role == "keyframe_pose":
            ns = header_ns(msg)
            self.kf_sync.add(1, ns, (ns, msg))
        elif role == "frame_keypoints":
            ns = header_ns(msg)
            self.fr_sync.add(0, ns, (ns, msg_to_cloud(msg)))
        elif role == "query_image":
            self._query(header_ns(msg), msg_to_image(msg), None)
        elif role == "ground_truth":
            try:
                self.gt[header_ns(msg) / 1e9] = msg_to_T(msg)
            except ContractError as exc:
                self._reject("ground_truth", header_ns(msg), str(exc))
        # depth: carried by RGB-D bags, not used by the engine yet

    def _on_keyframe_set(self, cloud, pose, image) -> None:
        ns = cloud[0]
        try:
            ev = self.assembler.keyframe(ns, cloud[1], msg_to_T(pose[1]), image[1])
        except ContractError as exc:
            self._reject("keyframe", ns, str(exc))
            return
        self.events_out["keyframes"] += 1
        self.pending.append(ev)

    def _on_frame_set(self, cloud, image) -> None:
        if self.assembler.state.tracking:
            return
        self._query(cloud[0], image[1], cloud[1])

    def _query(self, ns: int, image, cloud) -> None:
        try:
            ev = self.assembler.query(ns, image, cloud)
        except ContractError as exc:
            self._reject("query", ns, str(exc))
            return
        self.events_out["queries"] += 1
        self.pending.append(ev)

    def events(self, reader: BagReader, progress: bool = True, realtime: bool = False
               ) -> Iterator[KeyframeEvent | QueryEvent]:
        """Read the bag and yield events as their sets complete; `realtime` paces reading by log times."""
        from tqdm import tqdm

        topics = list(self.role_of)
        bar = tqdm(total=reader.count(topics), desc="replay", unit="msg", disable=not progress, smoothing=0.1)
        first_ns, t0 = None, time.perf_counter()
        try:
            for m in reader.messages(topics):
                if realtime:
                    first_ns = m.log_ns if first_ns is None else first_ns
                    wait = (m.log_ns - first_ns) / 1e9 - (time.perf_counter() - t0)
                    if wait > 0:
                        time.sleep(wait)
                self.feed(m)
                bar.update()
                if self.pending:
                    bar.set_postfix(keyframes=self.events_out["keyframes"], queries=self.events_out["queries"],
                                    dropped=len(self.rejected), refresh=False)
                while self.pending:
                    yield self.pending.popleft()
        finally:
            bar.close()


# ---------------------------------------------------------------------------- results
def _T(T: np.ndarray | None) -> list | None:
    return None if T is None else np.asarray(T, np.float64).round(9).tolist()


def _clean(x: Any) -> Any:
    """JSON-safe: numpy -> Python, NaN / inf -> None (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer, int)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    return x


def dump_json(obj: Any) -> str:
    """Strict JSON, indented, with lists of numbers (matrix rows, curves) kept on one line."""
    import re

    text = json.dumps(obj, indent=1, allow_nan=False)
    return re.sub(r"\[\s+([^\[\]{}\"]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)


def run_results(result: RunResult, src: BagEvents | None = None) -> dict:
    """The stable part of results.json (everything but metrics) from a run."""
    out = {
        "loop_closures": [{"query_stamp": lc.query_stamp, "match_stamp": lc.match_stamp,
                           "T_match_query": _T(lc.T_match_query), "inliers": int(lc.inliers),
                           "score": float(lc.score), "metric": bool(lc.metric)} for lc in result.loops],
        "relocalizations": [{"stamp": r.stamp, "T_map_cam": _T(r.T_map_cam), "inliers": int(r.inliers),
                             "matched_keyframe_stamps": [result.keyframes[k][0] for k in r.matched_keyframes
                                                         if k in result.keyframes]}
                            for r in result.relocalizations if r.success],
        "failed_relocalizations": [{"stamp": r.stamp, "reason": r.reason} for r in result.relocalizations
                                   if not r.success],
        "timing_ms": {k: percentiles(v) for k, v in result.timing_ms.items() if len(v)},
        "metrics": {},
    }
    rejected = [] if src is None else list(src.rejected)
    rejected += [{"stamp": s, "kind": "engine", "reason": r} for s, r in result.rejected]
    out["rejected_messages"] = rejected
    out["rejected_counts"] = dict(Counter(r["kind"] for r in rejected))
    out["counts"] = {"keyframes": len(result.keyframes), "queries": len(result.relocalizations),
                     "loops": len(result.loops)}
    if src is not None:
        out["counts"]["messages"] = dict(src.counts)
        out["counts"]["sync_unpaired"] = {"keyframe_sync": src.kf_sync.dropped, "frame_sync": src.fr_sync.dropped}
    return out


def evaluate_run(result: RunResult, gt: dict[float, np.ndarray], max_dt: float = default_conf["gt_max_dt_s"]
                 ) -> tuple[dict, dict]:
    """(metrics for results.json, plot data) of a run against GT (stamp -> T_world_cam, any stamps)."""
    from .world_eval import pose_graph_ate

    stamps = [s for s, _ in result.keyframes.values()] + [r.stamp for r in result.relocalizations]
    aligned = align_gt(gt, stamps, max_dt)
    m = evaluate(result, aligned, {"loops": {"missing_gt": "skip"}})
    loops, reloc = m["loops"], m["relocalization"]
    n_kf_gt = sum(s in aligned for s, _ in result.keyframes.values())
    n_q_gt = sum(r.stamp in aligned for r in result.relocalizations)
    try:
        ate = pose_graph_ate(result, aligned)
    except Exception as exc:  # too few or degenerate keyframes for evo's alignment: loops and relocs still count
        ate = {"skipped": f"{type(exc).__name__}: {exc}"}
    metrics = {
        "loops": {k: loops[k] for k in ("precision", "recall", "recall_at_100p", "n_loops", "n_true", "n_false",
                                        "n_skipped", "n_revisit_queries", "flags")},
        "relocalization": {k: reloc[k] for k in ("n_queries", "n_localized", "n_no_gt", "success_at",
                                                 "median_trans_err", "median_rot_err_deg", "fail_reasons")
                           if k in reloc},
        "ate": ate,
        "gt_coverage": {"keyframes": f"{n_kf_gt}/{len(result.keyframes)}",
                        "queries": f"{n_q_gt}/{len(result.relocalizations)}", "max_dt_s": max_dt},
    }
    metrics["loops"]["pr_curve"] = {"thresholds": loops["thresholds"], "precision": loops["curve_precision"],
                                    "recall": loops["curve_recall"]}
    plot = {"aligned": aligned, "flags": loops["flags"],
            "curve": (np.asarray(loops["curve_precision"]), np.asarray(loops["curve_recall"]))}
    return metrics, plot


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)


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
        _check_out(out)
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
    results["config"] = {"engine": {k: (list(v) if isinstance(v, tuple) else v) for k, v in engine.conf.items()},
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
    rep = Replay(_clean(results), result, plot)
    if out is not None:
        (out / "results.json").write_text(dump_json(rep.results))
        if report:
            from .report import write_plots, write_report

            rep.plots = write_plots(out, result, plot) if plot is not None else {}
            write_report(out, {rep.results["config"]["engine"]["matcher"]: (rep.results, rep.plots, ".")},
                         title=f"Replay of {Path(bag).name}")
    return rep


# ---------------------------------------------------------------------------- demo
DEMO_MODES = {"learned": "lightglue", "classic": "nn"}


def run_demo(out: str | os.PathLike = "demo_out", frames: int | None = None, seed: int = 0,
             progress: bool = True, device: str = "auto") -> dict[str, dict]:
    """World-generator bag -> replay in both matcher modes -> report.md (both modes) in `out`, results.json
    and plots per mode in out/learned and out/classic. Returns {mode: results}. The bag is out/bag (a bag
    left there by an earlier demo is replaced)."""
    import shutil

    from .bagio import make_bag
    from .loop_metrics import plot_pr_curve
    from .report import write_report

    out = Path(out)
    _check_out(out)
    bag = out / "bag"
    if bag.exists():
        if not (bag / "metadata.yaml").is_file():
            raise ValueError(f"{bag} exists and is not a bag; move it away or choose another --out")
        shutil.rmtree(bag)
    t0 = time.perf_counter()
    info = make_bag(bag, seed=seed, frames=frames, profile="mixed", small=True, progress=progress)
    print(f"bag {bag}: {info['frames']} frames, {info['keyframes']} keyframes, {info['queries']} lost frames "
          f"({info['image_size'][0]}x{info['image_size'][1]}), {time.perf_counter() - t0:.0f} s")
    runs, curves = {}, {}
    for name, matcher in DEMO_MODES.items():
        rep = replay(bag, out / name, {"matcher": matcher, "device": device}, progress=progress)
        runs[name] = (rep.results, rep.plots, name)
        if rep.plot is not None:
            curves[name] = rep.plot["curve"]
    extra = {}
    try:
        plot_pr_curve(curves, out / "loop_pr_curve.png", title="Loop detection: learned vs classic")
        extra["precision-recall, both modes"] = "loop_pr_curve.png"
    except Exception as exc:  # the numbers matter more than the plot
        logger.warning("plot failed: %s", exc)
    intro = (f"World-generator bag `{bag}` (seed {seed}, mixed profile: two laps + kidnapped segments; "
             f"{info['frames']} frames, {info['keyframes']} keyframes, {info['queries']} lost frames) replayed "
             f"with the learned matcher (ALIKED + LightGlue) and the classic one (ORB + Hamming NN). "
             f"Total time {time.perf_counter() - t0:.0f} s.")
    write_report(out, runs, "agnostic-reloc demo: learned vs classic", intro, extra)
    return {name: r for name, (r, _, _) in runs.items()}
