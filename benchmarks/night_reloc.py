"""Relocalization of kidnapped frames at night against a daylight map, by lighting level, learned vs classic.

World `kidnap` profile: one daylight mapping lap, then kidnapped segments (the SLAM is LOST) lit in turn by
daylight and the three night levels of `world.NIGHT_LIGHTING` (darker, noisier, more motion blur). Each matcher
mode maps the lap once; the kidnapped frames are then queried under several decision variants on that same map:

  default        the shipped defaults (query-side ALIKED ensemble as a fallback, neighbour check, consecutive
                 confirmation)
  ensemble-always  features.query_ensemble_when always (the ensemble keypoints matched on every query)
  no-ensemble    features.query_ensemble 0 (SLAM keypoints only on the query side)
  no-ambiguity   reloc.ambiguity_ratio 0: no refusal of ambiguous places (aliasing check off)
  no-confirm     reloc.confirm_frames 10: a single candidate without neighbour support is never confirmed by
                 the next frames (only agreeing candidates, a neighbour or strong_inliers publish a pose)
  before         the rule before this study: no ensemble, no neighbour check, no confirmation, no ambiguity check

Success: within 0.5 m / 5 deg of the ground truth; wrong: a published pose off by more than 5 m or 10 deg.
Writes JSON (per seed, mode, variant and level) and a PNG. Usage:

    python benchmarks/night_reloc.py --out bench_out/night_reloc [--seeds 1 2] [--modes learned classic]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

DAY = {"gain": 0.85, "gamma": 1.05, "vignetting": 0.2, "noise_std": 2.5}  # the kidnap profile's daylight
VARIANTS = {  # query-time overrides of the shipped defaults (sections of the engine conf)
    "default": {},
    "ensemble-always": {"features": {"query_ensemble_when": "always"}},
    "no-ensemble": {"features": {"query_ensemble": 0}},
    "no-confirm": {"reloc": {"confirm_frames": 10}},
    "no-ambiguity": {"reloc": {"ambiguity_ratio": 0.0}},
    "before": {"features": {"query_ensemble": 0},
               "reloc": {"neighbour_check": False, "confirm_frames": 10, "ambiguity_ratio": 0.0}},
}
LEVEL_NAMES = ("day", "night 1", "night 2", "night 3")


def run_seed(seed: int, modes: list[str], variants: list[str], conf: dict, progress: bool) -> dict:
    from tqdm import tqdm

    from agnostic_reloc.eval.runs import evaluate
    from agnostic_reloc.loop.engine import PRESETS, Engine
    from agnostic_reloc.loop.runner import events_from_sequence
    from agnostic_reloc.types import KeyframeEvent, RunResult
    from agnostic_reloc.world import make_sequence

    seq = make_sequence(seed=seed, profile="kidnap", conf=conf, progress=False)
    seg_len = conf["trajectory"]["kidnap_segment_len"]
    queries = [f for f in seq.frames if f.kidnapped]
    level = {f.stamp: (rank // seg_len) % len(LEVEL_NAMES) for rank, f in enumerate(queries)}
    gt = {f.stamp: f.T_world_cam for f in seq.frames}
    events = list(events_from_sequence(seq))
    kf_events = [e for e in events if isinstance(e, KeyframeEvent)]
    q_events = [e for e in events if not isinstance(e, KeyframeEvent) and e.stamp in level]
    out = {}
    for mode in modes:
        engine = Engine(PRESETS[mode])
        result = RunResult()
        for ev in tqdm(kf_events, desc=f"seed {seed} {mode}: map", disable=not progress):
            kf = engine.make_keyframe_from(ev)
            engine.insert_keyframe(kf)
            result.keyframes[kf.id] = (kf.stamp, kf.T_map_cam)
        defaults = {s: dict(engine.conf[s]) for s in ("features", "reloc")}
        for variant in variants:
            for section, values in defaults.items():  # in place: the engine's parts hold these dicts
                engine.conf[section].clear()
                engine.conf[section].update({**values, **VARIANTS[variant].get(section, {})})
            engine.relocalizer.reset()
            result.relocalizations, seconds = [], []
            for ev in tqdm(q_events, desc=f"seed {seed} {mode}: {variant}", disable=not progress):
                t0 = time.perf_counter()
                result.relocalizations.append(engine.relocalize(ev.stamp, ev.image, ev.K, ev.keypoints))
                seconds.append(time.perf_counter() - t0)
            m = evaluate(result, gt)["relocalization"]
            per_level = {}
            for lv, name in enumerate(LEVEL_NAMES):
                idx = [i for i, r in enumerate(result.relocalizations) if level[r.stamp] == lv]
                t = np.array([m["trans_err"][i] for i in idx])
                r = np.array([m["rot_err_deg"][i] for i in idx])
                ok = [result.relocalizations[i].success for i in idx]
                reasons: dict[str, int] = {}
                for i in idx:
                    rel = result.relocalizations[i]
                    key = (rel.support if rel.success else rel.reason).split(" (")[0].split(":")[0]
                    reasons[key] = reasons.get(key, 0) + 1
                per_level[name] = {"queries": len(idx), "localized": int(sum(ok)),
                                   "success_0.5m_5deg": int(((t <= 0.5) & (r <= 5)).sum()),
                                   "wrong_5m_10deg": int((np.array(ok) & ~((t <= 5) & (r <= 10))).sum()),
                                   "outcomes": reasons}
            out.setdefault(mode, {})[variant] = {"levels": per_level, "query_s_p50": float(np.median(seconds)),
                                                 "query_s_p90": float(np.percentile(seconds, 90))}
            row = ", ".join(f"{n} {v['success_0.5m_5deg']}/{v['queries']}" + (f" ({v['wrong_5m_10deg']} wrong)"
                                                                             if v["wrong_5m_10deg"] else "")
                            for n, v in per_level.items())
            print(f"seed {seed} {mode:8s} {variant:12s}: {row}; p50 {np.median(seconds):.2f} s", flush=True)
    return out


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    totals: dict[tuple[str, str], np.ndarray] = {}
    for per_seed in results["seeds"].values():
        for mode, variants in per_seed.items():
            for variant, r in variants.items():
                ok = np.array([[r["levels"][n]["success_0.5m_5deg"], r["levels"][n]["queries"]] for n in LEVEL_NAMES])
                totals[(mode, variant)] = totals.get((mode, variant), 0) + ok
    fig, ax = plt.subplots(figsize=(8, 4.2))
    keys = sorted(totals, key=lambda k: (k[0] != "learned", list(VARIANTS).index(k[1])))
    width = 0.8 / len(keys)
    for j, key in enumerate(keys):
        rate = totals[key][:, 0] / np.maximum(totals[key][:, 1], 1)
        ax.bar(np.arange(len(LEVEL_NAMES)) + (j - (len(keys) - 1) / 2) * width, rate, width,
               label=f"{key[0]} / {key[1]}", hatch="//" if key[0] == "classic" else None)
    ax.set_xticks(np.arange(len(LEVEL_NAMES)), LEVEL_NAMES)
    ax.set_ylabel("relocalized within 0.5 m / 5 deg")
    ax.set_ylim(0, 1.05)
    ax.axhline(0.9, color="gray", lw=0.8, ls=":")
    ax.set_title("Kidnapped frames against a daylight map")
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_out/night_reloc")
    ap.add_argument("--seeds", type=int, nargs="*", default=[1, 2], help="world seeds (none: only re-plot)")
    ap.add_argument("--modes", nargs="+", default=["learned", "classic"], choices=["learned", "classic"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--segments", type=int, default=12, help="kidnapped segments per seed (levels in turn)")
    ap.add_argument("--segment-len", type=int, default=3, help="frames per kidnapped segment")
    ap.add_argument("--size", type=int, nargs=2, default=(320, 240), help="image width and height (f scales)")
    ap.add_argument("--kidnap-dist", type=float, default=0.5, help="kidnapped poses within this of a lap-1 pose (m)")
    ap.add_argument("--kidnap-yaw", type=float, default=20.0, help="... and within this yaw of it (deg)")
    args = ap.parse_args()

    from agnostic_reloc.world import NIGHT_LIGHTING

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "night_reloc.json")
    results = json.load(open(path)) if os.path.exists(path) else {"seeds": {}}
    w, h = args.size
    conf = {"keep_depth": False, "camera": {"width": w, "height": h, "f": 500.0 * w / 640},
            "trajectory": {"kidnap_night": (DAY, *NIGHT_LIGHTING),
                           "kidnap_segments": args.segments, "kidnap_segment_len": args.segment_len,
                           "kidnap_max_dist": args.kidnap_dist, "kidnap_max_yaw_deg": args.kidnap_yaw}}
    results["conf"] = conf
    for seed in args.seeds:
        t0 = time.time()
        got = run_seed(seed, args.modes, args.variants, conf, progress=True)
        prev = results["seeds"].get(str(seed), {})
        for mode, variants in got.items():
            prev.setdefault(mode, {}).update(variants)
        results["seeds"][str(seed)] = prev
        with open(path, "w") as f:
            json.dump(results, f, indent=1, default=float)
        print(f"seed {seed}: {time.time() - t0:.0f} s", flush=True)
    print("| mode / variant | " + " | ".join(LEVEL_NAMES) + " | wrong |\n|---|" + "---|" * (len(LEVEL_NAMES) + 1))
    sums: dict[tuple[str, str], dict] = {}
    for per_seed in results["seeds"].values():
        for mode, variants in per_seed.items():
            for variant, r in variants.items():
                s = sums.setdefault((mode, variant), {n: [0, 0] for n in LEVEL_NAMES} | {"wrong": 0})
                for n in LEVEL_NAMES:
                    s[n][0] += r["levels"][n]["success_0.5m_5deg"]
                    s[n][1] += r["levels"][n]["queries"]
                    s["wrong"] += r["levels"][n]["wrong_5m_10deg"]
    for (mode, variant), s in sums.items():
        print(f"| {mode} / {variant} | " + " | ".join(f"{s[n][0]}/{s[n][1]}" for n in LEVEL_NAMES)
              + f" | {s['wrong']} |")
    plot(results, os.path.join(args.out, "night_reloc.png"))
    print(f"wrote {path} and night_reloc.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
