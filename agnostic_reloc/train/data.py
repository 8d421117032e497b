"""Training pairs for detector-agnostic LightGlue: keypoints from a mix of detectors, ALIKED descriptors at them.

Every sample is a dict:
    image0, image1: RGB uint8 [H x W x 3]; image_size0, image_size1: [2] float (W, H)
    keypoints0 [M x 2], keypoints1 [N x 2]: float32 pixels: radius-NMS'd, except for `deployed` detectors, which
        come exactly as the engine takes the SLAM's keypoints (no suppression, octave-aware sampling)
    descriptors0 [M x D], descriptors1 [N x D]: float32, from the FROZEN ALIKED (no grad) at those keypoints
    gt_matches0 [M], gt_matches1 [N]: int64, index / -1 unmatched / -2 ignored (see `groundtruth`)
    detector: name of the detector (or "+"-joined ensemble), name: sample name
Bad samples (unreadable image, missing depth, too few correspondences) come back as {"skipped": reason};
`collate` drops and counts them, so a run never crashes on data.

Cached features: ALIKED is frozen, so with `resample_each_epoch: false` and `cache: disk` every pair is detected,
described and labelled once and then read back for every epoch (images are not kept in the cache). The cache
files are named by a fingerprint of the dataset's whole config, so a changed config never reads stale features.

Datasets: `HomographyDataset` (photos + synthetic homographies, `homography_pairs`), `MegaDepthDataset`
(LoFTR / glue-factory layout), `WorldDataset` (posed sequences of `agnostic_reloc.world`, imported lazily).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import torch

from ..conf import merge_conf
from ..features.detectors import DETECTORS, detect
from ..features.keypoints import Keypoints
from ..features.suppression import suppress
from ..io.image import load_image
from . import groundtruth

logger = logging.getLogger("agnostic_reloc.train")

# Photos of the Debian opencv-doc set held out of training by default (fnmatch patterns on file names): the most
# visually distinct scenes, each with its sibling shots so that no near-duplicate leaks into training:
# aerial city views, a circuit board, the Oxford graffiti wall, a Leuven street, and a painting.
DEFAULT_HOLDOUT = ("aero[13].jpg", "board.jpg", "graf[13].png", "leuven[AB].jpg", "starry_night.jpg")

default_keypoint_conf = {
    "detectors": ["orb-ss", "orb", "sift", "gftt", "aliked", "disk"],  # names (or {name: weight}) to draw from
    "mode": "per_sample",  # per_sample: one detector per pair (both images); ensemble: union of all, then NMS
    "max_keypoints": 512,  # keypoints per image after NMS (strongest first)
    "nms_radius": 3.0,  # radius NMS across octaves (px) of the non-deployed detectors; must be > 0
    "deployed": [],  # detectors fed as the engine feeds the SLAM's keypoints: no NMS, octave-aware sampling
    "deployed_max_keypoints": 1000,  # keypoints per image of a deployed detector (ORB-SLAM3's nFeatures)
    "aliked_model": "aliked-n16",  # frozen descriptor network (must match the LightGlue weights' features)
    "sampling": "full",  # ALIKED sampling at the non-deployed detectors' keypoints: full | octave
    "device": "cpu",  # device of ALIKED / DISK / ALIKED-detector when computing features
}

default_data_conf = {
    "min_matches": 16,  # pairs with fewer ground-truth matches are skipped
    "match_px": groundtruth.default_conf["match_px"],  # ground-truth match threshold (px)
    "unmatched_px": groundtruth.default_conf["unmatched_px"],  # ground-truth unmatched threshold (px)
    "depth_rel_tol": groundtruth.default_conf["depth_rel_tol"],  # depth consistency for visibility (relative)
    "seed": 0,  # base seed: sample i of epoch e depends only on (seed, e, i)
    "resample_each_epoch": True,  # new augmentation / detector draw every epoch (disables caching)
    "cache": "none",  # none | memory | disk: keep computed samples (only when resample_each_epoch is False)
    "cache_dir": None,  # folder for cache: disk
    "octave_tol": groundtruth.default_conf["octave_tol"],  # multi-scale labels: octave slack (levels; None = off)
}


class SkipSample(Exception):
    """A sample that cannot be used (reason in the message); it is counted and dropped, never fatal."""


def _detector_weights(detectors) -> tuple[list[str], np.ndarray]:
    if isinstance(detectors, dict):
        names, w = list(detectors), np.array([float(v) for v in detectors.values()])
    else:
        names, w = list(detectors), np.ones(len(detectors))
    if not names:
        raise ValueError("keypoints.detectors must name at least one detector")
    for n in names:
        if n not in DETECTORS and n != "sequence":
            raise ValueError(f"unknown training detector '{n}'; known: {', '.join(DETECTORS)} (and 'sequence' for "
                             "world sequences); xfeat is not supported")
    if np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"detector weights must be >= 0 with a positive sum, got {dict(zip(names, w))}")
    return names, w / w.sum()


class KeypointSampler:
    """Keypoints from a configurable detector mix, radius-NMS'd, and frozen-ALIKED descriptors at them."""

    def __init__(self, conf: dict | None = None) -> None:
        self.conf = merge_conf(default_keypoint_conf, conf, "keypoints options")
        self.names, self.weights = _detector_weights(self.conf["detectors"])
        if self.conf["mode"] not in ("per_sample", "ensemble"):
            raise ValueError(f"keypoints.mode must be per_sample or ensemble, got {self.conf['mode']!r}")
        if not self.conf["nms_radius"] > 0:
            raise ValueError("keypoints.nms_radius must be > 0: nearby keypoints are always removed for training")
        for key in ("max_keypoints", "deployed_max_keypoints"):
            if int(self.conf[key]) <= 0:
                raise ValueError(f"keypoints.{key} must be positive, got {self.conf[key]}")
        unknown = [d for d in self.conf["deployed"] if d not in DETECTORS]
        if unknown:
            raise ValueError(f"keypoints.deployed names unknown detectors {unknown}; known: {', '.join(DETECTORS)}")
        self._aliked = None

    @property
    def aliked(self):
        if self._aliked is None:
            from ..features.aliked import get_aliked

            self._aliked = get_aliked(self.conf["aliked_model"], self.conf["device"], sampling=self.conf["sampling"])
        return self._aliked

    def choose(self, rng: np.random.Generator) -> list[str]:
        """Detectors for one pair: one drawn by weight (per_sample) or all (ensemble)."""
        if self.conf["mode"] == "ensemble":
            return [n for n, w in zip(self.names, self.weights) if w > 0]
        return [self.names[int(rng.choice(len(self.names), p=self.weights))]]

    def deployed(self, detectors: list[str]) -> bool:
        """True if these detectors' keypoints go in as the engine takes the SLAM's (no NMS, octave sampling)."""
        return all(d in self.conf["deployed"] for d in detectors)

    def keypoints(self, image: np.ndarray, detectors: list[str], given: Keypoints | None = None) -> Keypoints:
        """Detect with each detector, merge, radius-NMS (not for deployed ones), keep the strongest."""
        if self.deployed(detectors):
            k = int(self.conf["deployed_max_keypoints"])
            parts = [detect(image, name, k, device=self.conf["device"]) for name in detectors]
            return Keypoints.concat(parts) if len(parts) > 1 else parts[0]
        k = int(self.conf["max_keypoints"])
        parts = []
        for name in detectors:
            if name == "sequence":
                if given is None:
                    raise SkipSample("detector 'sequence' needs keypoints stored with the frame")
                parts.append(given)
            else:
                parts.append(detect(image, name, 2 * k, device=self.conf["device"]))
        kpts = Keypoints.concat(parts) if len(parts) > 1 else parts[0]
        if len(detectors) > 1:  # responses of different detectors are not comparable: rank-normalise each
            ranks = [1.0 - np.argsort(np.argsort(-p.response, kind="stable"), kind="stable") / max(len(p), 1)
                     for p in parts]
            kpts.response = np.concatenate(ranks).astype(np.float32)
        keep = suppress(kpts, "radius", radius=float(self.conf["nms_radius"]), max_keypoints=k)
        return kpts.subset(keep)

    def describe(self, images: list[np.ndarray], kpts: list[Keypoints],
                 detectors: list[str] | None = None) -> list[torch.Tensor]:
        """Frozen ALIKED descriptors [N_i x D] (float32, CPU, ordinary tensors usable in autograd graphs).

        Keypoints of deployed `detectors` are sampled octave-aware (as the engine does), others by `sampling`.
        """
        sampling = "octave" if detectors and self.deployed(detectors) else self.conf["sampling"]
        with torch.no_grad():
            descs = self.aliked.describe(images, kpts, sampling=sampling)
        return [d.detach().cpu().float().clone() for d in descs]


