"""Could retrieval decide which keyframes need verification? A study for the CPU budget (issue 14), not a feature.

Every keyframe is a loop query today, so every keyframe is described octave-aware (80 % of the CPU time) and
verified against up to K candidates, most of which are no revisit. ORB-SLAM3 gates its BoW candidates by the
query's similarity to its own covisible keyframes (a candidate must score at least the lowest of those). This
script measures such a gate on world sequences with night revisits (benchmarks/world_difficulty.py levels):
for every retrieved candidate (after the engine's candidate exclusion), its global-descriptor similarity s, the
query's reference r = min similarity to its recent predecessors, and whether the candidate is a true revisit
(ground truth within 1 m / 30 deg). Printed: for gate ratios g, the share of true revisit candidates kept
(s >= g r) and of verifications skipped. Global descriptors both as shipped (pooled octave-aware ALIKED) and
from one cheap map (the image at pyramid level 2, 0.48x the pixels) to see whether a cheap descriptor ranks as
well.

    .venv/bin/python benchmarks/retrieval_gate.py --levels 0 5 --out benchmarks/results/retrieval_gate
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from world_difficulty import LEVELS

from agnostic_reloc.geometry import rotation_angle_deg
from agnostic_reloc.loop.engine import Engine
from agnostic_reloc.loop.retrieval import global_descriptor
from agnostic_reloc.world import make_sequence

# lap-2 lighting per difficulty level of the sibling script benchmarks/world_difficulty.py (scripts run from the
# repository root as `python benchmarks/<script>.py`, so their folder is on sys.path)
LEVEL_LIGHTING = {level: c["lap2_lighting"] for level, c in LEVELS.items()}


def is_revisit(f, g) -> bool:
    """Ground truth of the gate studies: frames f, g within 1 m and 30 deg of each other (world poses)."""
    return bool(np.linalg.norm(f.T_world_cam[:3, 3] - g.T_world_cam[:3, 3]) <= 1.0
                and rotation_angle_deg(f.T_world_cam[:3, :3].T @ g.T_world_cam[:3, :3]) <= 30.0)


def study_args(description: str, default_out: str) -> tuple[argparse.Namespace, Path]:
    """The gate studies' command line (--out, --levels, --seed, --frames-per-lap); 2 threads; the output folder."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", default=default_out)
    ap.add_argument("--levels", type=int, nargs="+", default=[0, 5], choices=sorted(LEVEL_LIGHTING))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames-per-lap", type=int, default=60)
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return args, out


def cheap_global(engine: Engine, image: np.ndarray, kf) -> np.ndarray:
    """Global descriptor from ALIKED sampled at the keypoints on the level-2 map only (one small dense map)."""
    import copy

    import cv2

    h, w = image.shape[:2]
    s = 1.2 ** 2
    small = cv2.resize(image, (round(w / s), round(h / s)), interpolation=cv2.INTER_LINEAR)
    kp = copy.deepcopy(kf.keypoints.subset(kf.kept))
    kp.xy = (kp.xy * np.array([(small.shape[1] - 1) / (w - 1), (small.shape[0] - 1) / (h - 1)])).astype(np.float32)
    desc = engine.pipe.aliked.describe([small], [kp], sampling="full")[0]
    return global_descriptor(desc.float().cpu().numpy(), kf.keypoints.xy[kf.kept], kf.image_size)


def study(level: int, seed: int, frames_per_lap: int) -> dict:
    conf = {"keep_depth": False, "trajectory": {"frames_per_lap": frames_per_lap,
                                                "lap2_lighting": LEVEL_LIGHTING[level]}}
    seq = make_sequence(seed=seed, profile="loop", conf=conf, progress=True)
    engine = Engine({"device": "cpu"})
    frames = [f for f in seq.frames if f.is_keyframe and f.tracking_state == "OK"]
    cheap = {}
    rows = []
    for f in frames:
        kf = engine.make_keyframe(f.stamp, f.image, f.keypoints, f.T_map_cam, seq.K, f.map_points, f.map_point_ids)
        cheap[kf.id] = cheap_global(engine, f.image, kf)
        engine.insert_keyframe(kf)
        hood = engine.neighbourhood.group(kf)
        recent = hood[0]
        if not recent:
            continue
        cand = engine._candidates(kf, hood)
        for name, vec in (("shipped", lambda i: engine.map.get(i).global_desc), ("cheap", cheap.get)):
            ref = min(float(vec(kf.id) @ vec(i)) for i in recent)
            for i in cand:
                g = frames[i]
                true = is_revisit(f, g) and g.lap < f.lap
                rows.append({"descriptor": name, "query": kf.id, "cand": i, "lap": f.lap, "s": float(vec(kf.id) @ vec(i)),
                             "ref": ref, "true": bool(true)})
    out = {}
    for name in ("shipped", "cheap"):
        r = [x for x in rows if x["descriptor"] == name]
        ratio = np.array([x["s"] / max(x["ref"], 1e-6) for x in r])
        true = np.array([x["true"] for x in r])
        out[name] = {f"g={g:.2f}": {"true_kept": round(float((ratio[true] >= g).mean()), 3) if true.any() else None,
                                    "verifications_skipped": round(float((ratio < g).mean()), 3)}
                     for g in (0.6, 0.7, 0.8, 0.9, 1.0)}
        out[name]["candidates"], out[name]["true_candidates"] = int(len(r)), int(true.sum())
    return out


def main() -> None:
    args, out = study_args(__doc__.split("\n")[0], "retrieval_gate_out")
    report = {"seed": args.seed, "frames_per_lap": args.frames_per_lap, "levels": {}}
    for level in args.levels:
        report["levels"][level] = res = study(level, args.seed, args.frames_per_lap)
        for name, r in res.items():
            print(f"\nlevel {level}, {name} global descriptor: {r['true_candidates']} true of {r['candidates']} "
                  f"retrieved candidates")
            for g, v in r.items():
                if g.startswith("g="):
                    print(f"  gate {g}: true revisit candidates kept {v['true_kept']}, verifications skipped "
                          f"{v['verifications_skipped']}")
        (out / "retrieval_gate.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
