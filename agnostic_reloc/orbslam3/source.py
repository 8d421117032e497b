"""Camera frames for ORB-SLAM3, from a rosbag2 bag or a saved world sequence folder, with optional ground truth.

A bag needs `/camera/image_raw` and `/camera/camera_info`; `/camera/depth/image_raw` (16UC1 mm, or 32FC1 m),
`/ground_truth/pose` (T_world_cam) and `/orb_slam3/tracking_state` are used when present (topics remappable).
A tracking state other than OK in the *input* bag (what `make-bag` writes for kidnapped frames) marks the
frame as a kidnapped frame for the evaluation; ORB-SLAM3 itself never sees it. A sequence folder is what
`save_sequence` writes (sequence.json, images/, depth/).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..io.camera import CameraModel
from ..io.contract import DEPTH_SCALE, ContractError, TrackingState, decode_image, seconds_to_ns


@dataclass
class RawFrame:
    """One camera frame: stamp (ns), RGB uint8 [H x W x 3] raw image, depth float32 [H x W] metres (0 = none)
    or None, ground-truth T_world_cam [4 x 4] or None, and whether the source marks it kidnapped."""

    stamp_ns: int
    image: np.ndarray
    depth: np.ndarray | None = None
    T_world_cam: np.ndarray | None = None
    kidnapped: bool = False


class SourceError(ValueError):
    """A frame source that cannot be used; the text names the problem."""


def _depth_m(msg) -> np.ndarray:
    enc = msg.encoding
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    raw = np.frombuffer(bytes(msg.data), np.uint8)
    if enc in ("16UC1", "mono16"):
        d = raw[: h * step].reshape(h, step)[:, : 2 * w].copy().view("<u2").astype(np.float32) / DEPTH_SCALE
    elif enc == "32FC1":
        d = raw[: h * step].reshape(h, step)[:, : 4 * w].copy().view("<f4").astype(np.float32)
    else:
        raise ContractError(f"depth encoding '{enc}' not supported (16UC1 millimetres or 32FC1 metres)")
    return np.where(np.isfinite(d) & (d > 0), d, 0).astype(np.float32)


class FrameSource:
    """Iterate `RawFrame`s of a bag or a sequence folder. `camera` is known after opening; `n_frames` is the
    number of images; `has_depth` / `has_gt` say what the source carries."""

    def __init__(self, path: str | os.PathLike, topics: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise SourceError(f"{self.path} does not exist")
        if (self.path / "sequence.json").is_file():
            self.kind = "sequence"
            self._open_sequence()
        else:
            self.kind = "bag"
            self._open_bag(topics or {})

    # ------------------------------------------------------------------ sequence folders
    def _open_sequence(self) -> None:
        meta = json.loads((self.path / "sequence.json").read_text())
        W, H = meta["image_size"]
        self.camera = CameraModel.pinhole(np.array(meta["K"], np.float64), int(W), int(H))
        self._frames = meta["frames"]
        self.n_frames = len(self._frames)
        self.has_depth = any(f.get("depth") for f in self._frames)
        self.has_gt = True

    def _iter_sequence(self) -> Iterator[RawFrame]:
        from ..io.image import load_image

        for m in self._frames:
            depth = None
            if m.get("depth"):
                with np.load(self.path / m["depth"]) as d:
                    z = d["depth"]
                depth = np.where(np.isfinite(z) & (z > 0), z, 0).astype(np.float32)
            yield RawFrame(seconds_to_ns(m["stamp"]), load_image(self.path / m["image"]), depth,
                           np.array(m["T_world_cam"], np.float64).reshape(4, 4),
                           bool(m["kidnapped"]) or m["tracking_state"] != "OK")

    # ------------------------------------------------------------------ bags
    def _open_bag(self, topics: dict[str, str]) -> None:
        from ..io.bags import BagError, BagReader
        from ..io.contract import CONTRACT_TOPICS
        from ..io.messages import msg_to_camera

        self.topics = {r: topics.get(r, CONTRACT_TOPICS[r])
                       for r in ("image", "camera_info", "depth", "ground_truth", "tracking_state")}
        try:
            reader = BagReader(self.path)
        except BagError as exc:
            raise SourceError(f"{self.path} is neither a sequence folder (no sequence.json) nor a readable bag: "
                              f"{exc}") from None
        with reader:
            missing = [self.topics[r] for r in ("image", "camera_info") if self.topics[r] not in reader.topics]
            if missing:
                raise SourceError(f"{self.path} lacks {', '.join(missing)}; the bag has:\n{reader.describe()}")
            self.n_frames = reader.counts[self.topics["image"]]
            self.has_depth = self.topics["depth"] in reader.topics
            self.has_gt = self.topics["ground_truth"] in reader.topics
            self.camera = None
            for m in reader.messages([self.topics["camera_info"]]):
                if m.msg is not None:
                    try:
                        self.camera = msg_to_camera(m.msg)
                        break
                    except ContractError as exc:
                        raise SourceError(f"{self.path}: bad CameraInfo: {exc}") from None
        if self.camera is None:
            raise SourceError(f"{self.path}: no readable CameraInfo on {self.topics['camera_info']}")

    def _iter_bag(self) -> Iterator[RawFrame]:
        from ..io.bags import BagReader
        from ..io.messages import header_ns, msg_to_image, msg_to_T

        role_of = {t: r for r, t in self.topics.items()}
        pending: OrderedDict[int, dict] = OrderedDict()  # stamp -> parts, emitted once 2 newer images arrived
        state = TrackingState("OK")
        self.skipped = 0

        def emit(ns: int, parts: dict) -> RawFrame | None:
            if "image" not in parts:
                return None
            return RawFrame(ns, parts["image"], parts.get("depth"), parts.get("gt"), parts["kidnapped"])

        with BagReader(self.path) as reader:
            for m in reader.messages([t for t in self.topics.values() if t in reader.topics]):
                role = role_of[m.topic]
                if m.msg is None:
                    self.skipped += 1
                    continue
                if role == "tracking_state":
                    state = TrackingState.parse(m.msg.data)
                    continue
                if role == "camera_info":
                    continue
                ns = header_ns(m.msg)
                parts = pending.setdefault(ns, {"kidnapped": False})
                try:
                    if role == "image":
                        parts["image"] = decode_image(msg_to_image(m.msg))
                        parts["kidnapped"] = not state.tracking
                    elif role == "depth":
                        parts["depth"] = _depth_m(m.msg)
                    elif role == "ground_truth":
                        parts["gt"] = msg_to_T(m.msg)
                except ContractError:
                    self.skipped += 1
                    continue
                images = [s for s, p in pending.items() if "image" in p]
                while len(images) > 2:
                    s = images.pop(0)
                    while pending and next(iter(pending)) <= s:
                        k, p = pending.popitem(last=False)
                        f = emit(k, p)
                        if f is not None:
                            yield f
        for k, p in pending.items():
            f = emit(k, p)
            if f is not None:
                yield f

    def __iter__(self) -> Iterator[RawFrame]:
        return self._iter_sequence() if self.kind == "sequence" else self._iter_bag()
