"""Does the engine keep up with the robot? Keyframes paced at 1, 2 and 5 per second through the node's worker.

A two-lap world sequence (640x480, simulated ORB-SLAM3 keyframes with ~1000 ORB keypoints) is fed to an
`EngineWorker` exactly as the ROS node feeds it: keyframes are submitted at the paced rate (queries at their place
in the stream) while the worker extracts, inserts and verifies in the background. Reported per rate: keyframe and
loop-check lag (submit -> done, p50/p95/max), the largest keyframe backlog and how long the backlog takes to drain
after the last keyframe; plus the non-paced real-time factor (all events as fast as possible through `runner.run`,
as the replay tool drives the engine: wall time / data duration at 5 keyframes/s) with the loops and
relocalizations it finds. Both drivers run the keyframe stage and the loop stage side by side, each with --threads
intra-op threads. Also: a burst (5 keyframes/s for 5 s in the second lap of a 1 keyframe/s run: how soon the
keyframe backlog is back at zero) and relocalization query latency (kidnap profile: one mapped lap, then kidnapped
frames). Prints tables, writes keep_up.json and keep_up.png (backlog over time).

    .venv/bin/python benchmarks/keep_up.py --out benchmarks/results/keep_up [--rates 1 2 5] [--backend auto]
    .venv/bin/python benchmarks/keep_up.py --rates --skip-burst --skip-queries   # the non-paced run only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path

import numpy as np
import torch

from agnostic_reloc.eval.metrics import percentiles
from agnostic_reloc.eval.runs import evaluate
from agnostic_reloc.inference.backends import stage_threads
from agnostic_reloc.loop.engine import Engine
from agnostic_reloc.loop.runner import events_from_sequence, run
from agnostic_reloc.loop.worker import EngineWorker
from agnostic_reloc.types import KeyframeEvent
from agnostic_reloc.world import make_sequence


def lag_stats(ms: list[float]) -> dict[str, float]:
    """p50 / p95 / max of latencies (ms)."""
    v = np.asarray(ms, float)
    return {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)), "max": float(v.max())}


def paced(engine_conf: dict, events: list, rate: float, sample_s: float = 0.1,
          burst: tuple[int, float, float] | None = None) -> dict:
    """Submit keyframes at `rate` per second (queries between them as they come) to a fresh worker.

    burst: (first keyframe, rate, seconds): from that keyframe on, `rate` keyframes/s for `seconds`, then `rate`
    again; reported: how long after the burst the keyframe backlog stays at zero."""
    n_kf = sum(isinstance(e, KeyframeEvent) for e in events)
    due = np.arange(n_kf, dtype=float) / rate  # submission time of each keyframe
    if burst is not None:
        k0, b_rate, b_s = burst
        n_b = min(n_kf - k0, int(round(b_rate * b_s)))
        due[k0:k0 + n_b] = due[k0] + np.arange(n_b) / b_rate
        due[k0 + n_b:] = due[k0] + n_b / b_rate + np.arange(n_kf - k0 - n_b) / rate
    engine = Engine(engine_conf)
    worker = EngineWorker(engine, query_queue_size=2)
    trace: list[tuple[float, int, int]] = []  # (t, keyframes waiting, keyframes waiting for verification)
    stop = threading.Event()
    t0 = time.perf_counter()

    def sample() -> None:
        while not stop.is_set():
            d = worker.depths()
            trace.append((time.perf_counter() - t0, d["keyframes"], d["verify"]))
            time.sleep(sample_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    k = 0
    for ev in events:
        if isinstance(ev, KeyframeEvent):
            wait = due[k] - (time.perf_counter() - t0)
            if wait > 0:
                time.sleep(wait)
            worker.submit_keyframe(ev)
            k += 1
        else:
            worker.submit_query(ev)
    t_last = time.perf_counter() - t0
    worker.wait_idle()
    t_idle = time.perf_counter() - t0
    stop.set()
    sampler.join()
    worker.stop()
    lat = {name: lag_stats(list(v)) for name, v in worker.latency_ms.items() if v}
    extra = {}
    if burst is not None:
        end = due[k0 + n_b - 1]
        waiting = [t for t, b, _ in trace if t >= end and b > 0]
        extra = {"burst": {"first_keyframe": k0, "rate": b_rate, "seconds": b_s, "keyframes": n_b,
                           "ends_s": round(float(end), 2),
                           "keyframe_backlog_zero_after_s": round(max(waiting, default=end) - end, 2)}}
    return {"rate": rate, **extra, "keyframes": k, "stream_s": round(t_last, 2), "drain_s": round(t_idle - t_last, 2),
            "max_keyframe_backlog": max((b for _, b, _ in trace), default=0),
            "max_verify_backlog": max((v for _, _, v in trace), default=0),
            "lag_ms": lat, "counts": dict(worker.counts), "dropped_queries": worker.dropped_queries,
            "trace": [(round(t, 2), b, v) for t, b, v in trace]}


def unpaced(engine_conf: dict, events: list, seq, kf_rate: float = 5.0, pipelined: bool = True) -> dict:
    """All events as fast as possible (replay style): wall time vs the data's duration at `kf_rate`."""
    engine = Engine(engine_conf)
    t = time.perf_counter()
    result = run(engine, events, progress=True, total=len(events), pipelined=pipelined)
    wall = time.perf_counter() - t
    n_kf = sum(isinstance(e, KeyframeEvent) for e in events)
    m = evaluate(result, {f.stamp: f.T_world_cam for f in seq.frames})
    stages = {k: percentiles(v) for k, v in engine.timing.items()}
    return {"pipelined": pipelined, "wall_s": round(wall, 1), "keyframes": n_kf,
            "data_s_at_rate": round(n_kf / kf_rate, 1),
            "realtime_factor": round(wall / (n_kf / kf_rate), 2), "loops": m["loops"]["n_loops"],
            "false_loops": m["loops"]["n_false"], "loop_recall": m["loops"]["recall"],
            "reloc_success": m["relocalization"].get("success_at", {}), "stage_ms": stages,
            "backend": {"aliked": engine.pipe.aliked.backend,
                        "lightglue": getattr(getattr(engine.matcher, "matcher", None), "backend", None)}}


