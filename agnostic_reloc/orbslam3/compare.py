"""ORB-SLAM3 alone vs ORB-SLAM3 feeding our engine, on the same frames, several runs, side by side.

Each run starts a fresh ORB-SLAM3 (its own loop closing and relocalization on) and drives it through the bridge
with our engine in the loop. The bridge never feeds anything back into ORB-SLAM3, so one run yields both
systems on identical ORB-SLAM3 behaviour (a paired comparison):
  - ORB-SLAM3 alone: its own poses in its first map (its relocalization answers lost frames only there), its
    loop closures / merges (`map_changed()` events; pyorbslam3 does not say which keyframes they joined, so
    they are judged through its final keyframe-trajectory ATE), and that ATE.
  - ORB-SLAM3 + ours: its poses, plus our relocalizations answering the frames it could not place (which also
    anchor the new maps it starts when lost), our loops (true/false against ground truth) through our gtsam pose
    graph, and the keyframe ATE before/after that graph.
Kidnapped frames (the source marks them; see orbslam3/source.py) are judged for both against ground truth, in
the first map around the true place (the map drifts, so it is only locally consistent; see `local_references`),
at 0.25 m/2 deg, 0.5 m/5 deg and 5 m/10 deg.
ORB-SLAM3 is multi-threaded and not deterministic, so every figure is given as mean and std over runs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from ..geometry import invert_T, rotation_angle_deg
from .offline import OfflineRun, run_bridge
from .source import FrameSource

logger = logging.getLogger(__name__)

THRESHOLDS = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))


def _key(t: tuple[float, float]) -> str:
    return f"{t[0]:g}m_{t[1]:g}deg"


def align_first_map(run: OfflineRun) -> np.ndarray | None:
    """T_world_map [4 x 4] from ORB-SLAM3's tracked frames in its first map (not kidnapped) and GT (Umeyama,
    rigid); None with fewer than 3 such frames."""
    from evo.core.geometry import umeyama_alignment

    pairs = [(f.T_map_cam_slam[:3, 3], f.T_world_cam[:3, 3]) for f in run.frames
             if f.epoch == 0 and f.T_map_cam_slam is not None and f.T_world_cam is not None and not f.kidnapped]
    if len(pairs) < 3:
        return None
    x = np.array([p[0] for p in pairs]).T
    y = np.array([p[1] for p in pairs]).T
    R, t, _ = umeyama_alignment(x, y, False)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def local_references(run: OfflineRun, T_world_cam: np.ndarray, max_dist: float = 1.5, max_angle: float = 30.0
                     ) -> list[np.ndarray]:
    """T_world_map of the first-map frames that saw the same place (GT within max_dist m and max_angle deg).

    A drifting map is only locally consistent (a lap-1 and a lap-2 frame of one place disagree by the drift),
    so a pose in it is judged against the map around the place it claims, not one global alignment."""
    refs = []
    for f in run.frames:
        if f.epoch != 0 or f.T_map_cam_slam is None or f.T_world_cam is None or f.kidnapped:
            continue
        d = invert_T(f.T_world_cam) @ T_world_cam
        if float(np.linalg.norm(d[:3, 3])) <= max_dist and rotation_angle_deg(d) <= max_angle:
            refs.append(f.T_world_cam @ invert_T(f.T_map_cam_slam))
    return refs


def _pose_ok(T_map_est: np.ndarray, T_gt: np.ndarray, refs: list[np.ndarray], dist: float, angle: float) -> bool:
    """Is the map-frame pose right within (dist m, angle deg) against the map around that place?"""
    for T_world_map in refs:
        d = invert_T(T_gt) @ T_world_map @ T_map_est
        if float(np.linalg.norm(d[:3, 3])) <= dist and rotation_angle_deg(d) <= angle:
            return True
    return False


def evaluate_kidnapped(run: OfflineRun, T_world_map: np.ndarray | None) -> dict:
    """Relocalization success on the kidnapped frames, ORB-SLAM3 alone vs with our engine.

    Each answered pose is judged against the first map around the true place (`local_references`); with no
    first-map frame there, against the global rigid alignment T_world_map."""
    kid = [f for f in run.frames if f.kidnapped and f.T_world_cam is not None]
    out = {"n_kidnapped": len(kid)}
    if not kid or T_world_map is None:
        out["skipped"] = "no kidnapped frames with ground truth" if not kid else "first map could not be aligned"
        return out
    refs = {id(f): local_references(run, f.T_world_cam) or [T_world_map] for f in kid}
    for name, pick in (("orbslam3", lambda f: f.T_map_cam_slam if f.epoch == 0 else None),
                       ("with_ours", lambda f: f.T_map_cam_slam if f.T_map_cam_slam is not None else f.T_map_cam_reloc)):
        answered = [(pick(f), f) for f in kid if pick(f) is not None]
        res = {"answered": len(answered)}
        res["success_at"] = {_key(t): sum(_pose_ok(T, f.T_world_cam, refs[id(f)], *t) for T, f in answered) / len(kid)
                             for t in THRESHOLDS}
        out[name] = res
    out["ours_answered"] = sum(f.T_map_cam_reloc is not None for f in kid)
    return out


def orbslam3_keyframe_ate(run: OfflineRun) -> dict:
    """ATE (evo, rigid alignment) of ORB-SLAM3's own final keyframe trajectory (its current map only)."""
    from ..io.tum import align_gt, load_tum
    from ..loop.posegraph import ate_rpe

    path = run.files.get("keyframes_tum")
    if not path or not Path(path).is_file() or Path(path).stat().st_size == 0:
        return {"skipped": "ORB-SLAM3 wrote no keyframe trajectory"}
    est = load_tum(path)
    gt = align_gt(run.gt, est.keys(), 0.005)
    est = {s: T for s, T in est.items() if s in gt}
    if len(est) < 3:
        return {"skipped": f"only {len(est)} ORB-SLAM3 keyframes have ground truth"}
    r = ate_rpe(gt, est)
    return {"ate_m": r["ate_rmse"], "n_keyframes": len(est)}


