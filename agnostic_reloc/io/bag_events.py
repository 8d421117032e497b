"""Bag messages -> engine events through the node's own input path (stamp sync + EventAssembler).

Messages go in bag (log-time) order: each rosbags message is copied into the contract's plain types, two
`StampSync`s pair them (keyframe: keypoints + pose + image; frame: frame keypoints + image; equal stamps unless
sync_slop_s > 0) and the `EventAssembler` turns sets into keyframe and query events. Malformed messages are
dropped, counted and recorded, never fatal.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from typing import Iterator

import numpy as np

from ..types import KeyframeEvent, QueryEvent
from .bags import BagMessage, BagReader
from .contract import ContractError, seconds_to_ns
from .events import EventAssembler
from .messages import header_ns, msg_to_camera, msg_to_cloud, msg_to_image, msg_to_T
from .params import NODE_PARAMS
from .sync import StampSync

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- bag -> events
class BagEvents:
    """Bag messages -> engine events through the node's input path (bagio copies, StampSync, EventAssembler).

    `rejected` records every dropped message {"stamp", "kind", "reason"} (kinds as in the node's counters);
    `gt` collects the bag's ground truth (stamp s -> T_world_cam); `counts` the messages read per role.
    """

    def __init__(self, topics: dict[str, str], sync_queue_size: int = NODE_PARAMS["sync_queue_size"][0],
                 sync_slop_s: float = NODE_PARAMS["sync_slop_s"][0]) -> None:
        self.role_of = {t: r for r, t in topics.items()}
        self.assembler = EventAssembler()
        slop = seconds_to_ns(float(sync_slop_s))
        self.kf_sync = StampSync(3, self._on_keyframe_set, int(sync_queue_size), slop)
        self.fr_sync = StampSync(2, self._on_frame_set, int(sync_queue_size), slop)
        self.pending: deque[KeyframeEvent | QueryEvent] = deque()
        self.rejected: list[dict] = []
        self.counts: Counter[str] = Counter()
        self.events_out: Counter[str] = Counter()
        self.gt: dict[float, np.ndarray] = {}

    def _reject(self, kind: str, ns: int, reason: str) -> None:
        self.rejected.append({"stamp": ns / 1e9, "kind": kind, "reason": reason})
        logger.debug("dropped %s at %.3f s: %s", kind, ns / 1e9, reason)

    def feed(self, m: BagMessage) -> None:
        """One bag message; completed sets append events to `pending`."""
        role = self.role_of[m.topic]
        self.counts[role] += 1
        if m.error is not None:
            self._reject(role, m.log_ns, m.error)
            return
        msg = m.msg
        if role == "camera_info":
            try:
                cam = msg_to_camera(msg)
            except ContractError as exc:
                self._reject("camera_info", header_ns(msg), str(exc))
                return
            self.assembler.set_camera(cam)
        elif role == "tracking_state":
            if self.assembler.set_tracking_state(msg.data).unknown:
                self._reject("tracking_state", m.log_ns, f"unknown tracking state '{msg.data}' (treated as not "
                                                         f"tracking)")
        elif role == "image":
            ns, img = header_ns(msg), msg_to_image(msg)
            self.kf_sync.add(2, ns, (ns, img))
            self.fr_sync.add(1, ns, (ns, img))
        elif role == "keyframe_keypoints":
            ns = header_ns(msg)
            self.kf_sync.add(0, ns, (ns, msg_to_cloud(msg)))
        elif role == "keyframe_pose":
            ns = header_ns(msg)
            self.kf_sync.add(1, ns, (ns, msg))
        elif role == "frame_keypoints":
            ns = header_ns(msg)
            self.fr_sync.add(0, ns, (ns, msg_to_cloud(msg)))
        elif role == "query_image":
            self._query(header_ns(msg), msg_to_image(msg), None)
        elif role == "ground_truth":
            try:
                self.gt[header_ns(msg) / 1e9] = msg_to_T(msg)
            except ContractError as exc:
                self._reject("ground_truth", header_ns(msg), str(exc))
        # depth: carried by RGB-D bags, not used by the engine yet

    def _on_keyframe_set(self, cloud, pose, image) -> None:
        ns = cloud[0]
        try:
            ev = self.assembler.keyframe(ns, cloud[1], msg_to_T(pose[1]), image[1])
        except ContractError as exc:
            self._reject("keyframe", ns, str(exc))
            return
        self.events_out["keyframes"] += 1
        self.pending.append(ev)

    def _on_frame_set(self, cloud, image) -> None:
        if self.assembler.wants_queries():
            self._query(cloud[0], image[1], cloud[1])

    def _query(self, ns: int, image, cloud) -> None:
        try:
            ev = self.assembler.query(ns, image, cloud)
        except ContractError as exc:
            self._reject("query", ns, str(exc))
            return
        self.events_out["queries"] += 1
        self.pending.append(ev)

    def events(self, reader: BagReader, progress: bool = True, realtime: bool = False
               ) -> Iterator[KeyframeEvent | QueryEvent]:
        """Read the bag and yield events as their sets complete; `realtime` paces reading by log times."""
        from tqdm import tqdm

        topics = list(self.role_of)
        bar = tqdm(total=reader.count(topics), desc="replay", unit="msg", disable=not progress, smoothing=0.1)
        first_ns, t0 = None, time.perf_counter()
        try:
            for m in reader.messages(topics):
                if realtime:
                    first_ns = m.log_ns if first_ns is None else first_ns
                    wait = (m.log_ns - first_ns) / 1e9 - (time.perf_counter() - t0)
                    if wait > 0:
                        time.sleep(wait)
                self.feed(m)
                bar.update()
                if self.pending:
                    bar.set_postfix(keyframes=self.events_out["keyframes"], queries=self.events_out["queries"],
                                    dropped=len(self.rejected), refresh=False)
                while self.pending:
                    yield self.pending.popleft()
        finally:
            bar.close()