def _levels(k0: Keypoints, k1: Keypoints, detectors: list[str]) -> tuple | None:
    """(octave0, octave1, scale_factor) for octave-aware labels, when both sets come from one pyramid detector."""
    if len(detectors) != 1 or k0.scale_factor != k1.scale_factor or k0.scale_factor <= 1.0:
        return None
    return k0.octave, k1.octave, float(k0.scale_factor)


def _finish(image0, image1, k0: Keypoints, k1: Keypoints, desc, gt, detector: str, name: str,
            min_matches: int, extra: dict | None = None) -> dict:
    n_matches = int((gt[0] >= 0).sum())
    if n_matches < min_matches:
        raise SkipSample(f"{name}: only {n_matches} ground-truth matches (< {min_matches})")
    sample = {
        "image0": image0, "image1": image1,
        "image_size0": torch.tensor([image0.shape[1], image0.shape[0]], dtype=torch.float32),
        "image_size1": torch.tensor([image1.shape[1], image1.shape[0]], dtype=torch.float32),
        "keypoints0": torch.from_numpy(k0.xy.astype(np.float32)),
        "keypoints1": torch.from_numpy(k1.xy.astype(np.float32)),
        "descriptors0": desc[0], "descriptors1": desc[1],
        "gt_matches0": torch.from_numpy(gt[0]), "gt_matches1": torch.from_numpy(gt[1]),
        "detector": detector, "name": name,
    }
    sample.update(extra or {})
    return sample