def queries(engine_conf: dict, seed: int = 1) -> dict:
    """Relocalization queries as the node answers them while the SLAM is lost: the world `kidnap` profile
    (640x480, one mapped lap, then kidnapped frames), each query after the keyframes before it. Latency per
    query (description + retrieval + matching + decision) and how many are placed within 0.5 m / 5 deg."""
    seq = make_sequence(seed=seed, profile="kidnap", progress=True,
                        conf={"keep_depth": False, "camera": {"width": 640, "height": 480}})
    engine = Engine(engine_conf)
    result = run(engine, list(events_from_sequence(seq)), progress=True)
    ms = np.add(engine.timing["reloc_retrieve"], engine.timing["reloc_verify"])
    m = evaluate(result, {f.stamp: f.T_world_cam for f in seq.frames})["relocalization"]
    latency = {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)), "max": float(ms.max())}
    return {"seed": seed, "queries": len(ms), "latency_ms": latency,
            "success_at": m.get("success_at", {}),
            "stage_ms": {k: percentiles(engine.timing[k]) for k in ("reloc_retrieve", "reloc_verify")}}


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 1, figsize=(8, 4))
    for r in runs:
        tr = np.asarray(r["trace"], float).reshape(-1, 3)
        label = (f"{r['rate']:g} kf/s" if "burst" not in r else
                 f"{r['rate']:g} kf/s, burst {r['burst']['rate']:g} kf/s for {r['burst']['seconds']:g} s")
        ax.plot(tr[:, 0], tr[:, 1] + tr[:, 2], label=label)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("keyframes waiting (extract + verify)")
    ax.set_title("Backlog of the engine worker, keyframes paced at a fixed rate")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="keep_up_out")
    ap.add_argument("--rates", type=float, nargs="*", default=[1.0, 2.0, 5.0], help="paced rates (none: no paced run)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", type=int, default=None, help="frames of the sequence (default: two full laps)")
    ap.add_argument("--backend", default="auto", choices=("auto", "torch", "openvino", "onnxruntime"))
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads of each of the two stages (torch; the "
                    "runtimes follow); 0 = half the cores, as the node and the CLI")
    ap.add_argument("--serial", action="store_true", help="non-paced run without the loop stage's own thread")
    ap.add_argument("--skip-unpaced", action="store_true")
    ap.add_argument("--burst", type=float, nargs=2, default=[5.0, 5.0], metavar=("RATE", "SECONDS"),
                    help="also a run at 1 keyframe/s with a burst of RATE keyframes/s for SECONDS in the second lap")
    ap.add_argument("--skip-burst", action="store_true", help="no burst run")
    ap.add_argument("--skip-queries", action="store_true", help="no relocalization query latency run")
    args = ap.parse_args()
    torch.set_num_threads(stage_threads(args.threads))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seq = make_sequence(seed=args.seed, profile="loop", n_frames=args.frames,
                        conf={"keep_depth": False, "camera": {"width": 640, "height": 480}}, progress=True)
    events = list(events_from_sequence(seq))
    conf = {"device": "cpu", "backend": args.backend}
    Engine(conf)  # export / load the runtime graphs once, outside the timed runs
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "threads_per_stage": torch.get_num_threads(),
                          "torch": torch.__version__}, "seed": args.seed, "frames": len(seq.frames),
              "engine_conf": conf}
    if not args.skip_unpaced:
        report["unpaced"] = unpaced(conf, events, seq, pipelined=not args.serial)
        u = report["unpaced"]
        print(f"\nnon-paced: {u['keyframes']} keyframes in {u['wall_s']} s = {u['realtime_factor']}x the data at "
              f"5 kf/s ({u['backend']}); loops {u['loops']} (false {u['false_loops']}), recall "
              f"{u['loop_recall']:.3f}, relocalized {u['reloc_success']}")
        for stage, p in u["stage_ms"].items():
            print(f"  {stage:16s} p50 {p['p50']:8.1f} ms  p90 {p['p90']:8.1f}  max {p['max']:8.1f}")
    report["paced"] = [paced(conf, events, r) for r in args.rates]
    n_kf = sum(isinstance(e, KeyframeEvent) for e in events)
    if not args.skip_burst:
        report["burst"] = paced(conf, events, 1.0, burst=(n_kf // 2, *args.burst))
        b = report["burst"]["burst"]
        print(f"\nburst of {b['rate']:g} keyframes/s for {b['seconds']:g} s ({b['keyframes']} keyframes, second lap) "
              f"at 1 keyframe/s: keyframe backlog back to zero {b['keyframe_backlog_zero_after_s']} s after it; lag "
              f"{report['burst']['lag_ms']}")
    if not args.skip_queries:
        report["queries"] = qr = queries(conf)
        lat = qr["latency_ms"]
        print(f"\nrelocalization queries (kidnap, seed {qr['seed']}): {qr['queries']} queries, latency p50 "
              f"{lat['p50']:.0f} ms, p90 {lat['p90']:.0f}, max {lat['max']:.0f}; placed {qr['success_at']}")
    if report["paced"]:
        print("\n| keyframes/s | keyframe lag p50 / p95 / max (s) | loop-check lag p50 / p95 / max (s) | max backlog "
              "| drain after last (s) |\n|---|---|---|---|---|")
    for r in report["paced"]:
        k, v = r["lag_ms"].get("keyframe", {}), r["lag_ms"].get("loop_check", {})
        f = lambda p: " / ".join(f"{p.get(q, float('nan')) / 1e3:.2f}" for q in ("p50", "p95", "max"))  # noqa: E731
        print(f"| {r['rate']:g} | {f(k)} | {f(v)} | {r['max_keyframe_backlog']} + {r['max_verify_backlog']} "
              f"| {r['drain_s']} |")
    (out / "keep_up.json").write_text(json.dumps(report, indent=1))
    runs = report["paced"] + ([report["burst"]] if "burst" in report else [])
    if runs:
        plot(runs, out / "keep_up.png")
    print(f"wrote {out / 'keep_up.json'}" + (f" and {out / 'keep_up.png'}" if runs else ""))


if __name__ == "__main__":
    main()
