"""A run's results against ground truth: loop precision / recall and relocalization success.

Works on a `RunResult` from any driver (replay, world evaluation, ORB-SLAM3 bridge); ground truth is
stamp -> T_world_cam, from a world sequence, a bag's ground-truth topic or a TUM file.
"""

from __future__ import annotations

import numpy as np

from ..geometry import invert_T
from ..io.tum import align_gt
from ..types import RunResult

GT_MAX_DT_S = 0.005  # ground truth is matched to the nearest event stamp within this (s)


def loop_records(result: RunResult) -> list[dict]:
    """A run's loops as eval.loops.evaluate_loops takes them (ids, T_match_query, score, scale_free)."""
    return [{"query_id": l.query_id, "match_id": l.match_id, "T_match_query": l.T_match_query, "score": l.score,
             "scale_free": not l.metric} for l in result.loops]


def evaluate(result: RunResult, gt: dict[float, np.ndarray], conf: dict | None = None) -> dict:
    """Loop and relocalization metrics against ground truth poses (stamp -> T_world_cam).

    Relocalization poses live in the drifting SLAM map frame; each is compared in the local map
    frame of its first matched keyframe: T_map_world = T_map_cam(kf) @ inv(T_world_cam_gt(kf)).
    """
    from .loops import evaluate_loops, evaluate_relocalization

    conf = conf or {}
    stamps = {kid: s for kid, (s, _) in result.keyframes.items()}
    gt_kf = {kid: gt[s] for kid, s in stamps.items() if s in gt}
    out = {"loops": evaluate_loops(loop_records(result), gt_kf, stamps, conf.get("loops"))}
    recs, T_map_world = [], {}
    for r in result.relocalizations:
        recs.append({"stamp": r.stamp, "T_map_cam": r.T_map_cam if r.success else None, "reason": r.reason})
        if r.success and r.matched_keyframes and r.matched_keyframes[0] in gt_kf:
            kid = r.matched_keyframes[0]
            T_map_world[r.stamp] = result.keyframes[kid][1] @ invert_T(gt_kf[kid])
    queries = {r.stamp: gt[r.stamp] for r in result.relocalizations if r.stamp in gt}
    out["relocalization"] = evaluate_relocalization(recs, queries, T_map_world) if recs else {}
    return out


def evaluate_run(result: RunResult, gt: dict[float, np.ndarray], max_dt: float = GT_MAX_DT_S
                 ) -> tuple[dict, dict]:
    """(metrics for results.json, plot data) of a run against GT (stamp -> T_world_cam, any stamps)."""
    from ..tools.world_eval import pose_graph_ate

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
