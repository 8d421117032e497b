"""Replay reports: the side-by-side metrics table, PNG plots (loop_metrics' plot functions) and report.md.

Plots per run: the ground-truth trajectory with the SLAM keyframes (rigidly aligned to it) and the accepted
loops as edges (green true, red false), the loop precision-recall curve and per-stage latency histograms.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from ..types import RunResult

logger = logging.getLogger(__name__)


def _f(x, fmt: str = "{:.3f}") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def summary(results: dict) -> dict[str, str]:
    """Formatted table cells (label -> text) of one results.json."""
    m, t = results.get("metrics") or {}, results.get("timing_ms", {})
    loops, reloc, ate = m.get("loops", {}), m.get("relocalization", {}), m.get("ate", {})
    rows = {
        "loop precision": _f(loops.get("precision")),
        "loop recall": _f(loops.get("recall")),
        # a session without revisits (e.g. queries only) has no recall to give, not a recall of 0
        "loop recall @100% precision": _f(loops.get("recall_at_100p") if loops.get("n_revisit_queries") else None),
        "loops accepted / false": (f"{len(results['loop_closures'])} / {loops['n_false']}" if loops
                                   else f"{len(results['loop_closures'])} / -"),
        "ATE before -> after pose graph (m)": (f"{_f(ate.get('ate_before_m'))} -> {_f(ate.get('ate_after_m'))}"
                                               if ate else "-"),
        "relocalized / queries": f"{len(results['relocalizations'])} / "
                                 f"{len(results['relocalizations']) + len(results['failed_relocalizations'])}",
    }
    for th, v in (reloc.get("success_at") or {}).items():
        rows[f"reloc success {th}"] = _f(v, "{:.2f}")
    for stage in ("extract", "match", "reloc_verify"):
        if stage in t:
            rows[f"{stage} p50 / p90 (ms)"] = f"{t[stage]['p50']:.0f} / {t[stage]['p90']:.0f}"
    rows["rejected messages"] = str(len(results.get("rejected_messages", [])))
    if "wall_s" in results:
        rows["replay wall time (s)"] = f"{results['wall_s']:.0f}"
    return rows


def metrics_table(runs: dict[str, dict]) -> str:
    """Markdown table, one column per run (name -> results.json)."""
    cells = {name: summary(r) for name, r in runs.items()}
    labels = list(dict.fromkeys(k for c in cells.values() for k in c))
    lines = ["| metric | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    lines += [f"| {lab} | " + " | ".join(cells[n].get(lab, "-") for n in runs) + " |" for lab in labels]
    return "\n".join(lines)


def _aligned_positions(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """src positions [N x 3] rigidly aligned (Umeyama, no scale) onto dst [N x 3]."""
    from evo.core.geometry import umeyama_alignment

    if len(src) < 3:
        return src
    R, t, _ = umeyama_alignment(src.T, dst.T, False)
    return src @ R.T + t


def _plane(positions: np.ndarray) -> str:
    """The plot plane spanned by the two axes along which the trajectory extends most."""
    up = int(np.argmin(np.ptp(positions, axis=0))) if len(positions) else 2
    return {0: "yz", 1: "xz", 2: "xy"}[up]


def write_plots(out: str | Path, result: RunResult, plot: dict, prefix: str = "") -> dict[str, str]:
    """trajectory_loops.png, loop_pr_curve.png, latency_hist.png in `out`; returns {kind: file name}.

    plot: from replay.evaluate_run (GT at the event stamps, loop flags, PR curve). A failing plot is
    logged and left out: the numbers matter more.
    """
    from .loops import plot_latency_hist, plot_pr_curve, plot_trajectory_with_loops

    out = Path(out)
    files = {}
    aligned, flags = plot["aligned"], plot["flags"]
    try:
        kfs = sorted(((s, T) for s, T in result.keyframes.values() if s in aligned), key=lambda x: x[0])
        if not kfs:
            raise ValueError("no keyframe has ground truth")
        gt_pos = np.array([aligned[s][:3, 3] for s, _ in kfs])  # keyframes only: no jumps to kidnapped frames
        est = _aligned_positions(np.array([T[:3, 3] for _, T in kfs]), gt_pos)
        stamp_of = {k: s for k, (s, _) in result.keyframes.items()}
        edges = [(aligned[stamp_of[lc.query_id]][:3, 3], aligned[stamp_of[lc.match_id]][:3, 3], bool(f))
                 for lc, f in zip(result.loops, flags) if f is not None]
        name = f"{prefix}trajectory_loops.png"
        plot_trajectory_with_loops(gt_pos, est, edges, out / name, plane=_plane(gt_pos),
                                   title="keyframes: ground truth, SLAM (aligned) and accepted loops")
        files["trajectory"] = name
    except Exception as exc:
        logger.warning("trajectory plot failed: %s", exc)
    try:
        if len(plot["curve"][0]):  # no curve without loops (e.g. a session of queries only)
            name = f"{prefix}loop_pr_curve.png"
            plot_pr_curve({"loops": plot["curve"]}, out / name)
            files["pr_curve"] = name
    except Exception as exc:
        logger.warning("precision-recall plot failed: %s", exc)
    timings = {k: v for k, v in result.timing_ms.items() if len(v)}
    if timings:
        try:
            name = f"{prefix}latency_hist.png"
            plot_latency_hist(timings, out / name)
            files["latency"] = name
        except Exception as exc:
            logger.warning("latency plot failed: %s", exc)
    return files


def plot_grouped_bars(groups: list[str], values: dict[str, list[float | None]], path: str | Path,
                      ylabel: str = "", title: str = "") -> Path:
    """PNG of one bar per series (e.g. matcher mode) in each group (e.g. a segment of a run), the value written on
    top. values: series name -> one value per group (None = not measured: no bar, '-' written). Returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    for name, v in values.items():
        if len(v) != len(groups):
            raise ValueError(f"series {name!r} has {len(v)} values for {len(groups)} groups")
    fig = Figure(figsize=(max(5.0, 2.2 * len(groups)), 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(len(values), 1)
    top = max([x for v in values.values() for x in v if x is not None] + [1.0])
    for k, (name, v) in enumerate(values.items()):
        x = np.arange(len(groups)) - 0.4 + width * (k + 0.5)
        h = [np.nan if y is None else float(y) for y in v]
        ax.bar(x, np.nan_to_num(h), width, label=name)
        for xi, yi in zip(x, h):
            ax.text(xi, (0 if np.isnan(yi) else yi) + 0.01 * top, "-" if np.isnan(yi) else f"{yi:.2f}",
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(np.arange(len(groups)), groups, fontsize=8)
    ax.set(ylabel=ylabel, title=title, ylim=(0, 1.12 * top))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def write_report(out: str | Path, runs: dict[str, tuple[dict, dict[str, str], str]], title: str,
                 intro: str = "", extra_plots: dict[str, str] | None = None) -> Path:
    """report.md in `out`: the metrics table over runs and links to each run's results.json and plots.

    runs: name -> (results.json content, plots {kind: file name}, folder of that run relative to `out`).
    """
    out = Path(out)
    lines = [f"# {title}", ""]
    if intro:
        lines += [intro, ""]
    lines += [metrics_table({n: r for n, (r, _, _) in runs.items()}), ""]
    for name, (results, plots, rel) in runs.items():
        pre = "" if rel in ("", ".") else f"{rel}/"
        lines += [f"## {name}", "", f"- results: [{pre}results.json]({pre}results.json)"]
        bag = results.get("bag", {})
        if bag:
            lines.append(f"- bag: `{bag.get('path')}` ({bag.get('storage')})")
        lines.append(f"- matcher: `{results.get('config', {}).get('engine', {}).get('matcher', '?')}`")
        if results.get("metrics_skipped"):
            lines.append(f"- metrics skipped: {results['metrics_skipped']}")
        else:
            cov = results["metrics"].get("gt_coverage", {})
            lines.append(f"- ground truth: {results['metrics'].get('gt_source')} (keyframes {cov.get('keyframes')}, "
                         f"queries {cov.get('queries')}"
                         + (f", loaded map keyframes {cov['map_keyframes']})" if "map_keyframes" in cov else ")"))
        kf_map = results.get("map") or {}
        if kf_map.get("loaded"):
            lines.append(f"- map loaded: `{kf_map['loaded']}` ({kf_map['loaded_keyframes']} keyframes)")
        if kf_map.get("saved"):
            lines.append(f"- map saved: `{kf_map['saved']}` ({kf_map['saved_keyframes']} keyframes)")
        if results.get("rejected_counts"):
            lines.append(f"- dropped messages by kind: {results['rejected_counts']}")
        for note in results.get("notes", []):
            lines.append(f"- note: {note}")
        lines.append("")
        for kind, file in plots.items():
            lines += [f"![{name} {kind}]({pre}{file})", ""]
    for label, file in (extra_plots or {}).items():
        lines += [f"![{label}]({file})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
