"""Relocalization in front of an aliased place: a poster that hangs twice in the room, both copies mapped.

World `kidnap` profile at 320x240 (the world of `test/loop/test_night_reloc.py`): one daylight mapping lap per
seed, mapped once per matcher mode. Then, per poster of every aliasing pair (`Scene.alias_pairs`: the same photo
on two walls, slightly different crops) and per viewing distance, one query rendered head-on at 1.4 m height
from that distance in front of the poster (the closer, the more of the view the poster fills). Each query is
relocalized alone (no earlier query to confirm it). Outcome per query:

  right    published within 0.5 m / 5 deg of the true pose
  wrong    published off by more than 0.5 m or 5 deg (at the other copy: metres off)
  refused  not published (the reason is kept: ambiguity, too few inliers, unconfirmed, ...)

Writes JSON (per seed, mode, distance and poster: outcome, error, reason or support, poster's share of the view)
and a PNG of the outcomes per distance. Usage:

    python benchmarks/aliased_places.py --out bench_out/aliased_places [--seeds 5 6] [--distances 2.0 1.3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

OUTCOMES = ("right", "wrong", "refused")


def run_seed(seed: int, modes: list[str], distances: list[float], size: tuple[int, int], progress: bool,
             reloc: dict | None = None) -> dict:
    from tqdm import tqdm

    from agnostic_reloc.features.detectors import detect
    from agnostic_reloc.geometry import invert_T, rotation_angle_deg
    from agnostic_reloc.loop.engine import PRESETS, Engine
    from agnostic_reloc.loop.runner import events_from_sequence
    from agnostic_reloc.types import KeyframeEvent
    from agnostic_reloc.world import make_sequence
    from agnostic_reloc.world.render import render
    from agnostic_reloc.world.trajectory import facing_pose

    w, h = size
    conf = {"camera": {"width": w, "height": h, "f": 250.0 * w / 320},
            "trajectory": {"frames_per_lap": 70, "kidnap_segments": 1, "kidnap_segment_len": 1},
            "slam": {"kf_max_dist": 0.6, "kf_max_angle_deg": 20.0, "kf_max_gap": 8}}
    seq = make_sequence(seed=seed, profile="kidnap", conf=conf, progress=False)
    posters = [p for p in seq.scene.planes if p.alias_group >= 0]
    events = [e for e in events_from_sequence(seq) if isinstance(e, KeyframeEvent)]
    out: dict = {}
    for mode in modes:
        engine = Engine({**PRESETS[mode], "device": "cpu", "reloc": reloc or {}})
        keyframes = {}
        for ev in tqdm(events, desc=f"seed {seed} {mode}: map", disable=not progress):
            kf = engine.make_keyframe_from(ev)
            engine.insert_keyframe(kf)
            keyframes[kf.id] = (kf.stamp, kf.T_map_cam)
        for d in distances:
            rows, seconds = [], []
            for n, poster in enumerate(tqdm(posters, desc=f"seed {seed} {mode}: {d} m", disable=not progress)):
                T_world_cam = facing_pose(poster.corners, d)
                image, _, plane_id = render(seq.scene, T_world_cam, seq.K, seq.image_size,
                                            {"gain": 0.9, "noise_std": 2.0})
                engine.relocalizer.reset()  # alone: no earlier query confirms it
                t0 = time.perf_counter()
                r = engine.relocalize(1000.0 + 10 * n, image, seq.K, detect(image, "orb", 1000))
                seconds.append(time.perf_counter() - t0)
                row = {"poster": int(poster.id), "alias_group": int(poster.alias_group),
                       "view_share": float((plane_id == poster.id).mean()), "published": bool(r.success),
                       "why": r.support if r.success else r.reason}
                if r.success:
                    stamp, T_map_kf = keyframes[r.matched_keyframes[0]]
                    T_world_est = invert_T(T_map_kf @ invert_T(seq.gt_pose(stamp))) @ r.T_map_cam
                    delta = invert_T(T_world_cam) @ T_world_est
                    row["trans_err_m"] = float(np.linalg.norm(delta[:3, 3]))
                    row["rot_err_deg"] = float(rotation_angle_deg(delta))
                    ok = row["trans_err_m"] <= 0.5 and row["rot_err_deg"] <= 5.0
                    row["outcome"] = "right" if ok else "wrong"
                else:
                    row["outcome"] = "refused"
                rows.append(row)
            counts = {o: sum(r["outcome"] == o for r in rows) for o in OUTCOMES}
            out.setdefault(mode, {})[str(d)] = {"counts": counts, "queries": rows,
                                                "query_s_p50": float(np.median(seconds))}
            wrong = [f"{r['trans_err_m']:.1f} m ({r['why']})" for r in rows if r["outcome"] == "wrong"]
            print(f"seed {seed} {mode:8s} {d:.1f} m: " + ", ".join(f"{o} {counts[o]}" for o in OUTCOMES)
                  + f" of {len(rows)}; p50 {np.median(seconds):.2f} s" + (f"; wrong: {wrong}" if wrong else ""),
                  flush=True)
    return out


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    totals: dict[tuple[str, str], np.ndarray] = {}
    for per_seed in results["seeds"].values():
        for mode, by_dist in per_seed.items():
            for d, r in by_dist.items():
                totals[(mode, d)] = totals.get((mode, d), 0) + np.array([r["counts"][o] for o in OUTCOMES])
    keys = sorted(totals, key=lambda k: (k[0] != "learned", -float(k[1])))
    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = np.zeros(len(keys))
    for j, (o, color) in enumerate(zip(OUTCOMES, ("tab:green", "tab:red", "tab:gray"))):
        vals = np.array([totals[k][j] for k in keys])
        ax.bar(range(len(keys)), vals, bottom=bottom, color=color, label=o)
        bottom += vals
    ax.set_xticks(range(len(keys)), [f"{m}\n{d} m" for m, d in keys])
    ax.set_ylabel("views of aliased posters")
    ax.set_title("Relocalization in front of a poster that hangs twice")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_out/aliased_places")
    ap.add_argument("--seeds", type=int, nargs="*", default=[5, 6], help="world seeds (none: only re-plot)")
    ap.add_argument("--modes", nargs="+", default=["learned", "classic"], choices=["learned", "classic"])
    ap.add_argument("--distances", type=float, nargs="+", default=[2.0, 1.3],
                    help="camera distance in front of the poster (m)")
    ap.add_argument("--size", type=int, nargs=2, default=(320, 240), help="image width and height (f scales)")
    ap.add_argument("--no-ambiguity-check", action="store_true",
                    help="reloc.ambiguity_ratio 0: the decision before the ambiguity check")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "aliased_places.json")
    results = json.load(open(path)) if os.path.exists(path) else {"seeds": {}}
    for seed in args.seeds:
        reloc = {"ambiguity_ratio": 0.0} if args.no_ambiguity_check else {}
        results["seeds"][str(seed)] = run_seed(seed, args.modes, args.distances, tuple(args.size),
                                               not args.no_progress, reloc)
        results["reloc"] = reloc
        results["size"] = list(args.size)
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
    if not results["seeds"]:
        print("nothing to plot")
        return 1
    plot(results, os.path.join(args.out, "aliased_places.png"))
    print(f"wrote {path} and aliased_places.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
