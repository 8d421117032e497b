"""`agnostic-reloc demo`: a world-generator bag replayed in both matcher modes, side-by-side report."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from ..io.results import check_out_dir
from ..loop.engine import preset_conf
from .replay import replay

logger = logging.getLogger(__name__)

DEMO_MODES = ("learned", "classic")  # engine presets (loop.engine.PRESETS), side by side


def run_demo(out: str | os.PathLike = "demo_out", frames: int | None = None, seed: int = 0,
             progress: bool = True, device: str = "auto") -> dict[str, dict]:
    """World-generator bag -> replay in both matcher modes -> report.md (both modes) in `out`, results.json
    and plots per mode in out/learned and out/classic. Returns {mode: results}. The bag is out/bag (a bag
    left there by an earlier demo is replaced)."""
    import shutil

    from ..eval.loops import plot_pr_curve
    from ..eval.report import write_report
    from ..io.bags import make_bag

    out = Path(out)
    check_out_dir(out)
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
    for name in DEMO_MODES:
        rep = replay(bag, out / name, preset_conf(name, {"device": device}), progress=progress)
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
