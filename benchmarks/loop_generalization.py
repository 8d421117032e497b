"""Loop defaults on sequences unlike our own world, and what each loop guard buys.

World sequences a new user could record, all with real ORB-SLAM3 drift (`world.slam.ORBSLAM3_DRIFT`,
~1.2 deg/m) and a darker second pass: a corridor driven there and back (revisits 1-8 s after the first pass),
a robot parked for a minute in the middle of a lap, a drone flying tight loops in a small area, and our usual
two-lap loop. Each sequence is described once (the keyframes' features are shared), then every engine variant
verifies and accepts loops on the same keyframes:

  defaults             the shipped defaults
  no common region     loop.common_region off
  no spread            loop.min_spread 0
  no drift prior       loop.use_pose_prior off
  consistency only     all three guards off
  previous defaults    the defaults before covisibility-based candidates (10 s window, drift prior
                       10 deg + 0.2 deg/m, consistency within 15 s, no common-region or spread check)

Recall: keyframes of a later pass that have a keyframe of an earlier pass within 1 m / 30 deg, with at least one
true loop. True and false loops are judged by the relative pose (eval.loops). Prints a table, writes
loop_generalization.json and .png.

    .venv/bin/python benchmarks/loop_generalization.py --out benchmarks/results/loop_generalization
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from agnostic_reloc.eval.loops import evaluate_loops
from agnostic_reloc.geometry import rotation_angle_deg
from agnostic_reloc.loop.engine import Engine
from agnostic_reloc.world import make_sequence
from agnostic_reloc.world.slam import ORBSLAM3_DRIFT

SEQUENCES = {  # name: (profile, n_frames, conf)
    "corridor": ("corridor", None, {}),
    "parked": ("parked", None, {"trajectory": {"parked_s": 30.0}}),
    "small_room": ("small_room", None, {}),
    "two laps": ("loop", None, {}),
}

PREVIOUS = {"retrieval": {"temporal_window_s": 10.0, "min_travel_m": 0.0, "recent_keyframes": 0},
            "loop": {"prior_angle_per_m": 0.2, "prior_dist_per_m": 0.05, "common_region": False, "min_spread": 0.0,
                     "consistency_window_kf": 75}}
VARIANTS = {
    "defaults": {},
    "no common region": {"loop": {"common_region": False}},
    "no spread": {"loop": {"min_spread": 0.0}},
    "no drift prior": {"loop": {"use_pose_prior": False}},
    "consistency only": {"loop": {"common_region": False, "min_spread": 0.0, "use_pose_prior": False}},
    "previous defaults": PREVIOUS,
}


def revisit_queries(seq, kf_ids: dict[int, int]) -> set[int]:
    """Keyframes of a later pass with a keyframe of an earlier pass within 1 m / 30 deg (ground truth)."""
    frames = {i: seq.frames[i] for i in kf_ids}
    out = set()
    for i, f in frames.items():
        for j, g in frames.items():
            if g.lap < f.lap and np.linalg.norm(f.T_world_cam[:3, 3] - g.T_world_cam[:3, 3]) <= 1.0 \
                    and rotation_angle_deg(f.T_world_cam[:3, :3].T @ g.T_world_cam[:3, :3]) <= 30.0:
                out.add(kf_ids[i])
                break
    return out


class SharedMatches:
    """The engine's keyframe matcher with its results kept per (query, candidate): every variant verifies the same
    pairs, and the matches of a pair do not depend on the acceptance options, so each pair is matched once."""

    def __init__(self) -> None:
        self.cache: dict[tuple[int, int], np.ndarray] = {}
        self.matcher = None

    def wrap(self, engine: Engine) -> None:
        self.matcher = self.matcher or engine.matcher
        inner = self.matcher

        class Cached:
            name, backend = inner.name, inner.backend
            describe = inner.describe

            def match(_, q, cands):
                todo = [c for c in cands if (q.id, c.id) not in self.cache]
                for c, m in zip(todo, inner.match(q, todo) if todo else []):
                    self.cache[(q.id, c.id)] = m
                return [self.cache[(q.id, c.id)] for c in cands]

        engine.matcher = Cached()


def run_variant(keyframes: list, conf: dict, shared: SharedMatches) -> tuple[list, dict]:
    engine = Engine(conf)
    shared.wrap(engine)
    loops = []
    for kf in keyframes:
        engine.insert_keyframe(kf)
        loops += engine.detect_loops(kf)
    excluded = {f"candidate excluded: {k}": v for k, v in engine.neighbourhood.excluded.items()}
    return loops, {**dict(engine.acceptance.refused), **excluded}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="loop_generalization_out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"))
    ap.add_argument("--matcher", default="lightglue", choices=("lightglue", "nn"))
    ap.add_argument("--sequences", nargs="+", default=list(SEQUENCES), choices=list(SEQUENCES))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = {"device": "cpu", "matcher": {"name": args.matcher}}
    report: dict = {"seed": args.seed, "size": list(args.size), "matcher": args.matcher, "sequences": {}}
    for name in args.sequences:
        profile, n_frames, conf = SEQUENCES[name]
        conf = {**conf, "keep_depth": False,
                "camera": {"width": args.size[0], "height": args.size[1], "f": 500.0 * args.size[0] / 640},
                "slam": dict(ORBSLAM3_DRIFT)}
        seq = make_sequence(seed=args.seed, profile=profile, n_frames=n_frames, conf=conf, progress=True)
        describer = Engine(base)
        t = time.perf_counter()
        kfs, kf_ids = [], {}
        for f in seq.frames:
            if f.is_keyframe and f.tracking_state == "OK":
                kfs.append(describer.make_keyframe(f.stamp, f.image, f.keypoints, f.T_map_cam, seq.K, f.map_points,
                                                   f.map_point_ids))
                kf_ids[f.index] = kfs[-1].id
        describe_s = time.perf_counter() - t
        gt = {kf_ids[i]: seq.frames[i].T_world_cam for i in kf_ids}
        stamps = {kf_ids[i]: seq.frames[i].stamp for i in kf_ids}
        queries = revisit_queries(seq, kf_ids)
        rows = {}
        shared = SharedMatches()
        for vname in args.variants:
            vconf = VARIANTS[vname]
            conf_v = {**base, **{k: {**base.get(k, {}), **v} for k, v in vconf.items()}}
            t = time.perf_counter()
            loops, refused = run_variant(kfs, conf_v, shared)
            ev = evaluate_loops([{"query_id": lc.query_id, "match_id": lc.match_id,
                                  "T_match_query": lc.T_match_query, "score": lc.score,
                                  "scale_free": not lc.metric} for lc in loops], gt, stamps, {"min_time_gap": 0.0})
            true_q = {lc.query_id for lc, ok in zip(loops, ev["flags"]) if ok}
            rows[vname] = {"loops": len(loops), "true": int(ev["n_true"]), "false": int(ev["n_false"]),
                           "recall": round(len(true_q & queries) / max(len(queries), 1), 3),
                           "verify_s": round(time.perf_counter() - t, 1),
                           "refused": dict(sorted(refused.items(), key=lambda kv: -kv[1])[:6])}
        report["sequences"][name] = {"profile": profile, "frames": len(seq.frames), "keyframes": len(kfs),
                                     "revisit_queries": len(queries), "describe_s": round(describe_s, 1),
                                     "variants": rows}
        print(f"\n{name}: {len(seq.frames)} frames, {len(kfs)} keyframes, {len(queries)} revisit queries")
        print("| variant | loops | true | false | recall |\n|---|---|---|---|---|")
        for vname, r in rows.items():
            print(f"| {vname} | {r['loops']} | {r['true']} | {r['false']} | {r['recall']:.3f} |")
        (out / "loop_generalization.json").write_text(json.dumps(report, indent=1))
    plot(report, out / "loop_generalization.png")
    print(f"wrote {out / 'loop_generalization.json'}")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seqs = list(report["sequences"])
    variants = list(next(iter(report["sequences"].values()))["variants"])
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / len(variants)
    for k, v in enumerate(variants):
        rec = [report["sequences"][s]["variants"][v]["recall"] for s in seqs]
        false = [report["sequences"][s]["variants"][v]["false"] for s in seqs]
        bars = ax.bar(np.arange(len(seqs)) + k * width, rec, width, label=v)
        for b, nf in zip(bars, false):
            if nf:
                ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 0.02, f"{nf} false", ha="center",
                        fontsize=7, color="red", rotation=90)
    ax.set_xticks(np.arange(len(seqs)) + 0.4 - width / 2)
    ax.set_xticklabels(seqs)
    ax.set_ylabel("loop recall (revisit keyframes with a true loop)")
    ax.set_ylim(0, 1.15)
    ax.set_title(f"Loop defaults on unseen kinds of sequences ({report['matcher']}, ORB-SLAM3 drift)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
