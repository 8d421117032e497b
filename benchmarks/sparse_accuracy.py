"""Does the sparse ALIKED path (the default) keep the homography accuracy of the dense one it replaced?

The `agnostic-reloc bench` pairs (hard homographies of Debian's opencv-doc photos, seed 0) through the `orb`
pipelines with `evaluation: sparse` and `dense`, everything else equal. Prints the table, writes
sparse_accuracy.json.

    .venv/bin/python benchmarks/sparse_accuracy.py --out benchmarks/results/sparse_accuracy [--pairs 34]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agnostic_reloc.eval.homography_pairs import make_pairs
from agnostic_reloc.eval.photos import list_photos
from agnostic_reloc.tools.bench import AUC_THRESHOLDS, LEVERS, PAIR_CONF, evaluate_homography, machine_info, print_table

PIPELINES = ("orb / octave / fused f0.01", "orb / ALIKED octave / LightGlue")  # the match CLI's and the engine's


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="sparse_accuracy_out")
    ap.add_argument("--pairs", type=int, default=34)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    pairs = make_pairs(list_photos(), args.pairs, seed=args.seed, conf=PAIR_CONF)
    variants = {f"{name} [{ev}]": {**LEVERS[name], "evaluation": ev} for name in PIPELINES for ev in ("dense", "sparse")}
    table = evaluate_homography(pairs, variants, "cpu")
    print_table(f"Homography AUC on {len(pairs)} hard pairs (seed {args.seed}), sparse vs dense ALIKED", table,
                [f"AUC@{t}" for t in AUC_THRESHOLDS] + ["matches_median"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    (out / "sparse_accuracy.json").write_text(json.dumps(
        {"machine": machine_info(torch.device("cpu")), "n_pairs": len(pairs), "seed": args.seed,
         "homography_auc": table}, indent=1))
    print(f"wrote {out / 'sparse_accuracy.json'}")


if __name__ == "__main__":
    main()
