"""Loop-closure and relocalization evaluation against ground truth, and their plots.

Conventions: T_a_b is a 4x4 float64 rigid transform taking points from frame b to frame a. GT poses are
T_world_cam, estimates T_map_cam (SLAM map frame); the camera looks along its +z axis. A loop dict is
{"query_id", "match_id", "T_match_query" (pose of the query camera in the match camera frame), "score",
optional "scale_free" (bool: only rotation and translation direction are meaningful)}.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np

from agnostic_reloc.eval.metrics import percentiles, relative_pose_error
from agnostic_reloc.geometry import invert_T

LOOP_EVAL_CONF = {
    "revisit_dist": 2.0,  # m, loose place threshold for calling a detected loop TRUE
    "revisit_angle_deg": 45.0,  # deg between viewing directions, loose threshold for TRUE loops
    "recall_dist": 1.0,  # m, strict threshold: queries with such a revisit should find a loop (recall)
    "recall_angle_deg": 30.0,  # deg, strict threshold for the recall denominator
    "min_time_gap": 10.0,  # s, a revisit must be at least this much older than the query
    "max_trans_err": 0.3,  # m, metric loops: |t_est - t_gt| of T_match_query
    "max_rot_err_deg": 5.0,  # deg, rotation error of T_match_query
    "max_dir_err_deg": 10.0,  # deg, scale-free loops: angle between estimated and GT translation directions
    "min_baseline": 0.1,  # m, scale-free loops: direction checked only when |t_gt| is at least this
    "missing_gt": "error",  # loop to/from a keyframe without GT pose or stamp: "error", or "skip" (flag None)
}


def _check_T(T, what: str) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise ValueError(f"{what} must be a finite 4x4 transform, got shape {T.shape}")
    return T


def true_revisits(gt_poses: Mapping[int, np.ndarray], stamps: Mapping[int, float], dist: float = 1.0,
                  angle_deg: float = 30.0, min_time_gap: float = 10.0) -> dict[int, set[int]]:
    """For every keyframe id of gt_poses, the set of earlier keyframes it revisits.

    A revisit of query q is a keyframe m with stamps[m] <= stamps[q] - min_time_gap (s), camera centre
    within `dist` m of q's and viewing direction (camera z axis in the world) within `angle_deg`.
    Thresholds only: no check that the two images share content. Every id of gt_poses needs a stamp.
    """
    if dist < 0 or not 0 <= angle_deg <= 180 or min_time_gap < 0:
        raise ValueError(f"need dist >= 0, 0 <= angle_deg <= 180, min_time_gap >= 0, got {dist}, {angle_deg}, "
                         f"{min_time_gap}")
    ids = list(gt_poses)
    missing = [i for i in ids if i not in stamps]
    if missing:
        raise ValueError(f"keyframes without a stamp: {missing[:10]}")
    if not ids:
        return {}
    T = np.stack([_check_T(gt_poses[i], f"gt_poses[{i}]") for i in ids])
    C, Z = T[:, :3, 3], T[:, :3, 2] / np.linalg.norm(T[:, :3, 2], axis=1, keepdims=True)
    t = np.array([float(stamps[i]) for i in ids])
    cos_min = math.cos(math.radians(angle_deg))
    out: dict[int, set[int]] = {}
    for k, q in enumerate(ids):
        ok = ((t <= t[k] - min_time_gap) & (np.linalg.norm(C - C[k], axis=1) <= dist)
              & (Z @ Z[k] >= cos_min - 1e-12))
        ok[k] = False  # never itself (min_time_gap = 0)
        out[q] = {ids[j] for j in np.flatnonzero(ok)}
    return out


def loop_pose_ok(T_est: np.ndarray, T_gt: np.ndarray, scale_free: bool = False,
                 conf: dict | None = None) -> bool:
    """Whether an estimated T_match_query agrees with the GT one within conf's pose tolerances.

    Metric: rotation error <= max_rot_err_deg and |t_est - t_gt| <= max_trans_err (m). scale_free: rotation
    error and angle between translation directions <= max_dir_err_deg (when |t_gt| >= min_baseline).
    """
    c = {**LOOP_EVAL_CONF, **(conf or {})}
    T_est, T_gt = _check_T(T_est, "T_match_query"), _check_T(T_gt, "T_match_query_gt")
    rot, direction = relative_pose_error(T_est, T_gt)
    if rot > c["max_rot_err_deg"]:
        return False
    if scale_free:
        return bool(np.linalg.norm(T_gt[:3, 3]) < c["min_baseline"] or direction <= c["max_dir_err_deg"])
    return bool(np.linalg.norm(T_est[:3, 3] - T_gt[:3, 3]) <= c["max_trans_err"])


def precision_recall_curve(loops: Sequence[Mapping], flags: Sequence[bool],
                           revisit_queries: Collection[int]) -> dict[str, np.ndarray]:
    """Precision and recall when accepting the loops with score >= threshold, for every distinct score.

    flags[i]: loop i is TRUE; revisit_queries: query ids that have a true revisit (recall denominator).
    Recall counts the revisit queries with at least one accepted TRUE loop. Returns "thresholds"
    (descending), "precision", "recall" arrays [K]; empty arrays when there are no loops.
    """
    if len(loops) != len(flags):
        raise ValueError(f"{len(loops)} loops but {len(flags)} flags")
    if any("score" not in lp or lp["score"] is None for lp in loops):
        raise ValueError("every loop needs a 'score' for the precision-recall curve")
    scores = np.array([float(lp["score"]) for lp in loops], dtype=np.float64)
    if np.any(np.isnan(scores)):
        raise ValueError("loop scores must not be NaN")
    flags_a = np.array([bool(f) for f in flags], dtype=bool)
    revisit = set(revisit_queries)
    thresholds = np.unique(scores)[::-1]
    precision, recall = np.zeros(len(thresholds)), np.zeros(len(thresholds))
    for k, thr in enumerate(thresholds):
        acc = scores >= thr
        precision[k] = flags_a[acc].mean()
        found = {int(loops[i]["query_id"]) for i in np.flatnonzero(acc & flags_a)} & revisit
        recall[k] = len(found) / len(revisit) if revisit else math.nan
    return {"thresholds": thresholds, "precision": precision, "recall": recall}


def recall_at_full_precision(precision: Sequence[float], recall: Sequence[float]) -> float:
    """Highest recall over the curve points with precision 1.0 (0.0 when there is none)."""
    p, r = np.asarray(precision, dtype=np.float64), np.asarray(recall, dtype=np.float64)
    if p.shape != r.shape:
        raise ValueError(f"precision and recall shapes differ: {p.shape} vs {r.shape}")
    ok = (p >= 1.0 - 1e-12) & np.isfinite(r)
    return float(r[ok].max()) if ok.any() else 0.0


def evaluate_loops(loops: Sequence[Mapping], gt_poses: Mapping[int, np.ndarray], stamps: Mapping[int, float],
                   conf: dict | None = None, queries: Collection[int] | None = None) -> dict:
    """Precision / recall of detected loops against GT keyframe poses (T_world_cam) and stamps (s).

    A loop is TRUE when its T_match_query agrees with inv(T_world_match) @ T_world_query (loop_pose_ok;
    per-loop "scale_free" flag): a metric loop with the right relative pose is a correct constraint at any
    distance; a scale-free loop must also join a loose revisit (revisit_dist / revisit_angle_deg /
    min_time_gap), since its direction-only check is weak. Precision = TRUE / all loops (nan without loops); recall = revisit queries
    (strict recall_dist / recall_angle_deg) with at least one TRUE loop / revisit queries (nan without any).
    queries: judge only the loops of these query keyframe ids and the recall over them (a segment of a run, e.g.
    a night part); their revisits may be any keyframe of gt_poses. None = every keyframe.
    Returns precision, recall, recall_at_100p, n_loops, n_true, n_false, n_skipped, n_revisit_queries,
    flags (list of bool, None for a skipped loop), and the curve (thresholds, curve_precision, curve_recall).
    """
    c = {**LOOP_EVAL_CONF, **(conf or {})}
    unknown = set(c) - set(LOOP_EVAL_CONF)
    if unknown:
        raise ValueError(f"unknown loop-eval conf keys {sorted(unknown)}")
    if c["missing_gt"] not in ("error", "skip"):
        raise ValueError(f"missing_gt must be 'error' or 'skip', got {c['missing_gt']!r}")
    gt_ids = {i for i in gt_poses if i in stamps}
    loose = true_revisits({i: gt_poses[i] for i in gt_ids}, stamps, c["revisit_dist"], c["revisit_angle_deg"],
                          c["min_time_gap"])
    strict = true_revisits({i: gt_poses[i] for i in gt_ids}, stamps, c["recall_dist"], c["recall_angle_deg"],
                           c["min_time_gap"])
    revisit_queries = {q for q, ms in strict.items() if ms}
    if queries is not None:
        queries = {int(q) for q in queries}
        revisit_queries &= queries
        loops = [lp for lp in loops if lp.get("query_id") in queries]

    flags: list[bool | None] = []
    false_details: list[dict] = []  # why each false loop is false (GT geometry of the pair, pose error)
    for n, lp in enumerate(loops):
        try:
            q, m, T_est = int(lp["query_id"]), int(lp["match_id"]), lp["T_match_query"]
        except KeyError as e:
            raise ValueError(f"loop {n} lacks {e}") from e
        if q not in gt_ids or m not in gt_ids:
            if c["missing_gt"] == "error":
                raise ValueError(f"loop {n} ({q} -> {m}) refers to a keyframe without GT pose or stamp")
            flags.append(None)
            continue
        T_gt = invert_T(_check_T(gt_poses[m], f"gt_poses[{m}]")) @ _check_T(gt_poses[q], f"gt_poses[{q}]")
        scale_free = bool(lp.get("scale_free", False))
        # a metric loop whose relative pose is right is a correct constraint however far apart the views are;
        # a scale-free one (direction only) must also join a loose revisit
        ok = T_est is not None and loop_pose_ok(T_est, T_gt, scale_free, c) and (not scale_free or m in loose[q])
        flags.append(ok)
        if not ok:
            Zq, Zm = gt_poses[q][:3, 2], gt_poses[m][:3, 2]
            cos = float(Zq @ Zm / (np.linalg.norm(Zq) * np.linalg.norm(Zm)))
            d = {"query_id": q, "match_id": m, "gt_dist_m": float(np.linalg.norm(T_gt[:3, 3])),
                 "gt_angle_deg": math.degrees(math.acos(min(1.0, max(-1.0, cos)))),
                 "reason": "pose error" if T_est is None or not loop_pose_ok(T_est, T_gt, scale_free, c)
                 else "not a revisit"}
            if T_est is not None:
                rot, _ = relative_pose_error(T_est, T_gt)
                d.update(rot_err_deg=float(rot), trans_err_m=float(np.linalg.norm(np.asarray(T_est)[:3, 3] - T_gt[:3, 3])))
            false_details.append(d)

    kept = [i for i, f in enumerate(flags) if f is not None]
    kept_loops, kept_flags = [loops[i] for i in kept], [bool(flags[i]) for i in kept]
    n_true = sum(kept_flags)
    found = {int(lp["query_id"]) for lp, f in zip(kept_loops, kept_flags) if f} & revisit_queries
    if kept_loops:
        curve = precision_recall_curve(kept_loops, kept_flags, revisit_queries)
    else:
        curve = {"thresholds": np.zeros(0), "precision": np.zeros(0), "recall": np.zeros(0)}
    return {
        "precision": n_true / len(kept) if kept else math.nan,
        "recall": len(found) / len(revisit_queries) if revisit_queries else math.nan,
        "recall_at_100p": recall_at_full_precision(curve["precision"], curve["recall"]),
        "n_loops": len(kept),
        "n_true": n_true,
        "n_false": len(kept) - n_true,
        "n_skipped": len(loops) - len(kept),
        "n_revisit_queries": len(revisit_queries),
        "flags": flags,
        "false_details": false_details,
        "thresholds": curve["thresholds"],
        "curve_precision": curve["precision"],
        "curve_recall": curve["recall"],
    }


def _nearest(stamp: float, stamps: np.ndarray, max_dt: float) -> int | None:
    if stamps.size == 0:
        return None
    k = int(np.searchsorted(stamps, stamp))
    best = min((j for j in (k - 1, k) if 0 <= j < len(stamps)), key=lambda j: abs(stamps[j] - stamp))
    return best if abs(stamps[best] - stamp) <= max_dt else None


def evaluate_relocalization(results: Sequence[Mapping], gt: Mapping[float, np.ndarray],
                            T_map_world: np.ndarray | Mapping[float, np.ndarray] | None = None,
                            thresholds: Sequence[tuple[float, float]] = ((0.25, 2), (0.5, 5), (5.0, 10)),
                            max_dt: float = 0.01) -> dict:
    """Relocalization success rates and errors against GT.

    results: one dict per query {"stamp" (s), "T_map_cam" (4x4, or None on failure), "reason" (str)};
    gt: stamp -> T_world_cam, matched to the nearest stamp within max_dt s. T_map_world maps world
    coordinates into the SLAM map frame the estimates are in: None = identity (map frame is the world
    frame), one 4x4 for all queries, or stamp -> 4x4 per query (the map drifts, so the caller gives the
    transform valid at that place, e.g. from an aligned trajectory segment). The estimate in the world is
    inv(T_map_world) @ T_map_cam. Success at (m, deg): translation error <= m and rotation error <= deg;
    rates are over ALL queries with GT (a failed query is a failure); queries without GT are counted in
    n_no_gt and left out. Returns n_queries, n_localized, n_no_gt, success (list of rates, thresholds
    order), success_at ({"0.25m_2deg": rate, ...}), median_trans_err / median_rot_err_deg (over
    localized queries, nan if none), trans_err_pct / rot_err_pct (percentiles over all, inf = failure),
    trans_err / rot_err_deg (per evaluated query), fail_reasons ({reason: count}).
    """
    for m, d in thresholds:
        if not (m > 0 and d > 0):
            raise ValueError(f"thresholds must be (metres > 0, degrees > 0) pairs, got {(m, d)}")
    gt_stamps = np.array(sorted(float(s) for s in gt), dtype=np.float64)
    gt_by = {float(s): T for s, T in gt.items()}
    if isinstance(T_map_world, Mapping):
        tmw_stamps = np.array(sorted(float(s) for s in T_map_world), dtype=np.float64)
        tmw_by = {float(s): T for s, T in T_map_world.items()}
    else:
        fixed = np.eye(4) if T_map_world is None else _check_T(T_map_world, "T_map_world")
        T_world_map_fixed = invert_T(fixed)

    trans, rots, fail_reasons = [], [], {}
    n_no_gt = 0
    for n, r in enumerate(results):
        if "stamp" not in r:
            raise ValueError(f"result {n} lacks 'stamp'")
        s = float(r["stamp"])
        k = _nearest(s, gt_stamps, max_dt)
        if k is None:
            n_no_gt += 1
            continue
        T_gt = _check_T(gt_by[gt_stamps[k]], f"gt[{gt_stamps[k]}]")
        T_est = r.get("T_map_cam")
        if T_est is None:
            trans.append(math.inf)
            rots.append(math.inf)
            reason = str(r.get("reason", "") or "unknown")
            fail_reasons[reason] = fail_reasons.get(reason, 0) + 1
            continue
        T_est = _check_T(T_est, f"result {n} T_map_cam")
        if isinstance(T_map_world, Mapping):
            j = _nearest(s, tmw_stamps, max_dt)
            if j is None:
                raise ValueError(f"no T_map_world within {max_dt} s of stamp {s}")
            T_world_map = invert_T(_check_T(tmw_by[tmw_stamps[j]], f"T_map_world[{tmw_stamps[j]}]"))
        else:
            T_world_map = T_world_map_fixed
        T_w = T_world_map @ T_est
        rot, _ = relative_pose_error(T_w, T_gt)
        trans.append(float(np.linalg.norm(T_w[:3, 3] - T_gt[:3, 3])))
        rots.append(rot)

    t_a, r_a = np.array(trans, dtype=np.float64), np.array(rots, dtype=np.float64)
    n = len(t_a)
    success = [float(np.mean((t_a <= m) & (r_a <= d))) if n else math.nan for m, d in thresholds]
    loc = np.isfinite(t_a)
    return {
        "n_queries": n,
        "n_localized": int(loc.sum()),
        "n_no_gt": n_no_gt,
        "success": success,
        "success_at": {f"{m:g}m_{d:g}deg": v for (m, d), v in zip(thresholds, success)},
        "median_trans_err": float(np.median(t_a[loc])) if loc.any() else math.nan,
        "median_rot_err_deg": float(np.median(r_a[loc])) if loc.any() else math.nan,
        "trans_err_pct": percentiles(t_a) if n else {},
        "rot_err_pct": percentiles(r_a) if n else {},
        "trans_err": t_a.tolist(),
        "rot_err_deg": r_a.tolist(),
        "fail_reasons": fail_reasons,
    }


# ---------------------------------------------------------------- plots (matplotlib Figure + Agg canvas)

def _figure(size=(6.0, 5.0)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def plot_pr_curve(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | os.PathLike,
                  title: str = "Loop detection") -> Path:
    """PNG of precision (y) vs recall (x) for each name -> (precision [K], recall [K]). Returns the path."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for name, (p, r) in curves.items():
        p, r = np.asarray(p, dtype=np.float64), np.asarray(r, dtype=np.float64)
        if p.shape != r.shape:
            raise ValueError(f"curve {name!r}: precision and recall shapes differ: {p.shape} vs {r.shape}")
        o = np.argsort(r, kind="stable")
        ax.plot(r[o], p[o], marker=".", label=f"{name} (R@100%P {recall_at_full_precision(p, r):.2f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


_PLANES = {"xy": (0, 1), "xz": (0, 2), "yz": (1, 2)}


def plot_trajectory_with_loops(gt_positions: np.ndarray | None, est_positions: np.ndarray | None,
                               loops: Sequence[tuple[np.ndarray, np.ndarray, bool]], path: str | os.PathLike,
                               plane: str = "xy", title: str = "") -> Path:
    """Top-down PNG of trajectories [N x 3] (m) with loops as segments query -> match (green TRUE, red false).

    loops: (query position [3], match position [3], is_true), in the frame of the trajectories (e.g. GT).
    plane: "xy" (z up), "xz" (y up/down, camera-style worlds) or "yz". Returns the path.
    """
    if plane not in _PLANES:
        raise ValueError(f"plane must be one of {list(_PLANES)}, got {plane!r}")
    a, b = _PLANES[plane]
    fig = _figure((6.0, 6.0))
    ax = fig.add_subplot(1, 1, 1)
    for pos, style, label in ((gt_positions, "k-", "ground truth"), (est_positions, "b--", "estimate")):
        if pos is None:
            continue
        pos = np.asarray(pos, dtype=np.float64)
        if pos.ndim != 2 or pos.shape[1] != 3:
            raise ValueError(f"{label} positions must be [N x 3], got shape {pos.shape}")
        ax.plot(pos[:, a], pos[:, b], style, lw=1, label=label)
    seen = set()
    for q, m, ok in loops:
        q, m = np.asarray(q, dtype=np.float64).reshape(3), np.asarray(m, dtype=np.float64).reshape(3)
        label = ("true loop" if ok else "false loop") if bool(ok) not in seen else None
        seen.add(bool(ok))
        ax.plot([q[a], m[a]], [q[b], m[b]], "-", color="tab:green" if ok else "tab:red", lw=1.5, label=label)
    ax.set(xlabel=f"{plane[0]} [m]", ylabel=f"{plane[1]} [m]", title=title)
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_latency_hist(timings: Mapping[str, Sequence[float]], path: str | os.PathLike,
                      bins: int = 30) -> Path:
    """PNG with one histogram per stage of its latencies (ms), p50 / p90 marked. Returns the path."""
    if not timings:
        raise ValueError("plot_latency_hist needs at least one stage")
    fig = _figure((6.0, 1.0 + 1.8 * len(timings)))
    for k, (stage, values) in enumerate(timings.items()):
        ax = fig.add_subplot(len(timings), 1, k + 1)
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[np.isfinite(v)]
        if v.size:
            pct = percentiles(v)
            ax.hist(v, bins=bins, color="tab:blue", alpha=0.8)
            for key, ls in (("p50", "-"), ("p90", "--")):
                ax.axvline(pct[key], color="k", ls=ls, lw=1, label=f"{key} {pct[key]:.1f} ms")
            ax.legend(fontsize=7)
        ax.set_title(f"{stage} (n={v.size})", fontsize=9)
        ax.set_xlabel("ms", fontsize=8)
    return _save(fig, path)
