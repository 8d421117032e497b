"""Loop recall at 100% precision vs revisit difficulty, learned vs classic, on the ground-truth world.

Levels 0-3 make lap 2 of the `loop` profile harder in two ways at once, as real revisits are: a larger
viewpoint change (lateral offset, yaw, height) and worse lighting (darker, more gamma, vignetting, noise).
Levels 4-5 keep level 1's viewpoint change (most revisits stay within the strict recall radius) and make the
revisit a night-time one: much darker, motion blur (a robot moving in low light), more noise.
The same sequence is run through both matcher modes (same keypoints, retrieval, geometry and acceptance).
`--ensemble aliked` adds that detector's keypoints to every keyframe (results stored as "<level>+aliked").
Writes JSON (per level, both modes) and a PNG (recall@100%P and false loops vs level). Usage:

    python benchmarks/world_difficulty.py --out bench_out/difficulty [--seed 1] [--levels 0 1 2 3 4 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

LEVELS = {  # lap-2 trajectory and lighting per level (level 0 = the generator's defaults)
    0: {"lap2_offset": (0.2, 0.5), "lap2_yaw_deg": 15.0, "lap2_dz": 0.15,
        "lap2_lighting": {"gain": 0.6, "gamma": 1.2, "vignetting": 0.3, "noise_std": 3.0}},
    1: {"lap2_offset": (0.5, 0.9), "lap2_yaw_deg": 25.0, "lap2_dz": 0.3,
        "lap2_lighting": {"gain": 0.45, "gamma": 1.5, "vignetting": 0.35, "noise_std": 4.0}},
    2: {"lap2_offset": (0.8, 1.2), "lap2_yaw_deg": 32.0, "lap2_dz": 0.4,
        "lap2_lighting": {"gain": 0.35, "gamma": 1.7, "vignetting": 0.4, "noise_std": 5.0}},
    3: {"lap2_offset": (1.0, 1.5), "lap2_yaw_deg": 40.0, "lap2_dz": 0.5,
        "lap2_lighting": {"gain": 0.28, "gamma": 1.9, "vignetting": 0.45, "noise_std": 6.0}},
    4: {"lap2_offset": (0.5, 0.9), "lap2_yaw_deg": 25.0, "lap2_dz": 0.3,
        "lap2_lighting": {"gain": 0.3, "gamma": 1.8, "vignetting": 0.4, "noise_std": 6.0, "blur_px": 5.0}},
    5: {"lap2_offset": (0.5, 0.9), "lap2_yaw_deg": 25.0, "lap2_dz": 0.3,
        "lap2_lighting": {"gain": 0.22, "gamma": 2.1, "vignetting": 0.45, "noise_std": 8.0, "blur_px": 9.0}},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_out/difficulty")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--levels", type=int, nargs="*", default=sorted(LEVELS), help="levels to run (none: only re-plot)")
    ap.add_argument("--frames-per-lap", type=int, default=80)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--ensemble", default=None, help="add this detector's keypoints to every keyframe (e.g. aliked)")
    ap.add_argument("--modes", nargs="+", default=["learned", "classic"], choices=["learned", "classic"],
                    help="matcher modes to run")
    args = ap.parse_args()

    from agnostic_reloc.tools.world_eval import MODES, evaluate_modes
    from agnostic_reloc.world import make_sequence

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "world_difficulty.json")
    results = json.load(open(path)) if os.path.exists(path) else {}
    for level in args.levels:
        t0 = time.time()
        conf = {"keep_depth": False, "trajectory": {"frames_per_lap": args.frames_per_lap, **LEVELS[level]}}
        seq = make_sequence(seed=args.seed, profile="loop", conf=conf, progress=False)
        key = f"{level}+{args.ensemble}" if args.ensemble else str(level)
        engine_conf = {"device": args.device, "features": {"ensemble_detector": args.ensemble}}
        rep = evaluate_modes(seq, {m: MODES[m] for m in args.modes}, engine_conf=engine_conf,
                             out=os.path.join(args.out, f"level{key}"))
        results[key] = {"ensemble": args.ensemble, "conf": LEVELS[level], "seed": args.seed, "frames": len(seq.frames),
                        "keyframes": sum(f.is_keyframe for f in seq.frames), "seconds": time.time() - t0,
                        **{m: {k: r[k] for k in ("loop_precision", "loop_recall", "loop_recall_at_100p", "loops",
                                                 "false_loops", "false_loop_details", "revisit_queries",
                                                 "ate_before_m", "ate_after_m", "timing_ms") if k in r}
                           for m, r in rep.items()}}
        with open(path, "w") as f:
            json.dump(results, f, indent=1, default=float)
        r = results[key]
        print(f"level {key}: " + ", ".join(f"{m} recall@100%P {r[m]['loop_recall_at_100p']:.3f} ({r[m]['loops']} "
                                           f"loops, {r[m]['false_loops']} false)" for m in args.modes)
              + f", {r[args.modes[0]]['revisit_queries']} revisit queries, {time.time() - t0:.0f} s", flush=True)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted(int(k) for k in results if k.isdigit() and all(m in results[k] for m in ("learned", "classic")))
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, style in (("learned", "o-"), ("classic", "s--")):
        ax.plot(levels, [results[str(lv)][mode]["loop_recall_at_100p"] for lv in levels], style,
                label=f"{mode} ({'ALIKED + LightGlue' if mode == 'learned' else 'ORB + Hamming NN'})")
        for lv in levels:
            n = results[str(lv)][mode]["false_loops"]
            if n:
                ax.annotate(f"{n} false", (lv, results[str(lv)][mode]["loop_recall_at_100p"]))
    for k, r in sorted(results.items()):  # ensemble runs ("<level>+<detector>"), learned mode
        if "+" in k and "learned" in r:
            lv, det = k.split("+", 1)
            ax.plot([int(lv)], [r["learned"]["loop_recall_at_100p"]], "^", color="tab:green", ms=9,
                    label=f"learned + {det} ensemble keypoints" if k == min(x for x in results if "+" in x) else None)
    ax.set_xlabel("revisit difficulty level (2-3: viewpoint + lighting, 4-5: night + motion blur)")
    ax.set_ylabel("loop recall at 100% precision")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(levels)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "world_difficulty.png"), dpi=120)
    print(f"wrote {path} and world_difficulty.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
