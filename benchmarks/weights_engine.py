"""Engine-level check of LightGlue weights: loops and relocalization with official vs fine-tuned weights.

The learned mode (engine defaults) with each weights setting on generated ground-truth sequences: a two-lap `loop`
world (revisits in darker light and from another viewpoint) and a `kidnap` world (kidnapped frames, SLAM LOST,
relocalized against the first lap's map). Same sequences, same engine, only `matcher.weights` differs. Prints
one table, writes weights_engine.json. Usage (from the repository root):

    .venv/bin/python benchmarks/weights_engine.py --weights official --weights agnostic \\
        --out benchmarks/results/weights_engine [--loop-seeds 1] [--kidnap-seeds 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from agnostic_reloc.conf import deep_update
from agnostic_reloc.loop.engine import PRESETS
from agnostic_reloc.tools.world_eval import evaluate_modes
from agnostic_reloc.world import make_sequence

RELOC_KEY = "0.5m_5deg"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", action="append", required=True,
                    help="'official', a shipped name or a checkpoint path; repeat to compare")
    ap.add_argument("--loop-seeds", type=int, nargs="*", default=[1])
    ap.add_argument("--kidnap-seeds", type=int, nargs="*", default=[1])
    ap.add_argument("--out", default="weights_engine_out")
    args = ap.parse_args()
    modes = {w: deep_update(PRESETS["learned"], {"matcher": {"weights": None if w == "official" else w}})
             for w in args.weights}
    rows = {}
    for profile, seeds in (("loop", args.loop_seeds), ("kidnap", args.kidnap_seeds)):
        for seed in seeds:
            seq = make_sequence(seed=seed, profile=profile, conf={"keep_depth": False}, progress=False)
            t0 = time.time()
            report = evaluate_modes(seq, modes, {"device": "cpu"}, progress=True)
            rows[f"{profile} seed {seed}"] = {"report": report, "wall_s": time.time() - t0}
    print(f"{'sequence':<16}{'weights':<28}{'loops':>7}{'false':>7}{'recall@100p':>13}"
          f"{'reloc @0.5m/5deg':>18}{'queries':>9}")
    for name, row in rows.items():
        for w, r in row["report"].items():
            print(f"{name:<16}{str(w)[-27:]:<28}{r['loops']:>7}{r['false_loops']:>7}{r['loop_recall_at_100p']:>13.3f}"
                  f"{r['reloc_success'].get(RELOC_KEY, float('nan')):>18.3f}{r['reloc_queries']:>9}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "weights_engine.json").write_text(json.dumps({"weights": args.weights, "rows": rows}, indent=1,
                                                        default=float))
    print(f"wrote {out / 'weights_engine.json'}")


if __name__ == "__main__":
    main()
