"""ALIKED descriptors sampled at *given* keypoints (any detector), plus ALIKED's own detector.

The dense feature map is computed once per image (or once per pyramid level for octave-aware
sampling) and the SDDH head samples a descriptor at every requested keypoint. Keypoints of a
multi-scale detector (ORB-SLAM3: 8 levels, factor 1.2) can be described from the map of the
image resized by 1/1.2^octave at their rescaled position ("octave" sampling), which keeps the
descriptor's support region proportional to the keypoint's scale.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch
from kornia.feature import ALIKED

from ..conf import merge_conf
from ..inference import BackboneRunner, DenseMapRunner
from ..inference.backends import intra_op_threads
from ..io.image import check_image, to_tensor
from ..weights import WeightsError, official_path
from .aliked_sparse import SparseSddh, pad_to_multiple
from .keypoints import Keypoints

SAMPLING_MODES = ("full", "octave")
EVALUATIONS = ("sparse", "dense")
MODELS = ("aliked-n16", "aliked-n16rot", "aliked-n32", "aliked-t16")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto'/None -> cuda when available, else cpu; a clear error for an unavailable CUDA."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch has no CUDA device here; use --device cpu")
    return device


class AlikedExtractor:
    """Frozen ALIKED network: dense maps, sampling at given keypoints, and top-k detection."""

    default_conf = {
        "model_name": "aliked-n16",  # aliked-n16 | aliked-n16rot | aliked-n32 | aliked-t16
        "device": "auto",  # cpu | cuda | auto
        "half": True,  # float16 weights and maps on CUDA (ignored on CPU)
        "sampling": "octave",  # full: one map at full resolution; octave: map per pyramid level
        "octave_levels": (0, 1, 2, 3, 4, 5, 6, 7),  # levels with their own map; others use the nearest
        "detection_radius": 2,  # NMS radius of ALIKED's own detector
        "backend": "auto",  # backbone / dense-map runtime: auto | torch | openvino | onnxruntime (inference.backends)
        "evaluation": "sparse",  # sparse: backbone + SDDH reading only the pixels it samples (features.aliked_sparse:
        # the same descriptors to ~1e-5, ~4x less CPU); dense: kornia's full-resolution map, as ALIKED ships it
    }

    def __init__(self, **conf) -> None:
        self.conf = merge_conf(self.default_conf, conf, "AlikedExtractor options")
        if self.conf["model_name"] not in MODELS:
            raise ValueError(f"unknown ALIKED model '{self.conf['model_name']}'; choose from {MODELS}")
        if self.conf["sampling"] not in SAMPLING_MODES:
            raise ValueError(f"unknown sampling '{self.conf['sampling']}'; choose from {SAMPLING_MODES}")
        if self.conf["evaluation"] not in EVALUATIONS:
            raise ValueError(f"unknown evaluation '{self.conf['evaluation']}'; choose from {EVALUATIONS}")
        self.device = resolve_device(self.conf["device"])
        self.dtype = torch.float16 if (self.conf["half"] and self.device.type == "cuda") else torch.float32
        model = ALIKED(model_name=self.conf["model_name"], max_num_keypoints=1000,
                       detection_threshold=0.0, nms_radius=self.conf["detection_radius"])
        state = torch.load(official_path(self.conf["model_name"]), map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        learned = {n for n, _ in model.named_parameters()}
        if unexpected or any(m in learned for m in missing):
            raise WeightsError(f"ALIKED weights do not fit {self.conf['model_name']}: "
                               f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        self.model = model.eval().to(self.device, self.dtype).requires_grad_(False)
        self.descriptor_dim = int(self.model.desc_head.sf_conv.out_channels)
        # the image-sized networks on the CPU runtime; the SDDH sampling head stays in torch. The dense map
        # (score head included) serves ALIKED's own detection and `evaluation: dense`; the backbone the rest.
        self.dense = DenseMapRunner(self.model, backend=self.conf["backend"])
        self.backbone = BackboneRunner(self.model, backend=self.conf["backend"])
        self.sparse = SparseSddh(self.model)
        self.backend = self.backbone.backend
        self.lock = threading.Lock()  # the model is shared; kornia's DKD state is mutated per call
        self._level_pool: ThreadPoolExecutor | None = None  # helpers of `workers` > 1 (started on first use)
        self._level_helpers = 0  # threads of that pool

    # ------------------------------------------------------------------ dense maps
    @torch.inference_mode()
    def dense_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B x 3 x H x W] float in [0, 1] -> (features [B x D x H x W], scores [B x 1 x H x W])."""
        return self.dense(images.to(self.device, self.dtype))

    @staticmethod
    def _normalized(xy: list[torch.Tensor], size: tuple[int, int], device: torch.device) -> list[torch.Tensor]:
        """Pixel positions [N_i x 2] of an (h, w) map -> SDDH's [-1, 1] coordinates (clamped inside the map)."""
        h, w = size
        scale = torch.tensor([2.0 / (w - 1), 2.0 / (h - 1)], device=device)
        return [(p.to(device, torch.float32) * scale - 1.0).clamp(-1, 1) for p in xy]

    @torch.inference_mode()
    def sample(self, feature_map: torch.Tensor, xy: list[torch.Tensor]) -> list[torch.Tensor]:
        """SDDH descriptors at pixel positions of the map: list of [N_i x 2] -> list of [N_i x D]."""
        norm = self._normalized(xy, feature_map.shape[-2:], feature_map.device)
        nonempty = [i for i, p in enumerate(norm) if len(p)]
        out = [torch.zeros(0, self.descriptor_dim, device=feature_map.device) for _ in xy]
        if nonempty:
            descs, _ = self.model.desc_head(feature_map[nonempty], [norm[i] for i in nonempty])
            for i, d in zip(nonempty, descs):
                out[i] = d.float()
        return out

    @torch.inference_mode()
    def sample_sparse(self, images: torch.Tensor, xy: list[torch.Tensor]) -> list[torch.Tensor]:
        """The descriptors `sample(dense_maps(images)[0], xy)` gives, from the backbone and the pixels SDDH reads.

        images: [B x 3 x H x W] float in [0, 1]; xy: B tensors [N_i x 2] of pixel positions -> B x [N_i x D].
        """
        size = tuple(images.shape[-2:])
        padded, pad = pad_to_multiple(images.to(self.device, self.dtype))
        # channels-last: ~25 % faster convolutions in torch on CPU, and block 1's features gathered as rows
        padded = padded.contiguous(memory_format=torch.channels_last)
        maps = [t.to(self.device, self.dtype) for t in self.backbone(padded)]
        maps[0] = maps[0].contiguous(memory_format=torch.channels_last)
        out = []
        for i, p in enumerate(self._normalized(xy, size, self.device)):
            if len(p) == 0:
                out.append(torch.zeros(0, self.descriptor_dim, device=self.device))
                continue
            out.append(self.sparse(tuple(t[i:i + 1] for t in maps), pad, size, p).float())
        return out

    # ------------------------------------------------------------------ public API
    def describe(self, images: list[np.ndarray], keypoints: list[Keypoints],
                 sampling: str | None = None, workers: int = 1,
                 share_when: Callable[[], bool] | None = None) -> list[torch.Tensor]:
        """Descriptors [N_i x D] (float32, L2-normalised, on self.device) at the given keypoints.

        Args:
            images: RGB (or gray) uint8 images; same-size images are batched in one forward.
            keypoints: one Keypoints per image, coordinates in that image's pixels.
            sampling: 'full' or 'octave' (default: conf).
            workers: CPU, octave sampling: describe the pyramid levels on this many threads, each with the
                caller's intra-op thread count; the same descriptors as one thread.
            share_when: the helper threads take a level only while this returns True (e.g. "the other stage's
                core is idle"); None: always.
        """
        sampling = sampling or self.conf["sampling"]
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"unknown sampling '{sampling}'; choose from {SAMPLING_MODES}")
        if len(images) != len(keypoints):
            raise ValueError(f"{len(images)} images but {len(keypoints)} keypoint sets")
        images = [check_image(im) for im in images]
        for im, kp in zip(images, keypoints):
            kp.validate(im.shape)
        with self.lock:
            if sampling == "full":
                return self._describe_at_level(images, keypoints, None)
            return self._describe_octaves(images, keypoints, workers=workers, share_when=share_when)

    def _level_for(self, octaves: np.ndarray) -> np.ndarray:
        levels = np.asarray(sorted(self.conf["octave_levels"]))
        return levels[np.abs(octaves[:, None] - levels[None, :]).argmin(1)] if len(octaves) else octaves

    def _describe_octaves(self, images: list[np.ndarray], keypoints: list[Keypoints],
                          full_map: torch.Tensor | None = None, workers: int = 1,
                          share_when: Callable[[], bool] | None = None) -> list[torch.Tensor]:
        out = [torch.zeros(len(kp), self.descriptor_dim, device=self.device) for kp in keypoints]
        levels = [self._level_for(kp.octave) for kp in keypoints]

        def describe_level(level: int) -> None:
            selected = [np.flatnonzero(lv == level) for lv in levels]
            idx = [i for i, s in enumerate(selected) if len(s)]
            descs = self._describe_at_level([images[i] for i in idx], [keypoints[i].subset(selected[i]) for i in idx],
                                            level, full_map if level == 0 else None)
            for i, d in zip(idx, descs):
                out[i][torch.from_numpy(selected[i]).to(self.device)] = d  # rows of one level: no overlap

        present = sorted({int(v) for lv in levels for v in lv})
        if workers <= 1 or len(present) < 2 or self.device.type != "cpu":
            for level in present:
                describe_level(level)
            return out
        # a shared queue, largest level first: the caller takes from the front, helpers from the back (the
        # smallest levels) while `share_when` allows, so the split balances itself whenever helpers can run
        todo = deque(present)
        take = threading.Lock()
        threads = torch.get_num_threads()

        def next_level(front: bool) -> int | None:
            with take:
                return (todo.popleft() if front else todo.pop()) if todo else None

        def helper() -> None:
            with torch.inference_mode(), intra_op_threads(threads):  # both are per thread
                while todo:
                    if share_when is not None and not share_when():
                        time.sleep(0.005)  # the core is busy elsewhere: look again soon
                        continue
                    if (level := next_level(front=False)) is not None:
                        describe_level(level)

        if self._level_helpers < workers - 1:  # threads inherit their creator's priority (the node's `nice`)
            if self._level_pool is not None:
                self._level_pool.shutdown(wait=False)
            self._level_pool = ThreadPoolExecutor(workers - 1, "agnostic_reloc-levels")
            self._level_helpers = workers - 1
        jobs = [self._level_pool.submit(helper) for _ in range(workers - 1)]
        while (level := next_level(front=True)) is not None:  # the caller's share (its priority, its threads)
            describe_level(level)
        for job in jobs:
            job.result()
        return out

    def _describe_at_level(self, images: list[np.ndarray], keypoints: list[Keypoints], level: int | None,
                           full_map: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Descriptors from the map of pyramid `level` (None / 0: full resolution; `full_map`, the full-resolution
        feature map [1 x D x H x W] of a single image, when it was computed already)."""
        if full_map is not None and not level and len(images) == 1:
            return self.sample(full_map, [torch.from_numpy(keypoints[0].xy)])
        results: list[torch.Tensor | None] = [None] * len(images)
        groups: dict[tuple, list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(im.shape, []).append(i)
        for shape, idx in groups.items():
            h, w = shape[:2]
            if level:
                s = keypoints[idx[0]].scale_factor ** level
                lw, lh = max(8, round(w / s)), max(8, round(h / s))
                batch = [cv2.resize(images[i], (lw, lh), interpolation=cv2.INTER_LINEAR) for i in idx]
                ratio = np.array([(lw - 1) / (w - 1), (lh - 1) / (h - 1)], np.float32)
            else:
                batch, ratio = [images[i] for i in idx], np.ones(2, np.float32)
            xy = [torch.from_numpy(keypoints[i].xy * ratio) for i in idx]
            if self.conf["evaluation"] == "sparse":
                descs = self.sample_sparse(to_tensor(batch, self.device), xy)
            else:
                descs = self.sample(self.dense_maps(to_tensor(batch, self.device))[0], xy)
            for i, d in zip(idx, descs):
                results[i] = d
        return results  # type: ignore[return-value]

    def detect(self, image: np.ndarray, max_keypoints: int = 1000) -> Keypoints:
        """ALIKED's own keypoints (top-k by score, NMS radius from conf) as Keypoints (octave 0)."""
        kpts, _ = self.detect_and_describe(image, max_keypoints)
        return kpts

    @torch.inference_mode()
    def detect_and_describe(self, image: np.ndarray, max_keypoints: int = 1000) -> tuple[Keypoints, torch.Tensor]:
        """ALIKED's own keypoints and descriptors [N x D] from one dense map."""
        if max_keypoints <= 0:
            raise ValueError(f"max_keypoints must be positive, got {max_keypoints}")
        image = check_image(image)
        with self.lock:
            fmap, smap = self.dense_maps(to_tensor([image], self.device))
            return self._detect_in(fmap, smap, max_keypoints)

    def _detect_in(self, fmap: torch.Tensor, smap: torch.Tensor, max_keypoints: int
                   ) -> tuple[Keypoints, torch.Tensor]:
        """ALIKED's keypoints (by descending score) and descriptors [N x D] from the full-resolution maps of one
        image (call under the lock: kornia's DKD state is mutated)."""
        h, w = smap.shape[-2:]
        dkd = self.model.dkd
        dkd.top_k, dkd.n_limit = max_keypoints, max_keypoints
        kn, scores, _ = dkd(smap)
        descs, _ = self.model.desc_head(fmap, [kn[0].to(fmap.dtype)])
        wh = torch.tensor([w - 1, h - 1], dtype=torch.float32, device=kn[0].device)
        xy = ((kn[0].float() + 1) / 2 * wh).cpu().numpy()
        order = np.argsort(-scores[0].float().cpu().numpy(), kind="stable")
        kpts = Keypoints(xy, response=scores[0].float().cpu().numpy(), size=np.full(len(xy), 7.0)).subset(order)
        return kpts, descs[0].float()[torch.from_numpy(order).to(descs[0].device)]

    @torch.inference_mode()
    def describe_and_detect(self, image: np.ndarray, keypoints: Keypoints, max_keypoints: int,
                            min_distance_px: float = 3.0, workers: int = 1,
                            share_when: Callable[[], bool] | None = None
                            ) -> tuple[torch.Tensor, Keypoints, torch.Tensor]:
        """Descriptors at `keypoints` (conf sampling) plus ALIKED's own keypoints, from the same maps.

        The full-resolution map that octave sampling computes for octave-0 keypoints also gives ALIKED's
        top-`max_keypoints` keypoints; those within `min_distance_px` of one of `keypoints` are dropped (nearby
        keypoints make LightGlue's assignments ambiguous). A query-side detector ensemble at the cost of the
        sampling head only. `workers`, `share_when`: as in `describe`.

        Returns (descriptors [N x D] at keypoints, the added Keypoints [E] (octave 0), their descriptors [E x D]).
        """
        if max_keypoints <= 0:
            raise ValueError(f"max_keypoints must be positive, got {max_keypoints}")
        image = check_image(image)
        keypoints.validate(image.shape)
        with self.lock:
            fmap, smap = self.dense_maps(to_tensor([image], self.device))
            extra, extra_desc = self._detect_in(fmap, smap, max_keypoints)
            if len(keypoints) and len(extra) and min_distance_px > 0:
                from scipy.spatial import cKDTree

                dist, _ = cKDTree(keypoints.xy).query(extra.xy, k=1)
                away = np.flatnonzero(dist > min_distance_px)
                extra = extra.subset(away)
                extra_desc = extra_desc[torch.from_numpy(away).to(extra_desc.device)]
            if self.conf["sampling"] == "full":
                desc = self.sample(fmap, [torch.from_numpy(keypoints.xy)])[0]
            else:
                desc = self._describe_octaves([image], [keypoints], full_map=fmap, workers=workers,
                                              share_when=share_when)[0]
        return desc, extra, extra_desc


_CACHE: dict[tuple, AlikedExtractor] = {}


def get_aliked(model_name: str = "aliked-n16", device: str = "auto", **conf) -> AlikedExtractor:
    """Shared extractor per (model, device, conf): the network is loaded once per process."""
    key = (model_name, str(resolve_device(device)), tuple(sorted(conf.items())))
    if key not in _CACHE:
        _CACHE[key] = AlikedExtractor(model_name=model_name, device=device, **conf)
    return _CACHE[key]