class PairDataset(torch.utils.data.Dataset):
    """Common machinery: per-(epoch, index) seeding, skip-and-count of bad samples, optional caching."""

    def __init__(self, conf: dict | None, keypoint_conf: dict | None, extra_defaults: dict) -> None:
        defaults = {**default_data_conf, **extra_defaults}
        # sub-dicts (e.g. `homography`) are handed to their own component, which checks them
        self.conf = merge_conf(defaults, conf, f"{type(self).__name__} options",
                               free=[k for k, v in defaults.items() if isinstance(v, dict)])
        self.sampler = KeypointSampler(keypoint_conf)
        self.epoch = 0
        self.skipped: dict[str, int] = {}  # reason kind -> count (this process only; collate counts per batch)
        if self.conf["cache"] not in ("none", "memory", "disk"):
            raise ValueError(f"cache must be none, memory or disk, got {self.conf['cache']!r}")
        if self.conf["cache"] == "disk" and not self.conf["cache_dir"]:
            raise ValueError("cache: disk needs cache_dir")
        self._memory: dict[int, dict] = {}
        blob = json.dumps([type(self).__name__, self.conf, self.sampler.conf], sort_keys=True, default=str)
        self.fingerprint = hashlib.sha1(blob.encode()).hexdigest()[:12]

    def set_epoch(self, epoch: int) -> None:
        """Samples of a new epoch draw new augmentations / detectors (if resample_each_epoch)."""
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        epoch = self.epoch if self.conf["resample_each_epoch"] else 0
        return np.random.default_rng([int(self.conf["seed"]), epoch, int(index)])

    def _caching(self) -> bool:
        return self.conf["cache"] != "none" and not self.conf["resample_each_epoch"]

    def __getitem__(self, index: int) -> dict:
        if self._caching():
            if index in self._memory:
                return self._memory[index]
            path = Path(self.conf["cache_dir"] or ".") / f"{self.fingerprint}_{index:07d}.pt"
            if self.conf["cache"] == "disk" and path.is_file():
                try:
                    return torch.load(path, weights_only=False)
                except Exception as exc:  # a half-written or corrupt file: compute the sample again
                    logger.warning("cache file %s unreadable (%s); recomputing it", path, type(exc).__name__)
        try:
            sample = self.load(index)
        except SkipSample as exc:  # a property of the pair: cached like a sample, so it is not recomputed
            sample = self._skip("skip", str(exc))
        except (OSError, ValueError, KeyError, IndexError, cv2.error, RuntimeError) as exc:
            return self._skip(type(exc).__name__, f"sample {index}: {type(exc).__name__}: {exc}")
        if self._caching():  # features and labels only: training never looks at the images
            sample = {k: v for k, v in sample.items() if k not in ("image0", "image1")}
            if self.conf["cache"] == "memory":
                self._memory[index] = sample
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                torch.save(sample, tmp)
                tmp.replace(path)  # atomic: an interrupted run never leaves a half-written sample
        return sample

    def _skip(self, kind: str, reason: str) -> dict:
        self.skipped[kind] = self.skipped.get(kind, 0) + 1
        logger.debug("skipping sample: %s", reason)
        return {"skipped": reason}

    def load(self, index: int) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def posed_sample(self, index: int, image0, image1, depth0, depth1, K0, K1, T_0to1, name: str,
                     given: tuple[Keypoints | None, Keypoints | None] = (None, None)) -> dict:
        """Keypoints, descriptors and depth ground truth for a posed pair."""
        rng = self.rng(index)
        dets = self.sampler.choose(rng)
        k0 = self.sampler.keypoints(image0, dets, given[0])
        k1 = self.sampler.keypoints(image1, dets, given[1])
        gt = groundtruth.matches_from_depth(k0.xy, k1.xy, depth0, depth1, K0, K1, T_0to1, self.conf["match_px"],
                                            self.conf["unmatched_px"], self.conf["depth_rel_tol"],
                                            _levels(k0, k1, dets), self.conf["octave_tol"])
        n_ok = int((gt[0] >= 0).sum())
        if n_ok < self.conf["min_matches"]:  # check before paying for descriptors
            raise SkipSample(f"{name}: only {n_ok} ground-truth matches (< {self.conf['min_matches']})")
        desc = self.sampler.describe([image0, image1], [k0, k1], dets)
        extra = {"K0": torch.from_numpy(np.asarray(K0, np.float32)), "K1": torch.from_numpy(np.asarray(K1, np.float32)),
                 "T_0to1": torch.from_numpy(np.asarray(T_0to1, np.float32))}
        return _finish(image0, image1, k0, k1, desc, gt, "+".join(dets), name, self.conf["min_matches"], extra)


