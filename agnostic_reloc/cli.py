"""`agnostic-reloc` command-line tool: thin subcommands over the library.

Errors a user can act on (bad image, unknown detector, bad weights) print one line and exit 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger("agnostic_reloc")


class UserError(Exception):
    """An error caused by the user's input, reported as one line."""


def _add_match(sub) -> None:
    from .features.detectors import DETECTORS
    from .features.suppression import SUPPRESSION_MODES
    from .matching.pipeline import default_conf

    p = sub.add_parser("match", help="match two images and write matches as JSON")
    p.add_argument("image0")
    p.add_argument("image1")
    p.add_argument("--detector", default=default_conf["detector"], choices=DETECTORS)
    p.add_argument("--max-keypoints", type=int, default=default_conf["max_keypoints"])
    p.add_argument("--suppression", default=default_conf["suppression"], choices=SUPPRESSION_MODES)
    p.add_argument("--sampling", default=default_conf["sampling"], choices=("full", "octave"))
    p.add_argument("--matcher", default=default_conf["matcher"], choices=("lightglue", "nn", "fused"))
    p.add_argument("--filter-threshold", type=float, default=default_conf["filter_threshold"])
    p.add_argument("--weights", default=None, help="fine-tuned LightGlue checkpoint (.pth)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "openvino", "onnxruntime"),
                   help="network runtime on CPU (auto: openvino, else onnxruntime, else torch)")
    p.add_argument("--json", required=True, help="output JSON path")
    p.add_argument("--viz", default=None, help="optional PNG of the matches")
    p.set_defaults(func=cmd_match)


