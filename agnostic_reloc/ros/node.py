"""`reloc_node`: the rclpy adapter around the engine (see README, "ROS 2 interface", for the contract).

Callbacks on the executor thread only decode, synchronise and queue; the `EngineWorker` threads (keyframes;
loop checks and queries) do the GPU/CPU work and publish results, one at a time (`_publish_lock`). Bad input is dropped with a throttled warning and counted in
/diagnostics; it never stops the node.

QoS: contract inputs (keypoints, poses, tracking state) reliable, keep-last 100 (keyframes must not be
lost); images and camera info reliable or best-effort (`image_reliability`), keep-last `image_queue_depth`;
query images keep-last 2. Outputs: loop closures and matches reliable keep-last 100, relocalization
reliable keep-last 10, loop markers, corrected path and correction reliable + transient local (latched for
RViz and late subscribers), corrected pose reliable keep-last 10, matches image keep-last 1.

Loop-corrected poses: the engine's pose graph (SLAM keyframe poses + accepted metric loops) gives each
keyframe a correction T_corrected_slam. The node publishes it as the transform `corrected_frame` (parent) ->
`map_frame` (child), like map -> odom in REP 105: on ~/correction always, and on /tf when tf2_ros is
importable. All of it is published from the worker threads, where the pose graph is solved.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections import Counter, OrderedDict, deque

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, PoseStamped, PoseWithCovarianceStamped, TransformStamped
from nav_msgs.msg import Path
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import ColorRGBA, String
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker, MarkerArray

from ..eval.viz import render_matches
from ..inference.backends import stage_threads
from ..io.contract import (
    INPUT_TOPICS,
    OUTPUT_TOPICS,
    ContractError,
    encode_image,
    encode_matches,
    keyframe_frame_id,
    seconds_to_ns,
)
from ..io.events import EventAssembler
from ..io.messages import header_ns, msg_pose_to_T, msg_to_camera, msg_to_cloud, msg_to_image
from ..io.params import NODE_NAME, engine_conf, legacy_param_names, param_table
from ..io.status import status_line
from ..io.sync import StampSync
from ..loop.engine import Engine
from ..loop.worker import EngineWorker
from ..map.store import KeyframeMap, MapFormatError
from ..types import Keyframe, KeyframeEvent, LoopClosure, QueryEvent, Relocalization
from . import conversions as cv
from .node_tools import InputGuard, param_descriptor

THUMB_WIDTH = 320  # keyframe thumbnails kept for ~/matches_image
THUMB_LIMIT = 5000



class RelocNode(Node):
    """Loop closure and relocalization next to ORB-SLAM3 (topics in `contract.INPUT_TOPICS`/`OUTPUT_TOPICS`)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.p = self._declare()
        self.guard = InputGuard(self.get_logger(), lambda: self.p["warn_throttle_s"])
        self.rejected = self.guard.rejected  # per-kind counts of dropped messages
        self.assembler = EventAssembler()
        self._thumbs: OrderedDict[int, tuple[np.ndarray, float]] = OrderedDict()  # kf id -> (jpeg, scale)
        self._edges: list[tuple[int, int]] = []
        self._edge_lock = threading.Lock()
        self._publish_lock = threading.RLock()  # the worker's two threads publish (and share state) in turn
        self._await_camera: deque = deque(maxlen=int(self.p["sync_queue_size"]))

        import torch  # threads before any network is built: the runtimes take torch's thread count

        torch.set_num_threads(stage_threads(int(self.p["threads"])))
        conf = engine_conf({k: v for k, v in self.p.items() if k.startswith("engine.")})
        kf_map = self._load_map()
        self.engine = Engine(conf, kf_map)
        dev = self.engine.pipe.aliked.device if self.engine.pipe.aliked is not None else "cpu"
        self.device = str(dev)
        if self.device == "cpu":
            self.get_logger().warn("no CUDA GPU in use: running on CPU (expect seconds per keyframe, see README)")
        else:
            self.get_logger().info(f"running on {self.device}")

        # loop-corrected outputs: the newest keyframe of this session (id, stamp ns, SLAM T_map_cam), its
        # correction T_corrected_slam (re-broadcast on /tf by a timer)
        self._newest: tuple[int, int, np.ndarray] | None = None
        self._T_corrected_slam: np.ndarray | None = None
        self._kf_since_path = 0

        self.worker = EngineWorker(self.engine, self._publish_loops, self._publish_relocalization,
                                   self._on_keyframe, self._on_worker_error, int(self.p["query_queue_size"]),
                                   nice=int(self.p["nice"]))
        self._make_io()
        self.get_logger().info(f"ready: map has {len(self.engine.map)} keyframes, matcher "
                               f"{self.engine.conf['matcher']['name']}")

    # ------------------------------------------------------------------ parameters
    def _declare(self) -> dict:
        out = {}
        for name, (value, text, rng) in param_table().items():
            out[name] = self.declare_parameter(name, value, param_descriptor(name, value, text, rng)).value
        for old, new in legacy_param_names().items():  # flat names of earlier releases, read for one release
            d = ParameterDescriptor(name=old, description=f"deprecated: use {new}", dynamic_typing=True)
            value = self.declare_parameter(old, None, d).value
            if value is not None:
                out[old] = value
        return out

    def _load_map(self) -> KeyframeMap | None:
        path = self.p["map_path"]
        if not (path and self.p["load_map_on_start"] and os.path.exists(path)):
            return None
        try:
            kf_map = KeyframeMap.load(path)
        except MapFormatError as exc:
            # refuse to start on a broken map instead of silently overwriting it at shutdown
            self.get_logger().fatal(f"cannot load map {path}: {exc}")
            raise
        self.get_logger().info(f"loaded map {path}: {len(kf_map)} keyframes")
        return kf_map

    # ------------------------------------------------------------------ topics
    def _make_io(self) -> None:
        p = self.p
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        image_qos = QoSProfile(depth=int(p["image_queue_depth"]),
                               reliability=ReliabilityPolicy.RELIABLE)
        n = int(p["sync_queue_size"])
        slop = seconds_to_ns(float(p["sync_slop_s"]))
        kf_types = [(PointCloud2, INPUT_TOPICS["keyframe_keypoints"], reliable),
                    (PoseStamped, INPUT_TOPICS["keyframe_pose"], reliable), (Image, INPUT_TOPICS["image"], image_qos)]
        fr_types = [(PointCloud2, INPUT_TOPICS["frame_keypoints"], reliable), (Image, INPUT_TOPICS["image"], image_qos)]
        self.sync_backend = self._make_syncs(kf_types, fr_types, n, slop)

        self.create_subscription(CameraInfo, INPUT_TOPICS["camera_info"], self._on_camera_info, image_qos)
        self.create_subscription(String, INPUT_TOPICS["tracking_state"], self._on_state, reliable)
        self.create_subscription(Image, INPUT_TOPICS["query_image"], self._on_query_image, QoSProfile(depth=2))

        self.pub_loop = self.create_publisher(PoseWithCovarianceStamped, OUTPUT_TOPICS["loop_closure"], reliable)
        self.pub_loop_matches = self.create_publisher(PointCloud2, OUTPUT_TOPICS["loop_matches"], reliable)
        self.pub_reloc = self.create_publisher(PoseWithCovarianceStamped, OUTPUT_TOPICS["relocalization"],
                                               QoSProfile(depth=10))
        self.pub_reloc_status = self.create_publisher(String, OUTPUT_TOPICS["relocalization_status"],
                                                      QoSProfile(depth=10))
        self.pub_initialpose = (self.create_publisher(PoseWithCovarianceStamped, OUTPUT_TOPICS["initialpose"],
                                                      QoSProfile(depth=1)) if p["publish_initialpose"] else None)
        self.pub_matches_image = self.create_publisher(Image, OUTPUT_TOPICS["matches_image"], QoSProfile(depth=1))
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.pub_edges = self.create_publisher(MarkerArray, OUTPUT_TOPICS["loop_edges"], latched)
        self.pub_diag = self.create_publisher(DiagnosticArray, OUTPUT_TOPICS["diagnostics"], QoSProfile(depth=10))
        self.pub_corrected_path = self.create_publisher(Path, OUTPUT_TOPICS["corrected_path"], latched)
        self.pub_corrected_pose = self.create_publisher(PoseStamped, OUTPUT_TOPICS["corrected_pose"],
                                                        QoSProfile(depth=10))
        self.pub_correction = self.create_publisher(TransformStamped, OUTPUT_TOPICS["correction"], latched)
        self.tf = self._make_tf_broadcaster()
        self.create_service(Trigger, "~/save_map", self._srv_save_map)
        self.create_service(Trigger, "~/reset_map", self._srv_reset_map)
        self.create_timer(float(p["diagnostics_period_s"]), self._publish_diagnostics)
        if float(p["status_period_s"]) > 0:
            self.create_timer(float(p["status_period_s"]), self._log_status)
        if self.tf is not None and float(p["correction_tf_period_s"]) > 0:
            self.create_timer(float(p["correction_tf_period_s"]), self._broadcast_correction)
        if len(self.engine.map):
            self._publish_edges()
            self._publish_corrected(path=True)  # a loaded map, with the corrections it was saved with

    def _make_tf_broadcaster(self):
        """tf2_ros.TransformBroadcaster where tf2_ros is importable (a ROS distro), else None; says which once."""
        frames = f"{self.p['corrected_frame']} -> {self.p['map_frame']}"
        try:
            from tf2_ros import TransformBroadcaster
        except ImportError:
            self.get_logger().info(f"loop correction {frames}: published on {OUTPUT_TOPICS['correction']} only "
                                   f"(geometry_msgs/TransformStamped); tf2_ros is not importable, so not on /tf")
            return None
        self.get_logger().info(f"loop correction {frames}: broadcast on /tf (tf2_ros) and published on "
                               f"{OUTPUT_TOPICS['correction']}")
        return TransformBroadcaster(self)

    def _make_syncs(self, kf_types, fr_types, queue_size: int, slop_ns: int) -> str:
        """message_filters when importable (every ROS 2 distro has it), else the in-package StampSync."""
        try:
            import message_filters as mf
        except ImportError:
            mf = None
        if mf is not None:
            subs = {}

            def sub(t, topic, qos):
                if topic not in subs:
                    subs[topic] = mf.Subscriber(self, t, topic, qos_profile=qos)
                return subs[topic]

            def make(types, cb):
                fs = [sub(*x) for x in types]
                s = (mf.ApproximateTimeSynchronizer(fs, queue_size, slop_ns / 1e9) if slop_ns
                     else mf.TimeSynchronizer(fs, queue_size))
                s.registerCallback(cb)
                return s

            self._syncs = [make(kf_types, self._on_keyframe_set), make(fr_types, self._on_frame_set)]
            return "message_filters"
        kf_sync = StampSync(3, self._on_keyframe_set, queue_size, slop_ns)
        fr_sync = StampSync(2, self._on_frame_set, queue_size, slop_ns)
        self._syncs = [kf_sync, fr_sync]
        routes: dict[str, list] = {}
        for sync, types in ((kf_sync, kf_types), (fr_sync, fr_types)):
            for i, (t, topic, qos) in enumerate(types):
                routes.setdefault(topic, [t, qos, []])[2].append((sync, i))
        for topic, (t, qos, targets) in routes.items():
            def cb(msg, targets=targets):
                ns = header_ns(msg)
                for sync, i in targets:
                    sync.add(i, ns, msg)
            self.create_subscription(t, topic, cb, qos)
        return "in-package StampSync"

    # ------------------------------------------------------------------ input callbacks

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            cam = msg_to_camera(msg)
        except ContractError as exc:
            self.guard.reject("camera_info", str(exc))
            return
        self.assembler.set_camera(cam)
        while self._await_camera:  # keyframes that arrived before the first CameraInfo
            self._on_keyframe_set(*self._await_camera.popleft())

    def _on_state(self, msg: String) -> None:
        # the state String has no stamp: a frame arriving just before the state that lost tracking is not a query
        st = self.assembler.set_tracking_state(msg.data)
        if st.unknown:
            self.guard.reject("tracking_state", f"unknown tracking state '{msg.data}' (treated as not tracking)")

    def _on_keyframe_set(self, cloud_msg: PointCloud2, pose_msg: PoseStamped, image_msg: Image) -> None:
        if self.assembler.camera is None:
            if len(self._await_camera) == self._await_camera.maxlen:
                self.guard.reject("keyframe", "no CameraInfo received yet and the waiting queue is full")
            self._await_camera.append((cloud_msg, pose_msg, image_msg))
            self.guard.warn("camera_info", "keyframes wait for the first CameraInfo")
            return
        ns = header_ns(cloud_msg)
        try:
            T = msg_pose_to_T(pose_msg.pose)
            ev = self.assembler.keyframe(ns, msg_to_cloud(cloud_msg), T, msg_to_image(image_msg))
        except ContractError as exc:
            self.guard.reject("keyframe", str(exc))
            return
        self.worker.submit_keyframe(ev)
        backlog = self.worker.depths()["keyframes"]
        if backlog >= int(self.p["keyframe_backlog_warn"]):
            self.guard.warn("keyframe_backlog", f"{backlog} keyframes wait for extraction (none is dropped; the worker "
                                           f"is slower than the keyframe rate)")

    def _on_frame_set(self, cloud_msg: PointCloud2, image_msg: Image) -> None:
        if self.assembler.wants_queries():
            self._query(header_ns(cloud_msg), image_msg, cloud_msg)

    def _on_query_image(self, msg: Image) -> None:
        self._query(header_ns(msg), msg, None)

    def _query(self, ns: int, image_msg: Image, cloud_msg: PointCloud2 | None) -> None:
        try:
            ev = self.assembler.query(ns, msg_to_image(image_msg),
                                      None if cloud_msg is None else msg_to_cloud(cloud_msg))
        except ContractError as exc:
            self.guard.reject("query", str(exc))
            return
        if not self.worker.submit_query(ev):
            self.guard.reject("query_overflow", "relocalization queue full: oldest waiting query dropped")

    # ------------------------------------------------------------------ worker callbacks (worker threads)
    def _on_worker_error(self, kind: str, text: str) -> None:
        self.guard.reject(kind, text)

    def _on_keyframe(self, kf: Keyframe, ev: KeyframeEvent) -> None:
        with self._publish_lock:
            self._keyframe_outputs(kf, ev)

    def _keyframe_outputs(self, kf: Keyframe, ev: KeyframeEvent) -> None:
        h, w = ev.image.shape[:2]
        scale = min(1.0, THUMB_WIDTH / w)
        small = cv2.resize(cv2.cvtColor(ev.image, cv2.COLOR_RGB2GRAY), (max(8, int(w * scale)), max(8, int(h * scale))),
                           interpolation=cv2.INTER_AREA)
        ok, jpg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 80])
        if ok:
            self._thumbs[kf.id] = (jpg, scale)
            while len(self._thumbs) > THUMB_LIMIT:
                self._thumbs.popitem(last=False)
        if len(self.engine.map) % 10 == 0:
            self._publish_edges()
        self._newest = (kf.id, seconds_to_ns(kf.stamp), np.asarray(kf.T_map_cam, np.float64))
        self._kf_since_path += 1
        self._publish_corrected(path=self._kf_since_path >= int(self.p["corrected_path_every_kf"]))

    def _publish_loops(self, loops: list[LoopClosure], kf: Keyframe) -> None:
        with self._publish_lock:
            self._loop_outputs(loops)

    def _loop_outputs(self, loops: list[LoopClosure]) -> None:
        for lc in loops:
            header = cv.make_header(seconds_to_ns(lc.query_stamp), keyframe_frame_id(seconds_to_ns(lc.match_stamp)))
            self.pub_loop.publish(cv.pose_with_covariance(lc.T_match_query, lc.covariance, header))
            scores = np.full(len(lc.correspondences), lc.score / max(len(lc.correspondences), 1), np.float32)
            self.pub_loop_matches.publish(cv.cloud_to_msg(encode_matches(lc.correspondences, scores), header))
            with self._edge_lock:
                self._edges.append((lc.query_id, lc.match_id))
            self.get_logger().info(f"loop: keyframe {lc.query_stamp:.3f} s -> {lc.match_stamp:.3f} s, "
                                   f"{lc.inliers} inliers")
            self._matches_image(lc.query_id, lc.match_id, lc.correspondences)
        self._publish_edges()
        self._publish_corrected(path=True)  # the loops moved the corrected trajectory

    def _publish_corrected(self, path: bool) -> None:
        """~/correction (+ /tf) and ~/corrected_pose of the newest keyframe; ~/corrected_path too when `path`.

        Worker threads only (under `_publish_lock`): the first call after a loop solves the pose graph. The path holds every keyframe
        (O(map size) to build: ~0.1 s for 3000 keyframes), hence only on loops and every corrected_path_every_kf
        keyframes; the correction and the pose are O(1).
        """
        frame = self.p["corrected_frame"]
        newest = self._newest
        if newest is not None:
            kf_id, ns, T_map_cam = newest
            T = self.engine.correction(kf_id)
            self._T_corrected_slam = T
            self.pub_correction.publish(cv.transform_stamped(T, ns, frame, self.p["map_frame"]))
            self._broadcast_correction()
            self.pub_corrected_pose.publish(cv.pose_stamped(T @ T_map_cam, ns, frame))
        if path:
            self._kf_since_path = 0
            poses, stamps = self.engine.corrected_poses(), self.engine.stamps()
            stamps = [seconds_to_ns(stamps[i]) for i in poses]
            self.pub_corrected_path.publish(cv.path(list(poses.values()), stamps, frame, max(stamps, default=0)))

    def _broadcast_correction(self) -> None:
        """The latest correction on /tf, stamped now (map -> odom style), when tf2_ros is there."""
        T = self._T_corrected_slam
        if self.tf is not None and T is not None:
            self.tf.sendTransform(cv.transform_stamped(T, self.get_clock().now().nanoseconds,
                                                       self.p["corrected_frame"], self.p["map_frame"]))

    def _publish_relocalization(self, r: Relocalization, q: QueryEvent) -> None:
        ns = seconds_to_ns(r.stamp)
        if r.success:
            msg = cv.pose_with_covariance(r.T_map_cam, r.covariance, cv.make_header(ns, self.p["map_frame"]))
            self.pub_reloc.publish(msg)
            if self.pub_initialpose is not None:
                self.pub_initialpose.publish(msg)
            text = (f"localized stamp={r.stamp:.9f} inliers={r.inliers} "
                    f"keyframes={','.join(map(str, r.matched_keyframes))} support: {r.support}")
        else:
            text = f"not localized stamp={r.stamp:.9f}: {r.reason}"
        self.pub_reloc_status.publish(String(data=text))

    def _matches_image(self, q_id: int, m_id: int, pairs: np.ndarray) -> None:
        if self.pub_matches_image.get_subscription_count() == 0:
            return
        try:
            q, m = self.engine.map.get(q_id), self.engine.map.get(m_id)
        except KeyError:
            return
        ims, kps = [], []
        for kf in (q, m):
            jpg, scale = self._thumbs.get(kf.id, (None, THUMB_WIDTH / kf.image_size[0]))
            img = (cv2.imdecode(jpg, cv2.IMREAD_GRAYSCALE) if jpg is not None else
                   np.zeros((int(kf.image_size[1] * scale), int(kf.image_size[0] * scale)), np.uint8))
            ims.append(img)
            kps.append(kf.keypoints.xy[: kf.n_slam] * scale)
        rgb = render_matches(ims[0], ims[1], kps[0], kps[1], pairs, None, f"loop {q.stamp:.2f} s -> {m.stamp:.2f} s")
        max_w = int(self.p["matches_image_max_width"])
        if rgb.shape[1] > max_w:
            rgb = cv2.resize(rgb, (max_w, int(rgb.shape[0] * max_w / rgb.shape[1])), interpolation=cv2.INTER_AREA)
        self.pub_matches_image.publish(cv.image_to_msg(encode_image(rgb, "rgb8"),
                                                       cv.make_header(seconds_to_ns(q.stamp), "matches")))

    def _publish_edges(self) -> None:
        ids, pos = self.engine.map.positions()
        index = {int(i): k for k, i in enumerate(ids)}
        header = cv.make_header(0, self.p["map_frame"])
        kfs = Marker(header=header, ns="keyframes", id=0, type=Marker.SPHERE_LIST, action=Marker.ADD)
        kfs.scale.x = kfs.scale.y = kfs.scale.z = 0.05
        kfs.color = ColorRGBA(r=0.2, g=0.4, b=1.0, a=1.0)
        kfs.pose.orientation.w = 1.0
        kfs.points = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in pos]
        edges = Marker(header=header, ns="loops", id=1, type=Marker.LINE_LIST, action=Marker.ADD)
        edges.scale.x = 0.02
        edges.color = ColorRGBA(r=0.1, g=0.9, b=0.1, a=1.0)
        edges.pose.orientation.w = 1.0
        with self._edge_lock:
            pairs = list(self._edges)
        for a, b in pairs:
            if a in index and b in index:
                for k in (index[a], index[b]):
                    edges.points.append(Point(x=float(pos[k][0]), y=float(pos[k][1]), z=float(pos[k][2])))
        self.pub_edges.publish(MarkerArray(markers=[kfs, edges]))

    # ------------------------------------------------------------------ diagnostics and services
    def diagnostics(self) -> DiagnosticStatus:
        w = self.worker
        depth = w.depths()
        values = {"device": self.device, "sync": self.sync_backend, "map_keyframes": len(self.engine.map),
                  "queue_keyframes": depth["keyframes"], "queue_verify": depth["verify"],
                  "queue_queries": depth["queries"], "dropped_queries": w.dropped_queries,
                  **{f"count_{k}": v for k, v in w.counts.items()},
                  **{f"rejected_{k}": v for k, v in sorted(self.rejected.items())}}
        for stage, pct in w.latency().items():
            for k, v in pct.items():
                values[f"latency_{stage}_{k}_ms"] = round(v, 1)
        backlog = depth["keyframes"] >= int(self.p["keyframe_backlog_warn"])
        level = DiagnosticStatus.WARN if backlog or sum(self.rejected.values()) else DiagnosticStatus.OK
        msg = ("keyframe backlog" if backlog else "dropped input (see rejected_*)" if level else "ok")
        return DiagnosticStatus(level=level, name=f"agnostic_reloc: {self.get_fully_qualified_name()}",
                                message=msg, hardware_id=self.device,
                                values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])

    def _publish_diagnostics(self) -> None:
        arr = DiagnosticArray(status=[self.diagnostics()])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(arr)

    def status(self) -> str:
        """The one-line status (`io.status.status_line`) of the engine and its worker."""
        refused: Counter = Counter()
        for _ in range(3):  # the worker thread may add a reason while we copy
            try:
                refused = Counter(self.engine.acceptance.refused)
                break
            except RuntimeError:
                continue
        aliked = self.engine.pipe.aliked
        backends = {"aliked": aliked.backend if aliked is not None else "none",
                    "matcher": str(self.engine.matcher.backend)}
        return status_line(len(self.engine.map), self.worker.depths(), dict(self.worker.counts), refused,
                           self.device, backends, self.worker.latency())

    def _log_status(self) -> None:
        self.get_logger().info(self.status())

    def save_map(self) -> str:
        path = self.p["map_path"]
        if not path:
            raise ValueError("parameter map_path is empty: nowhere to save the map")
        self.engine.save_map(path)
        return f"saved {len(self.engine.map)} keyframes to {path}"

    def _srv_save_map(self, request, response):
        try:
            response.message = self.save_map()
            response.success = True
        except (ValueError, OSError) as exc:
            response.success, response.message = False, f"save_map failed: {exc}"
        self.get_logger().info(response.message)
        return response

    def _srv_reset_map(self, request, response):
        self.worker.clear()
        self.engine.reset()
        self.assembler.reset()
        self._thumbs.clear()
        with self._edge_lock:
            self._edges.clear()
        self._publish_edges()
        self._newest, self._T_corrected_slam = None, None  # no correction until the next keyframe
        self._kf_since_path = 0
        self.pub_corrected_path.publish(cv.path([], [], self.p["corrected_frame"], 0))
        response.success, response.message = True, "map reset (the map file on disk is untouched)"
        self.get_logger().info(response.message)
        return response

    def shutdown(self) -> None:
        """Stop the worker after it has drained, then save the map if configured."""
        self.worker.wait_idle(timeout=60.0)
        self.worker.stop()
        if self.p["save_map_on_shutdown"] and self.p["map_path"] and len(self.engine.map):
            try:
                self.get_logger().info(self.save_map())
            except (ValueError, OSError) as exc:
                self.get_logger().error(f"saving the map at shutdown failed: {exc}")


def main(args: list[str] | None = None) -> int:
    """Console script `reloc_node` (ros-args as for any ROS 2 node)."""
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(name)s: %(message)s")
    rclpy.init(args=sys.argv if args is None else args)
    node = None
    try:
        node = RelocNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except MapFormatError:
        return 1
    finally:
        if node is not None:
            node.shutdown()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
