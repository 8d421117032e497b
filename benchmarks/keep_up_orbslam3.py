"""Keeping up beside real ORB-SLAM3 on the same cores: does our engine slow ORB-SLAM3's tracking, and does it keep
up with the keyframes ORB-SLAM3 makes?

A world sequence (640x480, two laps and kidnapped segments, `--fps` frames/s) is written as a contract bag, then
tracked twice by real ORB-SLAM3 (pyorbslam3) through the bridge, paced at the camera's rate: alone, and with our
engine beside it in the node's two-thread worker (keyframes handed over without waiting, relocalizations
answered when they arrive), as the node runs next to ORB-SLAM3 on a robot. Reported: ORB-SLAM3's tracking time
per frame (p50 / p90) in both runs and their ratio, the keyframe rate, the worker's lags (keyframe, loop check,
query), its largest backlog and how long it took to drain after the last frame, loops and relocalizations.
ORB-SLAM3 is not deterministic, so the two runs do not track identically. Writes keep_up_orbslam3.json.

    .venv/bin/python benchmarks/keep_up_orbslam3.py --out benchmarks/results/keep_up_orbslam3 [--fps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import torch

from agnostic_reloc.inference.backends import stage_threads
from agnostic_reloc.io.bags import make_bag
from agnostic_reloc.io.params import NODE_PARAMS
from agnostic_reloc.orbslam3.offline import run_bridge

NODE_DEFAULTS = {k: v[0] for k, v in NODE_PARAMS.items()}


def tracking(run) -> dict:
    return {k: round(v, 1) for k, v in run.bridge["track_ms"].items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="keep_up_orbslam3_out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fps", type=float, default=20.0, help="camera rate (ORB-SLAM3 needs >= 10 Hz on this world)")
    ap.add_argument("--frames", type=int, default=None, help="frames (default: the mixed profile's)")
    ap.add_argument("--speed", type=float, default=1.0, help="play the frames at this fraction of their stamps' pace "
                    "(0.5: a robot moving at half the speed: the same frames and keyframes over twice the time)")
    ap.add_argument("--threads", type=int, default=0, help="threads per engine stage; 0 = half the cores")
    ap.add_argument("--nice", type=int, default=NODE_DEFAULTS["nice"], help="the worker's lower priority (the node's "
                    "`nice`; 0: equal to tracking)")
    args = ap.parse_args()
    torch.set_num_threads(stage_threads(args.threads))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        bag = Path(tmp) / "world"
        info = make_bag(bag, args.seed, args.frames, "mixed", fps=args.fps)
        alone = run_bridge(bag, Path(tmp) / "alone", with_engine=False, realtime=args.speed)
        beside = run_bridge(bag, Path(tmp) / "beside", engine_conf={"device": "cpu"}, beside=True, realtime=args.speed,
                            nice=args.nice)
    data_s = info["frames"] / args.fps / args.speed
    kf = sum(f.is_keyframe for f in beside.frames)
    t_alone, t_beside = tracking(alone), tracking(beside)
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "threads_per_stage": torch.get_num_threads(), "torch": torch.__version__},
        "seed": args.seed, "fps": args.fps, "speed": args.speed, "nice": args.nice, "frames": info["frames"],
        "data_s": round(data_s, 1),
        "orbslam3_alone": {"track_ms": t_alone, "wall_s": round(alone.wall_s, 1)},
        "orbslam3_beside_engine": {"track_ms": t_beside, "wall_s": round(beside.wall_s, 1)},
        "tracking_slowdown_p50": round(t_beside["p50"] / t_alone["p50"], 2),
        "tracking_slowdown_p90": round(t_beside["p90"] / t_alone["p90"], 2),
        "keyframes": kf, "keyframes_per_s": round(kf / data_s, 2), "worker": beside.worker,
        "loops": len(beside.result.loops),
        "relocalized": sum(r.success for r in beside.result.relocalizations),
        "queries_answered": len(beside.result.relocalizations),
    }
    lat = beside.worker["latency_ms"]
    print(f"\n{info['frames']} frames at {args.fps:g} Hz x {args.speed:g} ({data_s:.0f} s), {kf} keyframes "
          f"({report['keyframes_per_s']}/s)")
    print(f"ORB-SLAM3 tracking ms/frame p50 / p90: alone {t_alone['p50']} / {t_alone['p90']}, beside our engine "
          f"{t_beside['p50']} / {t_beside['p90']} (x{report['tracking_slowdown_p50']} at p50)")
    for stage, p in lat.items():
        print(f"  worker {stage:10s} lag p50 {p['p50'] / 1e3:6.2f} s  p90 {p['p90'] / 1e3:6.2f}  "
              f"max {p['max'] / 1e3:6.2f}")
    print(f"  largest backlog {beside.worker['max_backlog']}, drained {beside.worker['drain_s']} s after the last "
          f"frame; loops {report['loops']}, relocalized {report['relocalized']} of {report['queries_answered']} "
          f"queries answered ({beside.worker['dropped_queries']} dropped as stale)")
    (out / "keep_up_orbslam3.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'keep_up_orbslam3.json'}")


if __name__ == "__main__":
    main()