def select_photos(photos: list, holdout=DEFAULT_HOLDOUT, split: str = "train") -> list[Path]:
    """Split photos by file name: 'train' drops those matching a holdout pattern, 'holdout' keeps only them."""
    if split not in ("train", "holdout"):
        raise ValueError(f"split must be train or holdout, got {split!r}")
    patterns = list(holdout or ())

    def held(p) -> bool:
        return any(fnmatch.fnmatchcase(Path(p).name, pat) for pat in patterns)

    out = [Path(p) for p in photos if held(p) == (split == "holdout")]
    if not out:
        raise ValueError(f"no photo left for split '{split}' (holdout {patterns}, {len(photos)} photos)")
    return out


class HomographyDataset(PairDataset):
    """Synthetic homography pairs of real photos (photometric + geometric augmentation from homography_pairs)."""

    extra_defaults = {
        "n_pairs": 1000,  # pairs per epoch (cycling through the photos)
        "holdout": list(DEFAULT_HOLDOUT),  # photo names (fnmatch patterns) never used for training
        "split": "train",  # train: photos not held out; holdout: only the held-out photos (evaluation)
        "homography": {"size": [640, 480]},  # homography_pairs conf (size, difficulty_range, ...)
    }

    def __init__(self, photos: list | None = None, conf: dict | None = None, keypoint_conf: dict | None = None):
        super().__init__(conf, keypoint_conf, self.extra_defaults)
        if photos is None:
            from ..eval.photos import list_photos

            photos = list_photos()
        self.photos = select_photos(photos, self.conf["holdout"], self.conf["split"])
        self.hconf = {k: tuple(v) if isinstance(v, list) else v for k, v in (self.conf["homography"] or {}).items()}
        self._images: dict[int, np.ndarray] = {}
        logger.info("homography data: %d pairs/epoch from %d photos (%s split)", self.conf["n_pairs"],
                    len(self.photos), self.conf["split"])

    def __len__(self) -> int:
        return int(self.conf["n_pairs"])

    def load(self, index: int) -> dict:
        from ..eval.homography_pairs import make_pair

        j = index % len(self.photos)
        if j not in self._images:
            self._images[j] = load_image(self.photos[j])
        rng = self.rng(index)
        pair = make_pair(self._images[j], rng, self.hconf, name=f"{index:05d}_{self.photos[j].stem}")
        dets = self.sampler.choose(rng)
        k0 = self.sampler.keypoints(pair.image0, dets)
        k1 = self.sampler.keypoints(pair.image1, dets)
        gt = groundtruth.matches_from_homography(k0.xy, k1.xy, pair.H_0to1, self.conf["match_px"],
                                                 self.conf["unmatched_px"], _levels(k0, k1, dets),
                                                 self.conf["octave_tol"])
        if int((gt[0] >= 0).sum()) < self.conf["min_matches"]:
            raise SkipSample(f"{pair.name}: only {int((gt[0] >= 0).sum())} ground-truth matches")
        desc = self.sampler.describe([pair.image0, pair.image1], [k0, k1], dets)
        return _finish(pair.image0, pair.image1, k0, k1, desc, gt, "+".join(dets), pair.name,
                       self.conf["min_matches"], {"H_0to1": torch.from_numpy(pair.H_0to1.astype(np.float32))})


