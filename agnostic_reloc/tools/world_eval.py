"""Run the engine on a generated ground-truth sequence in both matcher modes and report side by side.

Learned (ALIKED at the SLAM's ORB keypoints + LightGlue) vs classic (ORB descriptors + Hamming NN),
same keypoints, same retrieval, same geometry and acceptance: loop precision / recall / recall at 100%
precision, relocalization success at three thresholds, ATE before/after pose-graph correction,
per-stage latency. Writes `world_eval.json` and PNG plots.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..conf import deep_update
from ..eval.metrics import percentiles
from ..eval.runs import evaluate
from ..loop.engine import PRESETS, Engine, upgrade_conf
from ..loop.runner import events_from_sequence, run

logger = logging.getLogger(__name__)

MODES = {name: PRESETS[name] for name in ("learned", "classic")}  # side by side: learned vs classic


def pose_graph_ate(result, gt) -> dict:
    """ATE (evo, SE3 alignment) of the SLAM keyframe poses before and after adding the accepted loops.

    gt: a world Sequence, or a mapping stamp (s) -> T_world_cam; keyframes whose stamp it lacks are left out.
    """
    from ..loop.posegraph import ate_rpe, optimize_pose_graph

    if hasattr(gt, "gt_pose"):
        gt = {s: gt.gt_pose(s) for s, _ in result.keyframes.values()}
    order = sorted((k for k in result.keyframes if result.keyframes[k][0] in gt),
                   key=lambda k: result.keyframes[k][0])
    if len(order) < 3:
        return {}
    poses = {k: result.keyframes[k][1] for k in order}
    kept = set(order)
    loops = [(lc.query_id, lc.match_id, lc.T_match_query, lc.covariance) for lc in result.loops
             if lc.metric and lc.query_id in kept and lc.match_id in kept]
    corrected = optimize_pose_graph(poses, order, loops) if loops else poses
    gt = {result.keyframes[k][0]: gt[result.keyframes[k][0]] for k in order}
    before = ate_rpe(gt, {result.keyframes[k][0]: poses[k] for k in order})
    after = ate_rpe(gt, {result.keyframes[k][0]: corrected[k] for k in order})
    return {"ate_before_m": before["ate_rmse"], "ate_after_m": after["ate_rmse"],
            "rpe_trans_before_m": before["rpe_trans_rmse"], "rpe_trans_after_m": after["rpe_trans_rmse"]}


def evaluate_modes(sequence, modes: dict[str, dict] | None = None, engine_conf: dict | None = None,
                   out: str | Path | None = None, progress: bool = True) -> dict:
    """Metrics per mode on one sequence; writes JSON and plots into `out` when given."""
    modes = modes or MODES
    gt = {f.stamp: f.T_world_cam for f in sequence.frames}
    events = list(events_from_sequence(sequence))
    report, curves, timings = {}, {}, {}
    for name, mode_conf in modes.items():
        engine = Engine(deep_update(upgrade_conf(engine_conf), mode_conf))
        result = run(engine, events, progress=progress, total=len(events))
        m = evaluate(result, gt)
        loops, reloc = m["loops"], m["relocalization"]
        report[name] = {
            "loop_precision": loops["precision"], "loop_recall": loops["recall"],
            "loop_recall_at_100p": loops["recall_at_100p"], "loops": loops["n_loops"],
            "false_loops": loops["n_false"], "revisit_queries": loops["n_revisit_queries"],
            "false_loop_details": loops["false_details"],
            "reloc_success": reloc.get("success_at", {}), "reloc_queries": reloc.get("n_queries", 0),
            "reloc_fail_reasons": reloc.get("fail_reasons", {}),
            **pose_graph_ate(result, sequence),
            "timing_ms": {k: percentiles(v) for k, v in result.timing_ms.items()},
        }
        curves[name] = (np.asarray(loops["curve_precision"]), np.asarray(loops["curve_recall"]))
        timings[name] = result.timing_ms
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "world_eval.json").write_text(json.dumps(report, indent=1, default=float))
        try:
            from ..eval.loops import plot_latency_hist, plot_pr_curve

            plot_pr_curve(curves, out / "loop_pr_curve.png")
            for name, timing in timings.items():  # per-keyframe latency by stage
                if timing:
                    plot_latency_hist(timing, out / f"latency_{name}.png")
        except Exception as exc:  # the numbers matter more than the plot
            logger.warning("plot failed: %s", exc)
    return report


def print_report(report: dict) -> None:
    names = list(report)
    rows = [("loop precision", "loop_precision"), ("loop recall", "loop_recall"),
            ("loop recall @100% precision", "loop_recall_at_100p"), ("loops / false", None),
            ("ATE before -> after (m)", None)]
    print("| metric | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for label, key in rows:
        cells = []
        for n in names:
            r = report[n]
            if key:
                cells.append(f"{r[key]:.3f}" if isinstance(r[key], float) else str(r[key]))
            elif label.startswith("loops"):
                cells.append(f"{r['loops']} / {r['false_loops']}")
            else:
                cells.append(f"{r.get('ate_before_m', float('nan')):.3f} -> {r.get('ate_after_m', float('nan')):.3f}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    for th in next(iter(report.values()))["reloc_success"]:
        print(f"| reloc success {th} | " + " | ".join(f"{report[n]['reloc_success'][th]:.2f}" for n in names) + " |")