def evaluate_run_pair(run: OfflineRun) -> dict:
    """All metrics of one run, both systems."""
    from ..eval.runs import evaluate_run
    from ..io.results import run_results

    T_world_map = align_first_map(run)
    out = {"kidnapped": evaluate_kidnapped(run, T_world_map),
           "orbslam3": {"map_changes": run.bridge["map_changes"], "maps": run.bridge["maps"],
                        "keyframe_ate": orbslam3_keyframe_ate(run), "track_ms": run.bridge["track_ms"],
                        "frames_ok": sum(f.state in ("OK", "OK_KLT") for f in run.frames),
                        "frames": len(run.frames)},
           "bridge": {k: run.bridge[k] for k in ("paired_ratio_mean", "pair_err_px_median", "octave_matched_mean",
                                                 "anchored_maps")},
           "wall_s": run.wall_s}
    if run.result is not None:
        res = run_results(run.result)
        metrics, _ = evaluate_run(run.result, run.gt)
        out["ours"] = {"loops": {k: metrics["loops"][k] for k in ("n_loops", "n_true", "n_false", "precision",
                                                                 "recall", "recall_at_100p")},
                       "ate": metrics["ate"], "relocalization": metrics["relocalization"],
                       "timing_ms": res["timing_ms"], "keyframes": len(run.result.keyframes)}
        out["results"] = {**res, "metrics": metrics}
    return out


def _stat(values: list) -> dict:
    v = np.array([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if not len(v):
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std()), "n": int(len(v))}


def summarize(runs: list[dict]) -> dict:
    """Mean / std over runs of the side-by-side figures."""
    def get(r, *path):
        for p in path:
            if not isinstance(r, dict) or p not in r:
                return None
            r = r[p]
        return r

    rows = {
        "ORB-SLAM3 loop/merge events (map_changed)": ([get(r, "orbslam3", "map_changes") for r in runs], None),
        "our loops accepted, true": ([None] * len(runs), [get(r, "ours", "loops", "n_true") for r in runs]),
        "false loops": ([None] * len(runs), [get(r, "ours", "loops", "n_false") for r in runs]),
        "ORB-SLAM3 maps started": ([get(r, "orbslam3", "maps") for r in runs], None),
    }
    for t in THRESHOLDS:
        k = _key(t)
        rows[f"kidnapped frames localized @ {t[0]:g} m / {t[1]:g} deg"] = (
            [get(r, "kidnapped", "orbslam3", "success_at", k) for r in runs],
            [get(r, "kidnapped", "with_ours", "success_at", k) for r in runs])
    rows["keyframe ATE, ORB-SLAM3 final trajectory vs ours after pose graph (m)"] = (
        [get(r, "orbslam3", "keyframe_ate", "ate_m") for r in runs], [get(r, "ours", "ate", "ate_after_m") for r in runs])
    rows["keyframe ATE of the bridge keyframes, online ORB-SLAM3 poses (m)"] = (
        [get(r, "ours", "ate", "ate_before_m") for r in runs], None)
    rows["ORB-SLAM3 tracking p50 (ms/frame)"] = ([get(r, "orbslam3", "track_ms", "p50") for r in runs], None)
    for stage in ("extract", "match", "reloc_verify"):
        rows[f"our {stage} p50 (ms)"] = (None, [get(r, "ours", "timing_ms", stage, "p50") for r in runs])
    out = {}
    for name, (a, b) in rows.items():
        out[name] = {"orbslam3": _stat(a) if a is not None else None, "with_ours": _stat(b) if b is not None else None}
    return out


