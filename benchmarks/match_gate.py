"""Could a cheap descriptor check skip LightGlue on candidates that cannot verify? A study for issue 14.

With description 4x cheaper (features.evaluation: sparse), LightGlue on the K retrieval candidates of every
keyframe is most of the CPU time: a keyframe that is no revisit pays all K pairs (~0.2 s each on 2 cores).
ORB-SLAM3 only runs its Sim3 when SearchByBoW found enough matches; the analogue here is a mutual nearest
neighbour count of the ALIKED descriptors (query rows vs the candidate's map-point rows, the rows LightGlue
sees), a [N x M] product: a few ms. For every retrieved candidate of world sequences with daylight and night
revisits (benchmarks/world_difficulty.py lighting levels), this script records the count of mutual nearest
neighbours with cosine >= t, whether LightGlue + geometry verified the pair (the engine's `verify_pair`), and
whether it is a true revisit (ground truth within 1 m / 30 deg). Printed per t: the lowest count among verified
pairs and, per gate m, the verified pairs it would lose and the LightGlue runs it would skip.

    .venv/bin/python benchmarks/match_gate.py --levels 0 5 --out benchmarks/results/match_gate
"""

from __future__ import annotations

import json

from retrieval_gate import LEVEL_LIGHTING, is_revisit, study_args  # the sibling study

from agnostic_reloc.loop import verify
from agnostic_reloc.loop.engine import Engine
from agnostic_reloc.world import make_sequence

COSINES = (0.0, 0.5, 0.6, 0.7, 0.8)
GATES = (3, 5, 8, 10, 15, 20, 30)


def study(level: int, seed: int, frames_per_lap: int) -> list[dict]:
    conf = {"keep_depth": False, "trajectory": {"frames_per_lap": frames_per_lap,
                                                "lap2_lighting": LEVEL_LIGHTING[level]}}
    seq = make_sequence(seed=seed, profile="loop", conf=conf, progress=True)
    engine = Engine({"device": "cpu", "retrieval": {"min_mutual_matches": 0}})  # every candidate verified
    frames = [f for f in seq.frames if f.is_keyframe and f.tracking_state == "OK"]
    min_inliers = engine.conf["loop"]["min_inliers"]
    rows = []
    for f in frames:
        kf = engine.make_keyframe(f.stamp, f.image, f.keypoints, f.T_map_cam, seq.K, f.map_points, f.map_point_ids)
        engine.insert_keyframe(kf)
        hood = engine.neighbourhood.group(kf)
        for cid in engine._candidates(kf, hood):
            cand = engine.map.get(cid)
            g = frames[cid]
            counts = {t: engine.matcher.mutual_matches(kf, cand, t) for t in COSINES}
            pairs = engine.matcher.match(kf, [cand])[0]
            d = verify.verify_pair(kf, cand, pairs, min_inliers, engine.conf["verify"])
            rows.append({"level": level, "query": kf.id, "cand": cid, "lap": f.lap, "true": is_revisit(f, g),
                         "matches": len(pairs), "verified": d is not None,
                         "inliers": int(d.inliers) if d is not None else 0,
                         "mnn": {str(t): n for t, n in counts.items()}})
    return rows


def summary(rows: list[dict]) -> dict:
    out = {"pairs": len(rows), "verified": sum(r["verified"] for r in rows),
           "verified_true": sum(r["verified"] and r["true"] for r in rows)}
    for t in COSINES:
        key = str(t)
        ver = [r["mnn"][key] for r in rows if r["verified"]]
        out[f"cos>={t}"] = {
            "lowest_verified": min(ver, default=None),
            "gates": {m: {"verified_lost": sum(r["verified"] and r["mnn"][key] < m for r in rows),
                          "true_verified_lost": sum(r["verified"] and r["true"] and r["mnn"][key] < m for r in rows),
                          "skipped": round(sum(r["mnn"][key] < m for r in rows) / max(len(rows), 1), 3)}
                      for m in GATES}}
    return out


def main() -> None:
    args, out = study_args(__doc__.split("\n")[0], "match_gate_out")
    report = {"seed": args.seed, "frames_per_lap": args.frames_per_lap, "levels": {}, "rows": []}
    for level in args.levels:
        rows = study(level, args.seed, args.frames_per_lap)
        report["rows"] += rows
        report["levels"][level] = s = summary(rows)
        print(f"\nlevel {level}: {s['pairs']} candidate pairs, {s['verified']} verified "
              f"({s['verified_true']} true revisits)")
        for t in COSINES:
            v = s[f"cos>={t}"]
            print(f"  cosine >= {t}: lowest count of a verified pair {v['lowest_verified']}; " + ", ".join(
                f"m={m}: lose {g['verified_lost']} ({g['true_verified_lost']} true), skip {g['skipped']:.0%}"
                for m, g in v["gates"].items()))
        report["all"] = summary(report["rows"])
        (out / "match_gate.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
