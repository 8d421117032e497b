"""Fewer ALIKED maps for the SLAM's 8 pyramid levels: how much CPU they save and what they cost. A study for issue 14.

Octave-aware description runs ALIKED's backbone once per ORB pyramid level (8 maps, ~3.1x one full-resolution map).
`features.octave_levels` lists the levels with their own map; keypoints of the other levels are described from the
nearest listed one (ties: the finer). Per level set this prints and writes:
  - homography AUC@3/5/10 on the `agnostic-reloc bench` pairs (hard homographies of Debian's opencv-doc photos) for
    the match CLI's default pipeline (`orb`, LightGlue + Hamming fused, f0.01) and the engine's (LightGlue only),
  - the time of one description (graf1 at 640x480, 1000 ORB-SLAM3-like keypoints, 1 intra-op thread), the level
    sets interleaved in one process, median of --repeat.

    .venv/bin/python benchmarks/octave_levels.py --out benchmarks/results/octave_levels [--pairs 34] [--skip-auc]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from agnostic_reloc.eval.homography_pairs import make_pairs
from agnostic_reloc.eval.photos import list_photos, oxford_graf
from agnostic_reloc.features.aliked import AlikedExtractor
from agnostic_reloc.features.detectors import detect
from agnostic_reloc.tools.bench import AUC_THRESHOLDS, LEVERS, PAIR_CONF, evaluate_homography, machine_info, print_table

LEVEL_SETS = {  # name: levels with their own map
    "all 8": (0, 1, 2, 3, 4, 5, 6, 7),
    "no 1": (0, 2, 3, 4, 5, 6, 7),
    "no 3": (0, 1, 2, 4, 5, 6, 7),
    "no 1, 3": (0, 2, 4, 5, 6, 7),
    "no 1, 3, 5": (0, 2, 4, 6, 7),
    "0, 2, 4, 6": (0, 2, 4, 6),
}
PIPELINES = {"fused (match CLI)": "orb / octave / fused f0.01", "LightGlue (engine)": "orb / ALIKED octave / LightGlue"}


def description_ms(repeat: int) -> dict[str, float]:
    """Median ms of one octave-aware description per level set, the sets interleaved (1 intra-op thread)."""
    image = cv2.resize(oxford_graf()[0], (640, 480))
    kp = detect(image, "orb", 1000)
    extractors = {name: AlikedExtractor(device="cpu", evaluation="sparse", octave_levels=levels)
                  for name, levels in LEVEL_SETS.items()}
    times: dict[str, list[float]] = {name: [] for name in extractors}
    with torch.inference_mode():
        for e in extractors.values():
            e.describe([image], [kp], sampling="octave")  # warm-up
        for _ in range(repeat):
            for name, e in extractors.items():
                t = time.perf_counter()
                e.describe([image], [kp], sampling="octave")
                times[name].append(1e3 * (time.perf_counter() - t))
    return {name: round(float(np.median(v)), 1) for name, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="octave_levels_out")
    ap.add_argument("--pairs", type=int, default=34)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--skip-auc", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    report: dict = {"machine": machine_info(torch.device("cpu")), "level_sets": LEVEL_SETS,
                    "description_ms": description_ms(args.repeat)}
    print_table("One description (graf1, 640x480, 1000 ORB keypoints, 1 thread), median ms",
                {k: {"ms": v} for k, v in report["description_ms"].items()}, ["ms"])
    if not args.skip_auc:
        pairs = make_pairs(list_photos(), args.pairs, seed=args.seed, conf=PAIR_CONF)
        variants = {f"{p} / {s}": {**LEVERS[lever], "octave_levels": levels}
                    for p, lever in PIPELINES.items() for s, levels in LEVEL_SETS.items()}
        report["n_pairs"], report["seed"] = len(pairs), args.seed
        report["homography_auc"] = evaluate_homography(pairs, variants, "cpu")
        print_table(f"Homography AUC on {len(pairs)} hard pairs (seed {args.seed}) per level set",
                    report["homography_auc"], [f"AUC@{t}" for t in AUC_THRESHOLDS] + ["matches_median"])
    path = out / "octave_levels.json"
    if path.exists() and args.skip_auc:  # keep the AUC of an earlier full run
        report = {**json.loads(path.read_text()), **report}
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
