"""How ambiguous are ground-truth labels for ORB-SLAM3's multi-scale keypoints, and what do octave-aware labels do?

ORB-SLAM3 keeps 8 pyramid levels without suppression, so one corner often has keypoints at several levels in one
spot. On homography pairs of the photos (as `config/train/deployed_cpu.yaml` builds them, 1000 ORB-SLAM3-like
keypoints per image), label every pair twice: by position only (mutual nearest within 3 px), and octave-aware
(`train.groundtruth`: the octave must be within 1 level of the one predicted by the local scale change). Reports
per labelling the positives, negatives and ignored points, and the share of position-only positives whose octaves
contradict the scale change (a keypoint told to match the same corner seen at the wrong scale). Table + JSON.

    .venv/bin/python benchmarks/label_ambiguity.py --out benchmarks/results/label_ambiguity [--pairs 60]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from agnostic_reloc.eval.homography_pairs import make_pair
from agnostic_reloc.eval.photos import list_photos
from agnostic_reloc.features.detectors import detect
from agnostic_reloc.io.image import load_image
from agnostic_reloc.train import groundtruth
from agnostic_reloc.train.data import DEFAULT_HOLDOUT, select_photos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="label_ambiguity_out")
    ap.add_argument("--pairs", type=int, default=60)
    ap.add_argument("--keypoints", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    photos = select_photos(list_photos(), DEFAULT_HOLDOUT, "train")
    counts = {name: {"positives": 0, "negatives": 0, "ignored": 0, "incompatible_positives": 0}
              for name in ("position only", "octave-aware")}
    keypoints = 0
    for i in tqdm(range(args.pairs), desc="pairs"):
        rng = np.random.default_rng([args.seed, i])
        pair = make_pair(load_image(photos[i % len(photos)]), rng, {"size": (640, 480), "difficulty_range": (0, 1)})
        k0, k1 = detect(pair.image0, "orb", args.keypoints), detect(pair.image1, "orb", args.keypoints)
        keypoints += len(k0) + len(k1)
        levels = (k0.octave, k1.octave, k0.scale_factor)
        compatible = groundtruth.octave_compatible(*levels[:2], groundtruth.homography_scale(pair.H_0to1, k0.xy),
                                                   levels[2], 1.0)
        for name, lv in (("position only", None), ("octave-aware", levels)):
            gt0, gt1 = groundtruth.matches_from_homography(k0.xy, k1.xy, pair.H_0to1, 3.0, 5.0, lv, 1.0)
            c = counts[name]
            pos = np.flatnonzero(gt0 >= 0)
            c["positives"] += len(pos)
            c["negatives"] += int((gt0 == groundtruth.UNMATCHED).sum() + (gt1 == groundtruth.UNMATCHED).sum())
            c["ignored"] += int((gt0 == groundtruth.IGNORE).sum() + (gt1 == groundtruth.IGNORE).sum())
            c["incompatible_positives"] += int((~compatible[pos, gt0[pos]]).sum())
    print(f"{args.pairs} homography pairs of the training photos, {keypoints / (2 * args.pairs):.0f} ORB-SLAM3-like "
          f"keypoints per image (no suppression)")
    print(f"{'labels':<15}{'positives':>11}{'negatives':>11}{'ignored':>10}{'wrong-scale positives':>24}")
    for name, c in counts.items():
        share = c["incompatible_positives"] / max(c["positives"], 1)
        print(f"{name:<15}{c['positives']:>11}{c['negatives']:>11}{c['ignored']:>10}"
              f"{c['incompatible_positives']:>14} ({100 * share:4.1f} %)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "label_ambiguity.json").write_text(json.dumps({"pairs": args.pairs, "seed": args.seed,
                                                          "keypoints_per_image": keypoints / (2 * args.pairs),
                                                          "counts": counts}, indent=1))
    print(f"wrote {out / 'label_ambiguity.json'}")


if __name__ == "__main__":
    main()
