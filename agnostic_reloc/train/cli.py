"""Subcommands `train` and `evaluate-matcher` for the `agnostic-reloc` tool (wired in agnostic_reloc/cli.py)."""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger("agnostic_reloc.train")


def add_train_parser(subparsers) -> None:
    """`agnostic-reloc train CONFIG [--out DIR] [--resume]` (also works under torchrun)."""
    p = subparsers.add_parser("train", help="fine-tune LightGlue to be detector-agnostic (YAML config)")
    p.add_argument("config", help="YAML training config (see config/train/)")
    p.add_argument("--out", default=None, help="output folder (default: outputs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint_last.pth")
    p.add_argument("--export", default=None, help="after training, write float16 weights here (+ .sha256)")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    import yaml

    from .trainer import export_weights, train

    path = Path(args.config)
    if not path.is_file():
        raise FileNotFoundError(f"training config {path} does not exist")
    conf = yaml.safe_load(path.read_text()) or {}
    if not isinstance(conf, dict):
        raise ValueError(f"{path} must hold a YAML mapping")
    if args.resume:
        conf.setdefault("train", {})["resume"] = True
    out = Path(args.out or Path("outputs") / path.stem)
    res = train(conf, out)
    print(f"trained {res['step']} steps ({res['skipped']} bad samples skipped) -> {res['checkpoint'] or out}")
    if args.export and res["checkpoint"]:
        wpath, digest = export_weights(res["checkpoint"], args.export)
        print(f"exported {wpath} (sha256 {digest})")
    return 0


def add_export_parser(subparsers) -> None:
    """`agnostic-reloc export-weights CHECKPOINT OUT [--card results.json]`."""
    p = subparsers.add_parser("export-weights",
                              help="float16 LightGlue weights + sha256 + card (config, commit) from a checkpoint")
    p.add_argument("checkpoint", help="a training checkpoint (checkpoint_last.pth / checkpoint_NNNNNN.pth)")
    p.add_argument("out", help="weights file to write, e.g. agnostic_reloc/weights/<name>.pth (shipped by name)")
    p.add_argument("--card", default=None, help="JSON file whose entries go into the card (e.g. the evaluation)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from .trainer import export_weights

    if not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {args.checkpoint} does not exist")
    extra = json.loads(Path(args.card).read_text()) if args.card else None
    if extra is not None and not isinstance(extra, dict):
        raise ValueError(f"--card {args.card} must hold a JSON object")
    path, digest = export_weights(args.checkpoint, args.out, card=extra)
    print(f"exported {path} (sha256 {digest}) and its card {path.with_suffix('.json')}")
    return 0


def add_evaluate_parser(subparsers) -> None:
    """`agnostic-reloc evaluate-matcher --weights A [--weights B] [--detectors ...] [--pairs N] [--out DIR]`."""
    from ..features.detectors import DETECTORS

    p = subparsers.add_parser("evaluate-matcher", help="per-detector homography AUC: official vs fine-tuned weights")
    p.add_argument("--weights", action="append", default=None,
                   help="'official' or a checkpoint path; repeat to compare (default: official)")
    p.add_argument("--detectors", nargs="+", default=["orb-ss", "orb", "sift", "akaze", "gftt", "aliked", "disk"],
                   choices=DETECTORS)
    p.add_argument("--pairs", type=int, default=100,
                   help="homography pairs from the held-out photos (100: one pair moves an AUC by at most 1 point)")
    p.add_argument("--photos", default="holdout", choices=("holdout", "all"),
                   help="photos for the pairs: the held-out ones (default) or all")
    p.add_argument("--world-pairs", type=int, default=40,
                   help="also up to this many posed revisit pairs of a generated world sequence (pose AUC@5/10/20; "
                        "0 = none)")
    p.add_argument("--world-seed", type=int, default=0, help="seed of that world sequence")
    p.add_argument("--max-keypoints", type=int, default=1024, help="keypoints per image of the other detectors")
    p.add_argument("--deployed", nargs="*", default=["orb"], choices=DETECTORS,
                   help="detectors evaluated as the node feeds ORB-SLAM3's keypoints (1000, no suppression, "
                        "octave-aware sampling); give none to radius-NMS every detector")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", default="eval_matcher", help="output folder (results.json, auc.png)")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..eval.homography_pairs import make_pairs
    from ..eval.photos import list_photos
    from .data import DEFAULT_HOLDOUT, select_photos
    from .evaluate import evaluate_matcher, world_posed_pairs

    if args.pairs <= 0:
        raise ValueError(f"--pairs must be positive, got {args.pairs}")
    photos = list_photos()
    if args.photos == "holdout":
        photos = select_photos(photos, DEFAULT_HOLDOUT, "holdout")
    pairs = make_pairs(photos, args.pairs, seed=args.seed)
    posed = world_posed_pairs(args.world_pairs, args.world_seed) if args.world_pairs else None
    evaluate_matcher(args.weights or ["official"], args.detectors, pairs=pairs, posed=posed, out_dir=args.out,
                     conf={"max_keypoints": args.max_keypoints, "device": args.device, "deployed": args.deployed})
    return 0