def _resize(image: np.ndarray, depth: np.ndarray, K: np.ndarray, max_side: int | None):
    if not max_side or max(image.shape[:2]) <= max_side:
        return image, depth, K
    h, w = image.shape[:2]
    s = max_side / max(h, w)
    nw, nh = max(8, round(w * s)), max(8, round(h * s))
    image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    depth = cv2.resize(depth.astype(np.float32), (nw, nh), interpolation=cv2.INTER_NEAREST)
    sx, sy = nw / w, nh / h
    S = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])  # pixel centres at integers
    return image, depth, S @ K


class MegaDepthDataset(PairDataset):
    """Posed pairs in the LoFTR / glue-factory MegaDepth layout.

    root/: images and depth files at the (relative) paths listed in the scene infos;
    scene_info_dir/<scene>.npz: image_paths [I], depth_paths [I] (.h5 with dataset 'depth'), intrinsics [I x 3 x 3],
    poses [I x 4 x 4] (world -> camera), pair_infos [P] of ((i, j), overlap, central_matches).
    """

    extra_defaults = {
        "scenes": None,  # scene names (npz stems) to use; None = all in scene_info_dir
        "min_overlap": 0.1,  # pair overlap score range
        "max_overlap": 0.7,
        "pairs_per_scene": 200,  # at most this many pairs per scene (drawn with `seed`)
        "resize_max": 640,  # longer image side after resizing (K and depth follow); null = original size
    }

    def __init__(self, root: str, scene_info_dir: str, conf: dict | None = None, keypoint_conf: dict | None = None):
        super().__init__(conf, keypoint_conf, self.extra_defaults)
        self.root, info_dir = Path(root), Path(scene_info_dir)
        if not info_dir.is_dir():
            raise FileNotFoundError(f"MegaDepth scene_info_dir {info_dir} does not exist")
        files = sorted(info_dir.glob("*.npz"))
        if self.conf["scenes"] is not None:
            wanted = set(self.conf["scenes"])
            files = [f for f in files if f.stem in wanted]
        rng = np.random.default_rng(int(self.conf["seed"]))
        self.scenes: dict[str, dict] = {}
        self.items: list[tuple[str, int, int]] = []
        for f in files:
            info = dict(np.load(f, allow_pickle=True))
            for key in ("image_paths", "depth_paths", "intrinsics", "poses", "pair_infos"):
                if key not in info:
                    raise ValueError(f"scene info {f} lacks '{key}'")
            pairs = [(int(p[0][0]), int(p[0][1])) for p in info["pair_infos"]
                     if self.conf["min_overlap"] <= float(p[1]) <= self.conf["max_overlap"]]
            if len(pairs) > self.conf["pairs_per_scene"]:
                pairs = [pairs[k] for k in np.sort(rng.choice(len(pairs), self.conf["pairs_per_scene"], replace=False))]
            self.scenes[f.stem] = info
            self.items += [(f.stem, i, j) for i, j in pairs]
        if not self.items:
            raise ValueError(f"no MegaDepth pair in {info_dir} with overlap in "
                             f"[{self.conf['min_overlap']}, {self.conf['max_overlap']}]")
        logger.info("MegaDepth data: %d pairs from %d scenes", len(self.items), len(self.scenes))

    def __len__(self) -> int:
        return len(self.items)

    def _view(self, info: dict, i: int):
        import h5py

        ipath, dpath = info["image_paths"][i], info["depth_paths"][i]
        if ipath is None or dpath is None:
            raise SkipSample(f"view {i} has no image or depth path")
        image = load_image(self.root / str(ipath))
        dfile = self.root / str(dpath)
        if not dfile.is_file():
            raise SkipSample(f"missing depth {dfile}")
        with h5py.File(dfile, "r") as f:
            depth = np.asarray(f["depth"], np.float32)
        if depth.shape[:2] != image.shape[:2]:  # MegaDepth depth can be smaller: bring it to image size
            depth = cv2.resize(depth, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
        return _resize(image, depth, np.asarray(info["intrinsics"][i], np.float64).reshape(3, 3),
                       self.conf["resize_max"])

    def load(self, index: int) -> dict:
        scene, i, j = self.items[index]
        info = self.scenes[scene]
        img0, dep0, K0 = self._view(info, i)
        img1, dep1, K1 = self._view(info, j)
        P0 = np.asarray(info["poses"][i], np.float64).reshape(4, 4)
        P1 = np.asarray(info["poses"][j], np.float64).reshape(4, 4)
        return self.posed_sample(index, img0, img1, dep0, dep1, K0, K1, P1 @ np.linalg.inv(P0),
                                 f"{scene}_{i}_{j}")


class WorldDataset(PairDataset):
    """Frame pairs of generated world sequences (`agnostic_reloc.world.make_sequence`, imported lazily).

    Each sequence frame needs image, depth (z, inf/0 = none), T_world_cam (4x4) and optionally keypoints
    (use the detector name 'sequence' to train on them); the sequence holds K. Pairs are either nearby frames
    (`pairs: gaps`) or revisits (`pairs: revisits`: every later-lap keyframe with every earlier-lap keyframe within
    the distance and angle limits: the loop-closure case, other viewpoint and lighting).
    """

    extra_defaults = {
        "seeds": [0],  # one sequence per seed
        "profile": "loop",  # trajectory profile passed to make_sequence: loop | kidnap | mixed
        "world": None,  # make_sequence conf overrides, e.g. {camera: {width: 320, height: 240, f: 250}}
        "n_frames": 20,  # frames per sequence (None: the profile's own length)
        "pairs": "gaps",  # gaps: frames (a, a + g); revisits: later-lap keyframe with earlier-lap keyframe
        "frame_gaps": [1, 5],  # pairs: gaps: g in this inclusive range
        "revisit_max_dist": 1.5,  # pairs: revisits: camera centres at most this far apart (m)
        "revisit_max_angle": 30.0,  # pairs: revisits: relative rotation at most this (deg)
        "max_pairs": 500,  # at most this many pairs (drawn with `seed`)
    }

    def __init__(self, conf: dict | None = None, keypoint_conf: dict | None = None):
        super().__init__(conf, keypoint_conf, self.extra_defaults)
        if self.conf["pairs"] not in ("gaps", "revisits"):  # before paying for the sequences
            raise ValueError(f"world pairs must be gaps or revisits, got {self.conf['pairs']!r}")
        try:
            from ..world import make_sequence
        except ImportError as exc:
            raise ImportError(f"WorldDataset needs agnostic_reloc.world.make_sequence ({exc})") from exc
        self.sequences = []
        n_frames = None if self.conf["n_frames"] is None else int(self.conf["n_frames"])
        for seed in self.conf["seeds"]:
            self.sequences.append(make_sequence(seed=int(seed), profile=self.conf["profile"], n_frames=n_frames,
                                                conf=self.conf["world"], progress=False))
        if self.conf["pairs"] == "gaps":
            lo, hi = self.conf["frame_gaps"]
            self.items = [(s, a, a + g) for s, seq in enumerate(self.sequences) for g in range(int(lo), int(hi) + 1)
                          for a in range(len(seq.frames) - g)]
        else:
            self.items = [(s, a, b) for s, seq in enumerate(self.sequences) for a, b in self._revisits(seq)]
        if len(self.items) > self.conf["max_pairs"]:
            rng = np.random.default_rng(int(self.conf["seed"]))
            self.items = [self.items[k] for k in np.sort(rng.choice(len(self.items), self.conf["max_pairs"], False))]
        if not self.items:
            raise ValueError("world sequences gave no frame pair; check n_frames, frame_gaps / revisit limits")
        used = {(s, i) for s, a, b in self.items for i in (a, b)}
        for s, seq in enumerate(self.sequences):  # frames no pair uses: drop their images and depth (memory)
            for i, f in enumerate(seq.frames):
                if (s, i) not in used:
                    f.image, f.depth, f.plane_id = None, None, None

    def _revisits(self, seq) -> list[tuple[int, int]]:
        """(earlier-lap keyframe, later-lap keyframe) index pairs within the revisit limits."""
        from ..world.sequence import gt_revisits

        return [(g, f) for f, g, _, _ in gt_revisits(seq, self.conf["revisit_max_dist"],
                                                      self.conf["revisit_max_angle"], nearest_only=False)]

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> dict:
        s, a, b = self.items[index]
        seq = self.sequences[s]
        f0, f1 = seq.frames[a], seq.frames[b]
        K = np.asarray(seq.K, np.float64)
        T_0to1 = np.linalg.inv(np.asarray(f1.T_world_cam, np.float64)) @ np.asarray(f0.T_world_cam, np.float64)

        def given(f):
            k = getattr(f, "keypoints", None)
            if k is None or isinstance(k, Keypoints):
                return k
            return Keypoints(np.asarray(k, np.float32)[:, :2])

        return self.posed_sample(index, f0.image, f1.image, np.asarray(f0.depth), np.asarray(f1.depth), K, K, T_0to1,
                                 f"world{s}_{a}_{b}", (given(f0), given(f1)))


class MixedDataset(torch.utils.data.ConcatDataset):
    """Several pair datasets as one (e.g. homography pairs of photos + world revisits), one keypoint conf."""

    def set_epoch(self, epoch: int) -> None:
        for d in self.datasets:
            d.set_epoch(epoch)

    @property
    def skipped(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.datasets:
            for k, v in d.skipped.items():
                out[k] = out.get(k, 0) + v
        return out


def collate(samples: list[dict]) -> dict | None:
    """Pad a list of samples to the batch's max keypoint counts.

    Returns (None if every sample was skipped):
        keypoints0 [B x M x 2], descriptors0 [B x M x D], gt_matches0 [B x M] (-2 on padding), mask0 [B x M] bool,
        same for image 1, image_size0 / image_size1 [B x 2], detector / name: lists, image0 / image1: lists,
        n_skipped: skipped samples dropped from this batch, skip_reasons: their reasons.
    """
    good = [s for s in samples if "skipped" not in s]
    reasons = [s["skipped"] for s in samples if "skipped" in s]
    if not good:
        return None if not reasons else {"n_skipped": len(reasons), "skip_reasons": reasons, "empty": True}
    out: dict = {"n_skipped": len(reasons), "skip_reasons": reasons}
    for side in ("0", "1"):
        n = max(len(s["keypoints" + side]) for s in good)
        d = good[0]["descriptors" + side].shape[-1]
        b = len(good)
        kp = torch.zeros(b, n, 2)
        desc = torch.zeros(b, n, d)
        gt = torch.full((b, n), groundtruth.IGNORE, dtype=torch.long)
        mask = torch.zeros(b, n, dtype=torch.bool)
        for k, s in enumerate(good):
            m = len(s["keypoints" + side])
            kp[k, :m], desc[k, :m], gt[k, :m], mask[k, :m] = (s["keypoints" + side], s["descriptors" + side],
                                                               s["gt_matches" + side], True)
        out.update({"keypoints" + side: kp, "descriptors" + side: desc, "gt_matches" + side: gt, "mask" + side: mask,
                    "image_size" + side: torch.stack([s["image_size" + side] for s in good]),
                    "image" + side: [s.get("image" + side) for s in good]})
    out["detector"] = [s["detector"] for s in good]
    out["name"] = [s["name"] for s in good]
    return out


def build_dataset(conf: dict, photos: list | None = None) -> PairDataset:
    """Dataset from the trainer's `data` conf: {name: homography|megadepth|world|mixed, keypoints: {...}, ...}.

    mixed: {name: mixed, parts: [{name: homography, ...}, {name: world, ...}], keypoints: {...}, <shared keys>}:
    every part gets the shared keys (cache, seed, ...) and the keypoint conf, its own keys win.
    """
    conf = dict(conf)
    name = conf.pop("name", "homography")
    kconf = conf.pop("keypoints", None)
    for key in ("batch_size", "num_workers"):
        conf.pop(key, None)
    if name == "mixed":
        parts = conf.pop("parts", None)
        if not parts:
            raise ValueError("data.name mixed needs data.parts: a list of dataset confs")
        return MixedDataset([build_dataset({**conf, **part, "keypoints": kconf}, photos) for part in parts])
    if name == "homography":
        listed = conf.pop("photos", None)  # optional: folders or files of photos (default: list_photos())
        if photos is None and listed:
            from ..eval.photos import IMAGE_SUFFIXES

            photos = []
            for entry in ([listed] if isinstance(listed, str) else listed):
                entry = Path(entry)
                photos += sorted(p for p in entry.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
                    if entry.is_dir() else [entry]
        return HomographyDataset(photos, conf, kconf)
    if name == "megadepth":
        root, info = conf.pop("root", None), conf.pop("scene_info_dir", None)
        if not root or not info:
            raise ValueError("data.name megadepth needs data.root and data.scene_info_dir")
        return MegaDepthDataset(root, info, conf, kconf)
    if name == "world":
        return WorldDataset(conf, kconf)
    raise ValueError(f"unknown data.name {name!r}; choose homography, megadepth, world or mixed")