def cmd_match(args: argparse.Namespace) -> int:
    from .io.image import load_image
    from .matching.pipeline import PairPipeline

    img0, img1 = load_image(args.image0), load_image(args.image1)
    if args.max_keypoints <= 0:
        raise UserError(f"--max-keypoints must be positive, got {args.max_keypoints}")
    pipe = PairPipeline(detector=args.detector, max_keypoints=args.max_keypoints,
                        suppression=args.suppression, sampling=args.sampling, matcher=args.matcher,
                        filter_threshold=args.filter_threshold, weights=args.weights, device=args.device,
                        backend=args.backend)
    res = pipe.match(img0, img1)
    out = {
        "keypoints0": res.keypoints0.xy.round(3).tolist(),
        "keypoints1": res.keypoints1.xy.round(3).tolist(),
        "matches": res.matches.tolist(),
        "scores": [round(float(s), 5) for s in res.scores],
        "timing_ms": {k: round(v, 2) for k, v in res.timing_ms.items()},
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in pipe.conf.items()},
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out))
    if args.viz:
        from .eval.viz import draw_matches

        draw_matches(img0, img1, res.keypoints0.xy, res.keypoints1.xy, res.matches, res.scores, args.viz,
                     title=f"{args.detector} / {args.matcher}: {len(res.matches)} matches")
    print(f"{len(res.matches)} matches between {len(res.keypoints0)} and {len(res.keypoints1)} keypoints "
          f"in {res.timing_ms['total']:.0f} ms -> {args.json}")
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="latency and homography-accuracy benchmark (tables + JSON)")
    p.add_argument("--out", default="bench_out", help="output folder for JSON and plots")
    p.add_argument("--pairs", type=int, default=34, help="number of generated hard homography pairs")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--quick", action="store_true", help="few pairs and repetitions (smoke run)")
    p.add_argument("--backends", nargs="+", choices=("torch", "openvino", "onnxruntime"), default=None,
                   help="inference backends to time (default: torch and every installed CPU runtime)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from .tools.bench import main as bench_main

    bench_main(out=args.out, n_pairs=args.pairs, device=args.device, latency=not args.skip_latency,
               accuracy=not args.skip_accuracy, quick=args.quick, backends=args.backends)
    return 0


def _add_world_eval(sub) -> None:
    from .world.trajectory import PROFILES

    p = sub.add_parser("evaluate-world", help="engine on a generated ground-truth sequence: learned vs classic")
    p.add_argument("--profile", default="mixed", choices=PROFILES, help="world trajectory (world/trajectory.py)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=None, help="number of frames (default: the profile's)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", default="world_eval_out")
    p.set_defaults(func=cmd_world_eval)


def cmd_world_eval(args: argparse.Namespace) -> int:
    from .tools.world_eval import evaluate_modes, print_report
    from .world import make_sequence

    seq = make_sequence(seed=args.seed, profile=args.profile, n_frames=args.frames, conf={"keep_depth": False})
    report = evaluate_modes(seq, engine_conf={"device": args.device}, out=args.out)
    print_report(report)
    print(f"wrote {Path(args.out) / 'world_eval.json'}")
    return 0


def _bag_error(args: argparse.Namespace, exc: Exception) -> int:
    """A bag that cannot be used: one line, exit code 2."""
    if args.verbose:
        raise exc
    print(f"agnostic-reloc {args.command}: error: {exc}", file=sys.stderr)
    return 2


def _add_replay(sub) -> None:
    p = sub.add_parser("replay", help="replay a rosbag2 bag (sqlite3 or mcap) through the engine: results.json, "
                                      "and with ground truth metrics, plots and report.md")
    p.add_argument("bag", help="bag folder (or a single .db3 / .mcap file)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", default=None, help="the node's ROS parameter file, e.g. config/reloc.yaml "
                                                  "(default: engine defaults)")
    p.add_argument("--gt", default=None, help="ground truth as TUM file (stamp tx ty tz qx qy qz qw, T_world_cam); "
                                              "default: the bag's /ground_truth/pose")
    p.add_argument("--remap", nargs="+", action="extend", default=[], metavar="FROM:=TO",
                   help="read contract topic FROM (or its role name, e.g. image) from bag topic TO")
    p.add_argument("--realtime", action="store_true", help="pace the replay by the bag's log times")
    p.add_argument("--matcher", default=None, choices=("lightglue", "nn"), help="override engine.matcher")
    p.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"), help="override engine.device")
    p.add_argument("--map-in", default=None, metavar="FILE",
                   help="load this keyframe map first (written by --map-out or the node's save_map): the bag's "
                        "queries relocalize against it, its keyframes join it; GT must cover its keyframes too")
    p.add_argument("--map-out", default=None, metavar="FILE",
                   help="save the map (loaded + new keyframes) here at the end, atomically (may be --map-in)")
    p.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    from .conf import deep_update
    from .eval.report import metrics_table
    from .io.bags import BagError
    from .io.params import load_node_config, parse_remaps
    from .tools.replay import replay

    engine_conf, replay_conf = load_node_config(args.config) if args.config else ({}, {})
    engine_conf = deep_update(engine_conf, {"device": args.device} if args.device else {})
    if args.matcher:
        engine_conf = deep_update(engine_conf, {"matcher": {"name": args.matcher}})
    try:
        rep = replay(args.bag, args.out, engine_conf, args.gt, parse_remaps(args.remap), args.realtime,
                     conf=replay_conf, map_in=args.map_in, map_out=args.map_out)
    except BagError as exc:
        return _bag_error(args, exc)
    res = rep.results
    print(metrics_table({res["config"]["engine"]["matcher"]["name"]: res}))
    if res.get("metrics_skipped"):
        print(f"metrics skipped: {res['metrics_skipped']}")
    print(f"wrote {Path(args.out) / 'results.json'}" + ("" if res.get("metrics_skipped") else
                                                          f", report.md and plots in {args.out}"))
    if res["map"]["saved"]:
        print(f"saved the map ({res['map']['saved_keyframes']} keyframes) to {res['map']['saved']}")
    return 0


def _add_make_bag(sub) -> None:
    from .world.trajectory import PROFILES

    p = sub.add_parser("make-bag", help="write a ground-truth world sequence as a rosbag2 bag (the message contract)")
    p.add_argument("out", help="new bag folder (an existing path is never overwritten)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=None, help="number of frames (default: the profile's)")
    p.add_argument("--profile", default="mixed", choices=PROFILES, help="world trajectory (world/trajectory.py)")
    p.add_argument("--storage", default="sqlite3", choices=("sqlite3", "mcap"))
    p.add_argument("--no-depth", action="store_true", help="leave out the depth images")
    p.add_argument("--small", action="store_true", help="a small world: 320x240, sparser keyframes (fast tests)")
    p.add_argument("--fps", type=float, default=None, help="frame rate in Hz (default 5; the laps keep their "
                                                         "length, so more, closer frames: use >= 10 for ORB-SLAM3)")
    p.add_argument("--night", action="store_true", help="light the kidnapped segments at night (world.NIGHT_LIGHTING "
                                                        "levels in turn) against the daylight laps")
    p.add_argument("--split", action="store_true",
                   help="two sessions: OUT/laps and OUT/kidnapped bags (replay the second with --map-in of the "
                        "first's --map-out) and OUT/ground_truth.txt (TUM, every frame)")
    p.set_defaults(func=cmd_make_bag)


def cmd_make_bag(args: argparse.Namespace) -> int:
    from .io.bags import BagError, make_bag
    from .world import NIGHT_LIGHTING

    conf = {"trajectory": {"kidnap_night": NIGHT_LIGHTING}} if args.night else None
    try:
        info = make_bag(args.out, args.seed, args.frames, args.profile, args.storage, not args.no_depth, args.small,
                        fps=args.fps, conf=conf, split=args.split)
    except BagError as exc:
        return _bag_error(args, exc)
    print(f"wrote {args.out} ({info['storage']}): {info['frames']} frames, {info['keyframes']} keyframes, "
          f"{info['queries']} lost frames, {info['messages']} messages")
    for b in info.get("bags", {}).values():
        print(f"  {b['path']}: {b['frames']} frames, {b['keyframes']} keyframes, {b['queries']} lost frames")
    if "ground_truth" in info:
        print(f"  {info['ground_truth']}: ground truth of every frame (TUM)")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the main job without ROS: a world as two sessions (day: mapping + loops, map "
                                    "saved; night: kidnapped frames relocalized against the loaded map), each "
                                    "with the learned and the classic matcher; report.md side by side")
    p.add_argument("--out", default="demo_out", help="output folder (its bags/ and maps are replaced)")
    p.add_argument("--frames", type=int, default=None,
                   help="frames of the sequence, both sessions (default: the mixed profile's, 218)")
    p.add_argument("--seed", type=int, default=None, help="world seed (default: tools.demo.DEMO_SEED)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    import time

    from .io.bags import BagError
    from .tools.demo import DEMO_SEED, run_demo, segments_table

    t0 = time.perf_counter()
    try:
        runs = run_demo(args.out, args.frames, DEMO_SEED if args.seed is None else args.seed, device=args.device)
    except BagError as exc:
        return _bag_error(args, exc)
    print(segments_table(runs))
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; report: {Path(args.out) / 'report.md'}")
    return 0


def _add_doctor(sub) -> None:
    p = sub.add_parser("doctor", help="what this install has and lacks (weights, torch/device, runtimes, ROS, "
                                      "ORB-SLAM3, disk), each with its fix; exit 1 if something required is missing")
    p.add_argument("--config", default=None, help="the node's parameter file (checks its weights, backend, map_path)")
    # dest is not `ros`: main() reads args.ros as orbslam3-bridge's pass-through to its ROS node
    p.add_argument("--ros", dest="need_ros", action="store_true",
                   help="rclpy and the RMW are required (a robot running reloc_node)")
    p.add_argument("--map-dir", default=None, help="folder for maps, for the free-disk check "
                                                   "(default: the config's map_path folder, else the cwd)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the table as JSON")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    from .tools.doctor import main as doctor_main

    return doctor_main(config=args.config, ros=args.need_ros, map_dir=args.map_dir, json_path=args.json)


# commands that run the engine: its two stages (loop.runner) get `--threads` intra-op threads each
ENGINE_COMMANDS = {"evaluate-world", "replay", "demo"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agnostic-reloc", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads of each engine stage (keyframes; loop checks and queries run beside it) for "
                             f"{', '.join(sorted(ENGINE_COMMANDS))}; 0 = half the cores (default)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_match(sub)
    _add_bench(sub)
    _add_world_eval(sub)
    _add_replay(sub)
    _add_make_bag(sub)
    _add_demo(sub)
    _add_doctor(sub)
    from .train.cli import add_evaluate_parser, add_export_parser, add_train_parser

    add_train_parser(sub)
    add_evaluate_parser(sub)
    add_export_parser(sub)
    from .orbslam3.cli import add_parsers as add_orbslam3_parsers

    add_orbslam3_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    from .weights import WeightsError

    if getattr(args, "ros", None) is not None:  # orbslam3-bridge --ros: the ROS 2 node (orbslam3/ is ROS-free)
        from .ros.orbslam3_node import main as node_main

        return int(node_main(["orbslam3_bridge", *args.ros]) or 0)
    try:
        if args.command in ENGINE_COMMANDS:
            import torch

            from .inference.backends import stage_threads

            torch.set_num_threads(stage_threads(args.threads))
        return args.func(args)
    except (UserError, ValueError, WeightsError, FileNotFoundError) as exc:
        if args.verbose:
            raise
        print(f"agnostic-reloc {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