def _cell(s: dict | None, digits: int = 2) -> str:
    if s is None or s["mean"] is None:
        return "-"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def table_markdown(summary: dict) -> str:
    lines = ["| metric | ORB-SLAM3 alone | ORB-SLAM3 + agnostic_reloc |", "|---|---|---|"]
    for name, s in summary.items():
        d = 0 if "(ms" in name else 3 if "ATE" in name or "@" in name else 1
        lines.append(f"| {name} | {_cell(s['orbslam3'], d)} | {_cell(s['with_ours'], d)} |")
    return "\n".join(lines)


def plot_compare(runs: list[dict], path: str | os.PathLike) -> Path:
    """Bars: kidnapped-frame success at the three thresholds (mean, std over runs) for both systems."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    x = np.arange(len(THRESHOLDS))
    for i, (name, label) in enumerate((("orbslam3", "ORB-SLAM3 alone"), ("with_ours", "ORB-SLAM3 + ours"))):
        vals = [[r["kidnapped"].get(name, {}).get("success_at", {}).get(_key(t), np.nan) for r in runs]
                for t in THRESHOLDS]
        ax.bar(x + (i - 0.5) * 0.38, [np.nanmean(v) for v in vals], 0.38, yerr=[np.nanstd(v) for v in vals],
               label=label, capsize=3)
    ax.set_xticks(x, [f"{d:g} m / {a:g} deg" for d, a in THRESHOLDS])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("kidnapped frames localized")
    ax.set_title(f"Relocalization on kidnapped frames ({len(runs)} runs)")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compare(source: str | os.PathLike, out: str | os.PathLike, runs: int = 3, bridge_conf: dict | None = None,
            engine_conf: dict | None = None, max_frames: int | None = None, keep_bags: bool = False,
            progress: bool = True) -> dict:
    """Run the comparison; writes DIR/compare.json, DIR/report.md, DIR/compare.png and per run DIR/run_<k>/
    (ORB-SLAM3 settings, log, keyframe trajectory, our results.json, and the bridge's bag with keep_bags)."""
    from ..io.results import check_out_dir, dump_json, to_jsonable

    if runs < 1:
        raise ValueError(f"--runs must be at least 1, got {runs}")
    out = Path(out)
    check_out_dir(out)
    src = FrameSource(source)
    if not src.has_gt:
        raise ValueError(f"{source} has no ground truth (/ground_truth/pose): the comparison needs it")
    t0 = time.perf_counter()
    per_run = []
    for k in range(runs):
        d = out / f"run_{k}"
        if d.exists() and (d / "results.json").exists():
            import shutil

            shutil.rmtree(d)
        bag = d / "bridge_bag" if keep_bags else None
        run = run_bridge(src, d, bridge_conf, engine_conf, True, bag, max_frames=max_frames, progress=progress)
        ev = evaluate_run_pair(run)
        if "results" in ev:
            (d / "results.json").write_text(dump_json(to_jsonable(ev.pop("results"))))
        per_run.append(ev)
        logger.info("run %d: %s", k, json.dumps(to_jsonable(ev.get("kidnapped")))[:200])
    summary = summarize(per_run)
    info = {"source": str(source), "frames": src.n_frames, "sensor": "rgbd" if src.has_depth else "monocular",
            "vocabulary": per_run and run.bridge["vocabulary"], "runs": runs, "wall_s": time.perf_counter() - t0}
    result = {"info": info, "summary": summary, "runs": per_run}
    (out / "compare.json").write_text(dump_json(to_jsonable(result)))
    plot_compare(per_run, out / "compare.png")
    voc = info["vocabulary"] or {}
    text = ["# ORB-SLAM3 alone vs ORB-SLAM3 + agnostic_reloc\n",
            f"Source `{source}` ({src.n_frames} frames, {info['sensor']}), {runs} runs, "
            f"{info['wall_s']:.0f} s in total. ORB-SLAM3's vocabulary: `{voc.get('path')}` "
            f"({voc.get('words')} words, k={voc.get('k')}, L={voc.get('L')}); a small vocabulary handicaps "
            f"ORB-SLAM3's own loop closing and relocalization, the official ORBvoc.txt has about 1M words.\n",
            table_markdown(summary), "", "![kidnapped-frame relocalization](compare.png)", "",
            "Per-run details, ORB-SLAM3's logs and our results.json: `run_<k>/`."]
    (out / "report.md").write_text("\n".join(text) + "\n")
    return to_jsonable(result)
