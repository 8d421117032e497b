"""Subcommands `build-orb-vocabulary`, `orbslam3-bridge` and `compare-orbslam3` (wired in agnostic_reloc/cli.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .bridge import default_conf as bridge_defaults

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".pgm")


def add_parsers(sub) -> None:
    p = sub.add_parser("build-orb-vocabulary", help="DBoW2 text vocabulary (ORBvoc.txt format) from ORB "
                                                    "descriptors of photos, for ORB-SLAM3")
    p.add_argument("photos", nargs="+", help="image files or folders of images")
    p.add_argument("--out", required=True, help="vocabulary file to write (atomically)")
    p.add_argument("--k", type=int, default=10, help="branching factor")
    p.add_argument("--levels", type=int, default=5, help="tree depth (k^levels words at most)")
    p.add_argument("--features", type=int, default=2000, help="ORB features per photo")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_vocabulary)

    p = sub.add_parser("orbslam3-bridge", help="real ORB-SLAM3 -> the message contract: offline (SOURCE -> bag, "
                                               "our engine in the loop) or as a ROS 2 node (--ros)")
    p.add_argument("source", nargs="?", help="bag (image, camera_info, optional depth + ground truth) or a saved "
                                             "world sequence folder")
    p.add_argument("--out", help="output folder: bag/ (the contract), results.json, ORB-SLAM3 settings/log/trajectory")
    _bridge_args(p)
    p.add_argument("--no-engine", action="store_true", help="only ORB-SLAM3 -> bag, no engine in the loop")
    p.add_argument("--storage", default="sqlite3", choices=("sqlite3", "mcap"))
    p.add_argument("--ros", nargs=argparse.REMAINDER, default=None,
                   help="run the ROS 2 node instead; the rest goes to it (e.g. --ros --ros-args -p vocabulary:=V)")
    p.set_defaults(func=cmd_bridge)

    p = sub.add_parser("compare-orbslam3", help="ORB-SLAM3 alone vs ORB-SLAM3 + our engine on the same frames, "
                                                "several runs: loops, kidnapped-frame relocalization, ATE, latency")
    p.add_argument("source", help="bag or world sequence folder, with ground truth")
    p.add_argument("--out", required=True, help="output folder (compare.json, report.md, compare.png, run_<k>/)")
    p.add_argument("--runs", type=int, default=3, help="ORB-SLAM3 runs (it is not deterministic)")
    _bridge_args(p)
    p.add_argument("--keep-bags", action="store_true", help="keep each run's contract bag (run_<k>/bridge_bag)")
    p.set_defaults(func=cmd_compare)


def _bridge_args(p) -> None:
    p.add_argument("--vocabulary", default=None, help="ORB vocabulary (ORBvoc.txt); default: the one built from "
                                                      "the opencv-doc photos, cached on first use")
    p.add_argument("--sensor", default="auto", choices=("auto", "rgbd", "monocular"))
    p.add_argument("--config", default=None, help="the node's parameter file (config/reloc.yaml) for the engine")
    p.add_argument("--matcher", default=None, choices=("lightglue", "nn"), help="override engine.matcher")
    p.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"), help="override engine.device")
    p.add_argument("--kf-max-dist", type=float, default=bridge_defaults["kf_max_dist"],
                   help="bridge keyframe after this motion (m)")
    p.add_argument("--kf-max-angle", type=float, default=bridge_defaults["kf_max_angle_deg"],
                   help="... or this rotation (deg)")
    p.add_argument("--kf-max-gap", type=int, default=bridge_defaults["kf_max_gap"], help="... or this many frames")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")


def _confs(args) -> tuple[dict, dict]:
    from ..conf import deep_update
    from ..io.params import load_node_config

    engine_conf = load_node_config(args.config)[0] if args.config else {}
    engine_conf = deep_update(engine_conf, {"device": args.device} if args.device else {})
    if args.matcher:
        engine_conf = deep_update(engine_conf, {"matcher": {"name": args.matcher}})
    bridge_conf = {"vocabulary": args.vocabulary, "sensor": args.sensor, "kf_max_dist": args.kf_max_dist,
                   "kf_max_angle_deg": args.kf_max_angle, "kf_max_gap": args.kf_max_gap}
    return bridge_conf, engine_conf


def _fail(args, exc: Exception) -> int:
    print(f"agnostic-reloc {args.command}: error: {exc}", file=sys.stderr)
    return 2


def cmd_vocabulary(args: argparse.Namespace) -> int:
    from .vocabulary import build_vocabulary

    files = []
    for item in map(Path, args.photos):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.exists():
            files.append(item)
        else:
            raise FileNotFoundError(f"photo {item} does not exist")
    st = build_vocabulary(files, args.out, args.k, args.levels, args.features, args.seed)
    print(f"wrote {st['path']}: {st['words']} words ({st['nodes']} nodes, k={st['k']}, L={st['levels']}) from "
          f"{st['images']} images ({st['skipped']} skipped, {st['descriptors']} descriptors) in {st['seconds']:.0f} s")
    return 0


def cmd_bridge(args: argparse.Namespace) -> int:
    from ..io.bags import BagError
    from .bridge import BridgeError
    from .source import SourceError

    if not args.source or not args.out:
        raise ValueError("orbslam3-bridge needs SOURCE and --out (or --ros for the ROS 2 node)")
    from ..eval.runs import evaluate_run
    from ..io.results import check_out_dir, dump_json, run_results, to_jsonable
    from .offline import run_bridge

    bridge_conf, engine_conf = _confs(args)
    out = Path(args.out)
    check_out_dir(out)
    try:
        run = run_bridge(args.source, out, bridge_conf, engine_conf, not args.no_engine, out / "bag", args.storage,
                         args.max_frames)
    except (BridgeError, SourceError, BagError) as exc:
        return _fail(args, exc)
    b = run.bridge
    print(f"ORB-SLAM3 ({b['sensor']}, vocabulary {b['vocabulary']['path']}, {b['vocabulary']['words']} words): "
          f"{len(run.frames)} frames, {sum(f.is_keyframe for f in run.frames)} bridge keyframes, {b['maps']} maps "
          f"(anchored {b['anchored_maps']}), tracking p50 {b['track_ms'].get('p50', float('nan')):.0f} ms; "
          f"map points paired {100 * (b['paired_ratio_mean'] or 0):.0f}% (median {b['pair_err_px_median']} px), "
          f"octaves found {100 * (b['octave_matched_mean'] or 0):.0f}%")
    if run.result is not None:
        res = run_results(run.result)
        if run.gt:
            res["metrics"], _ = evaluate_run(run.result, run.gt)
        res["bridge"] = b
        (out / "results.json").write_text(dump_json(to_jsonable(res)))
        print(f"our engine: {len(run.result.loops)} loops, "
              f"{sum(r.success for r in run.result.relocalizations)}/{len(run.result.relocalizations)} "
              f"relocalized -> {out / 'results.json'}")
    print(f"wrote the contract bag {out / 'bag'} (replay it with `agnostic-reloc replay {out / 'bag'} --out DIR`)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..io.bags import BagError
    from .bridge import BridgeError
    from .compare import compare, table_markdown
    from .source import SourceError

    bridge_conf, engine_conf = _confs(args)
    try:
        res = compare(args.source, args.out, args.runs, bridge_conf, engine_conf, args.max_frames, args.keep_bags)
    except (BridgeError, SourceError, BagError) as exc:
        return _fail(args, exc)
    print(table_markdown(res["summary"]))
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0
