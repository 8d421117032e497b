"""`orbslam3_bridge`: real ORB-SLAM3 (pyorbslam3) as a ROS 2 node that publishes reloc_node's inputs.

A thin rclpy adapter around `orbslam3.bridge.OrbSlam3Bridge` (what is filled from what, and the map-anchoring
rules, are documented there). Subscribes the camera (`/camera/image_raw`, `/camera/camera_info`, optional
`/camera/depth/image_raw`, 16UC1 mm or 32FC1 m, paired with the image by equal stamp) and reloc_node's
`~/relocalization` (each one is handed to `OrbSlam3Bridge.answer`, which anchors a new ORB-SLAM3 map to the
first one). Publishes per tracked frame, stamped with the image stamp and in this order: tracking_state,
frame keypoints, and on the bridge's keyframes the keyframe pose (frame `map`) and keyframe keypoints with map
points (topics `contract.INPUT_TOPICS`). Images are not republished: reloc_node subscribes the camera itself.

ORB-SLAM3 starts on the first CameraInfo (it needs the camera model). `sensor: auto` decides then: RGB-D when
a depth image has arrived or the depth topic has a publisher (checked again after `AUTO_GRACE_S` when neither
is true yet), else monocular. Callbacks on the executor thread only decode, validate and queue; ONE worker
thread starts ORB-SLAM3, tracks (bounded queue: the newest `queue_size` frames are kept, older ones dropped
and counted) and publishes. Relocalizations are queued for the same thread (the bridge is not thread-safe).

Bad input (undecodable image, size different from CameraInfo, bad depth encoding or size, invalid
relocalization pose) is dropped with a throttled warning naming the problem and counted; the counts are
logged at shutdown and written with the bridge summary to `<workdir>/orbslam3_bridge_summary.json`.
A missing or invalid vocabulary, a bad parameter or pyorbslam3 not importable: one error line, exit code 1.
SIGINT: ORB-SLAM3 is shut down (its keyframe trajectory goes to the workdir), exit code 0.

QoS: outputs reliable keep-last 100 (as reloc_node subscribes them); camera and depth reliable keep-last
`SYNC_QUEUE`; relocalizations reliable keep-last 10 (as reloc_node publishes them).
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import threading
import time
from collections import Counter, OrderedDict, deque
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import String

from ..io.camera import CameraModel
from ..io.contract import (
    DEPTH_TOPIC,
    INPUT_TOPICS,
    MAP_FRAME,
    OUTPUT_TOPICS,
    ContractError,
    decode_image,
    encode_keypoints,
)
from ..io.messages import header_ns, msg_pose_to_T, msg_to_camera, msg_to_image
from ..io.sync import StampSync
from ..orbslam3.bridge import SENSORS, BridgeError, OrbSlam3Bridge, import_pyorbslam3
from ..orbslam3.bridge import default_conf as bridge_defaults
from ..orbslam3.settings import default_conf as settings_defaults
from . import conversions as cv
from .node_tools import InputGuard, param_descriptor

NODE_NAME = "orbslam3_bridge"
RELOC_NODE_NAME = "reloc_node"  # node_params.NODE_NAME (importing node_params loads the engine and torch)
RELOCALIZATION_TOPIC = f"/{RELOC_NODE_NAME}/{OUTPUT_TOPICS['relocalization'][2:]}"  # /reloc_node/relocalization
SYNC_QUEUE = 30  # images / depth images kept while waiting for the partner of the same stamp (also QoS depth)
AUTO_GRACE_S = 1.0  # sensor auto: how long after the first CameraInfo a depth publisher may still show up
SUMMARY_FILE = "orbslam3_bridge_summary.json"

# name: (default, description, (min, max) or None)  -- the bridge's own defaults where it has them
PARAMS: dict[str, tuple[Any, str, tuple | None]] = {
    "vocabulary": ("", "DBoW2 ORB text vocabulary (ORBvoc.txt); '' = the cached one built from the opencv-doc "
                       "photos (built on first use, tens of seconds)", None),
    "sensor": ("auto", "auto (RGB-D when depth arrives or has a publisher at the first CameraInfo) | rgbd | "
                       "monocular", None),
    "kf_max_dist": (bridge_defaults["kf_max_dist"], "keyframe after this much motion since the last one "
                                                    "(m, ORB-SLAM3 map units)", (0.0, 1e3)),
    "kf_max_angle_deg": (bridge_defaults["kf_max_angle_deg"], "... or this much rotation (deg)", (0.0, 180.0)),
    "kf_max_gap": (bridge_defaults["kf_max_gap"], "... or after this many tracked frames", (1, 100000)),
    "pair_radius_px": (bridge_defaults["pair_radius_px"], "a projected tracked map point pairs with the nearest "
                                                          "keypoint within this radius (px)", (0.1, 50.0)),
    "octave": (bridge_defaults["octave"], "keypoint octaves: estimate (our ORB-SLAM3-like extractor on the same "
                                          "image) | unknown (all 0)", None),
    "n_features": (settings_defaults["n_features"], "ORB-SLAM3 ORBextractor.nFeatures (keypoints per frame)",
                   (100, 100000)),
    "queue_size": (3, "frames waiting for ORB-SLAM3; the newest are kept, older ones dropped and counted",
                   (1, 1000)),
    "workdir": ("", "ORB-SLAM3 settings, log, keyframe trajectory and the bridge summary; '' = a new temp "
                    "folder", None),
    "warn_throttle_s": (5.0, "minimum period between repeated warnings of the same kind", (0.0, 3600.0)),
}
OCTAVE_MODES = ("estimate", "unknown")


class StartupError(RuntimeError):
    """The node cannot run (bad parameter, vocabulary, pyorbslam3); the text is the one error line."""


def decode_depth(img) -> np.ndarray:
    """Depth image content (`contract.ImageData`) -> float32 [H x W] metres, 0 = none; ContractError naming
    the problem (encoding, size, data length). 16UC1/mono16 millimetres or 32FC1 metres, little-endian."""
    from ..orbslam3.source import _depth_m

    item = {"16UC1": 2, "mono16": 2, "32FC1": 4}.get(img.encoding)
    if item is None:
        return _depth_m(img)  # raises the contract's "depth encoding ... not supported"
    h, w = int(img.height), int(img.width)
    if h < 1 or w < 1:
        raise ContractError(f"depth image is {w}x{h}")
    if img.is_bigendian:
        raise ContractError("big-endian depth images are not supported")
    if img.step < w * item:
        raise ContractError(f"depth step {img.step} is smaller than width x bytes = {w * item}")
    if len(img.data) < h * img.step:
        raise ContractError(f"depth data has {len(img.data)} bytes, expected height x step = {h * img.step}")
    return _depth_m(img)


class OrbSlam3BridgeNode(Node):
    """ORB-SLAM3 -> reloc_node's contract inputs; reloc_node's relocalizations -> ORB-SLAM3 map anchors."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.p = {name: self.declare_parameter(name, value, param_descriptor(name, value, text, rng)).value
                  for name, (value, text, rng) in PARAMS.items()}
        self._check_params()
        try:
            import_pyorbslam3()
        except BridgeError as exc:
            raise StartupError(str(exc)) from None
        self.vocabulary = self._resolve_vocabulary()
        wd = self.p["workdir"]
        self.workdir = Path(wd) if wd else Path(tempfile.mkdtemp(prefix="orbslam3_bridge_"))
        self.workdir.mkdir(parents=True, exist_ok=True)

        self.guard = InputGuard(self.get_logger(), lambda: self.p["warn_throttle_s"])
        self.rejected = self.guard.rejected  # per-kind counts of dropped messages
        self.counts: Counter[str] = Counter()
        self.camera: CameraModel | None = None
        self._camera_at = 0.0  # monotonic time of the first CameraInfo
        self.rgbd: bool | None = {"rgbd": True, "monocular": False}.get(self.p["sensor"])
        self._depth_seen = False
        self._await_depth: OrderedDict[int, None] = OrderedDict()  # RGB-D: image stamps without depth yet
        self.bridge: OrbSlam3Bridge | None = None
        self.fatal: str | None = None
        self.last_state = ""
        self._frames: deque = deque()  # (stamp_ns, rgb, depth | None, frame_id), newest queue_size kept
        self._answers: deque = deque(maxlen=100)  # (stamp_ns, T_map_cam) of relocalizations to hand over
        self._cond = threading.Condition()
        self._stop = False

        self._make_io()
        self._worker = threading.Thread(target=self._run, name="orbslam3", daemon=True)
        self._worker.start()
        self.get_logger().info(f"ready: vocabulary {self.vocabulary}, sensor {self.p['sensor']}, workdir "
                               f"{self.workdir}, sync {self.sync_backend}; ORB-SLAM3 starts on the first CameraInfo")

    # ------------------------------------------------------------------ parameters
    def _check_params(self) -> None:
        if self.p["sensor"] not in SENSORS:
            raise StartupError(f"parameter sensor must be one of {', '.join(SENSORS)}, got '{self.p['sensor']}'")
        if self.p["octave"] not in OCTAVE_MODES:
            raise StartupError(f"parameter octave must be one of {', '.join(OCTAVE_MODES)}, "
                               f"got '{self.p['octave']}'")

    def _resolve_vocabulary(self) -> Path:
        """The vocabulary file, validated now (the bridge only reads it once a camera is known)."""
        from ..eval.photos import PhotosMissing
        from ..orbslam3.vocabulary import default_vocabulary, read_vocabulary_header

        path = self.p["vocabulary"]
        if not path:
            self.get_logger().info("vocabulary '' -> the default opencv-doc vocabulary (built on first use)")
            try:
                return default_vocabulary()
            except (PhotosMissing, ValueError, OSError) as exc:
                raise StartupError(f"no vocabulary given and the default one cannot be built: {exc}") from None
        try:
            read_vocabulary_header(path)
        except (ValueError, OSError) as exc:
            raise StartupError(f"bad vocabulary: {exc}") from None
        return Path(path)

    def bridge_conf(self) -> dict:
        p = self.p
        return {"vocabulary": str(self.vocabulary), "sensor": "rgbd" if self.rgbd else "monocular",
                "kf_max_dist": float(p["kf_max_dist"]), "kf_max_angle_deg": float(p["kf_max_angle_deg"]),
                "kf_max_gap": int(p["kf_max_gap"]), "pair_radius_px": float(p["pair_radius_px"]),
                "octave": p["octave"], "settings": {"n_features": int(p["n_features"])}}

    # ------------------------------------------------------------------ topics
    def _make_io(self) -> None:
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        cam_qos = QoSProfile(depth=SYNC_QUEUE, reliability=ReliabilityPolicy.RELIABLE)
        self.pub_state = self.create_publisher(String, INPUT_TOPICS["tracking_state"], reliable)
        self.pub_frame_kp = self.create_publisher(PointCloud2, INPUT_TOPICS["frame_keypoints"], reliable)
        self.pub_kf_pose = self.create_publisher(PoseStamped, INPUT_TOPICS["keyframe_pose"], reliable)
        self.pub_kf_kp = self.create_publisher(PointCloud2, INPUT_TOPICS["keyframe_keypoints"], reliable)
        self.create_subscription(CameraInfo, INPUT_TOPICS["camera_info"], self._on_camera_info, cam_qos)
        self.create_subscription(PoseWithCovarianceStamped, RELOCALIZATION_TOPIC, self._on_relocalization,
                                 QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self.sync_backend = self._make_sync(cam_qos)

    def _make_sync(self, qos: QoSProfile) -> str:
        """Image alone (monocular) and image + depth of equal stamp (RGB-D): message_filters when importable,
        else the in-package StampSync."""
        try:
            import message_filters as mf
        except ImportError:
            mf = None
        if mf is not None:
            img_sub = mf.Subscriber(self, Image, INPUT_TOPICS["image"], qos_profile=qos)
            depth_sub = mf.Subscriber(self, Image, DEPTH_TOPIC, qos_profile=qos)
            img_sub.registerCallback(self._on_image)
            depth_sub.registerCallback(self._on_depth)
            self._sync = mf.TimeSynchronizer([img_sub, depth_sub], SYNC_QUEUE)
            self._sync.registerCallback(self._on_pair)
            self._subs = [img_sub, depth_sub]
            return "message_filters"
        self._sync = StampSync(2, self._on_pair, SYNC_QUEUE, 0)

        def image_cb(msg: Image) -> None:
            self._on_image(msg)
            self._sync.add(0, header_ns(msg), msg)

        def depth_cb(msg: Image) -> None:
            self._on_depth(msg)
            self._sync.add(1, header_ns(msg), msg)

        self.create_subscription(Image, INPUT_TOPICS["image"], image_cb, qos)
        self.create_subscription(Image, DEPTH_TOPIC, depth_cb, qos)
        return "in-package StampSync"

    # ------------------------------------------------------------------ warnings and counts

    # ------------------------------------------------------------------ input callbacks (executor thread)
    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            cam = msg_to_camera(msg)
        except ContractError as exc:
            self.guard.reject("camera_info", str(exc))
            return
        with self._cond:
            old = self.camera
            if old is None:
                self.camera, self._camera_at = cam, time.monotonic()
                self._cond.notify_all()
                return
        if not (np.array_equal(old.K, cam.K) and np.array_equal(old.D, cam.D)
                and (old.width, old.height, old.model) == (cam.width, cam.height, cam.model)):
            self.guard.reject("camera_info", "the calibration changed; ORB-SLAM3 keeps the first one (restart the node)")

    def _on_image(self, msg: Image) -> None:
        """Every image: tracked alone (monocular), or remembered until its depth image arrives (RGB-D)."""
        if self.rgbd is None:  # sensor auto, ORB-SLAM3 not started yet
            self.guard.reject("not_started", "ORB-SLAM3 has not started yet (it waits for the first CameraInfo)"
                         if self.camera is None else "ORB-SLAM3 is starting")
            return
        if not self.rgbd:
            self._queue_frame(msg, None)
            return
        self._await_depth[header_ns(msg)] = None
        while len(self._await_depth) > SYNC_QUEUE:
            ns, _ = self._await_depth.popitem(last=False)
            self.guard.reject("depth_missing", f"no depth image with the stamp {ns} ns arrived on {DEPTH_TOPIC} (RGB-D pairs "
                                  f"image and depth by equal stamp; sensor:=monocular ignores depth)")

    def _on_depth(self, msg: Image) -> None:
        self._depth_seen = True
        if self.rgbd is False:
            self.counts["depth_ignored"] += 1
            self.guard.warn("depth_ignored", f"depth images on {DEPTH_TOPIC} are ignored: ORB-SLAM3 runs monocular "
                                        f"(sensor:=rgbd to use them)")

    def _on_pair(self, image_msg: Image, depth_msg: Image) -> None:
        if not self.rgbd:
            return
        self._await_depth.pop(header_ns(image_msg), None)
        self._queue_frame(image_msg, depth_msg)

    def _queue_frame(self, image_msg: Image, depth_msg: Image | None) -> None:
        ns = header_ns(image_msg)
        cam = self.camera
        if cam is None:
            self.guard.reject("not_started", "no CameraInfo received yet")
            return
        try:
            rgb = decode_image(msg_to_image(image_msg))
            h, w = rgb.shape[:2]
            if (w, h) != (cam.width, cam.height):
                raise ContractError(f"image is {w}x{h} but CameraInfo says {cam.width}x{cam.height}")
        except ContractError as exc:
            self.guard.reject("image", str(exc))
            return
        depth = None
        if depth_msg is not None:
            try:
                depth = decode_depth(msg_to_image(depth_msg))
                if depth.shape != (h, w):
                    raise ContractError(f"depth image is {depth.shape[1]}x{depth.shape[0]} but the image is {w}x{h}")
            except ContractError as exc:
                self.guard.reject("depth", str(exc))
                return
        with self._cond:
            self._frames.append((ns, rgb, depth, image_msg.header.frame_id or "camera"))
            dropped = 0
            while len(self._frames) > int(self.p["queue_size"]):
                self._frames.popleft()
                dropped += 1
            self._cond.notify_all()
        self.counts["received"] += 1
        if dropped:
            self.guard.reject("frame_overflow", "ORB-SLAM3 is slower than the camera: oldest waiting frame dropped")

    def _on_relocalization(self, msg: PoseWithCovarianceStamped) -> None:
        try:
            T = msg_pose_to_T(msg.pose.pose)
        except ContractError as exc:
            self.guard.reject("relocalization", str(exc))
            return
        if msg.header.frame_id not in ("", MAP_FRAME):
            self.guard.reject("relocalization", f"frame_id '{msg.header.frame_id}', expected '{MAP_FRAME}'")
            return
        with self._cond:
            self._answers.append((header_ns(msg), T))
            self._cond.notify_all()

    # ------------------------------------------------------------------ worker thread
    def _sensor_due(self) -> bool:
        """sensor auto: decide RGB-D / monocular once ORB-SLAM3 can start (the caller holds the lock)."""
        if self.rgbd is not None:
            return True
        if self._depth_seen or self.count_publishers(DEPTH_TOPIC) > 0:
            self.rgbd = True
        elif time.monotonic() - self._camera_at >= AUTO_GRACE_S:
            self.rgbd = False
        else:
            return False
        self.get_logger().info(f"sensor auto -> {'RGB-D' if self.rgbd else 'monocular'} ("
                               f"{'depth on ' + DEPTH_TOPIC if self.rgbd else 'nothing on ' + DEPTH_TOPIC})")
        return True

    def _start(self) -> None:
        t0 = time.perf_counter()
        try:
            self.bridge = OrbSlam3Bridge(self.camera, self.bridge_conf(), rgbd=bool(self.rgbd), workdir=self.workdir)
        except (BridgeError, ValueError, OSError) as exc:
            self.fatal = f"ORB-SLAM3 did not start: {exc}"
            self.get_logger().error(self.fatal)
            return
        cam = self.camera
        self.get_logger().info(f"ORB-SLAM3 ready ({'RGB-D' if self.bridge.rgbd else 'monocular'}, "
                               f"{cam.width}x{cam.height}, {time.perf_counter() - t0:.1f} s to start, its log: "
                               f"{self.bridge.log_path})")

    def _run(self) -> None:
        try:  # what the first frame would import (torch for the octave estimate, scipy for the pairing)
            import scipy.spatial  # noqa: F401
            if self.p["octave"] == "estimate":
                from ..features import detectors  # noqa: F401
        except ImportError as exc:
            self.fatal = f"the bridge's dependencies are not importable: {exc}"
            self.get_logger().error(self.fatal)
            return
        while True:
            with self._cond:
                while not self._stop:
                    if self.bridge is None:
                        if self.camera is not None and self._sensor_due():
                            break
                    elif self._frames or self._answers:
                        break
                    self._cond.wait(0.1)
                if self._stop:
                    return
                answers = list(self._answers)
                self._answers.clear()
                frame = self._frames.popleft() if self._frames and self.bridge is not None else None
            try:
                if self.bridge is None:
                    self._start()
                    if self.bridge is None:
                        return
                    continue
                for ns, T in answers:  # before the next frame, so that it is already published in the map frame
                    if self.bridge.answer(ns, T):
                        self.counts["anchored"] += 1
                        self.get_logger().info(f"ORB-SLAM3 map {self.bridge.epoch} anchored to '{MAP_FRAME}' by "
                                               f"the relocalization at {ns / 1e9:.3f} s")
                    else:
                        self.counts["answers_unused"] += 1
                if frame is not None:
                    self._track(*frame)
            except Exception as exc:  # noqa: BLE001 - one bad frame must not stop the node
                self.guard.reject("track", f"{type(exc).__name__}: {exc}")

    def _track(self, ns: int, rgb: np.ndarray, depth: np.ndarray | None, frame_id: str) -> None:
        bf = self.bridge.track(ns, rgb, depth if self.bridge.rgbd else None)
        self.counts["tracked"] += 1
        self.counts[f"state_{bf.published_state}"] += 1
        if bf.published_state != self.last_state:
            self.get_logger().info(f"tracking state {bf.published_state}" + (
                f" (ORB-SLAM3 {bf.state}, map {bf.epoch} not anchored yet)" if bf.state != bf.published_state else ""))
            self.last_state = bf.published_state
        header = cv.make_header(ns, frame_id)
        self.pub_state.publish(String(data=bf.published_state))
        self.pub_frame_kp.publish(cv.cloud_to_msg(encode_keypoints(bf.keypoints), header))
        if bf.is_keyframe:
            self.pub_kf_pose.publish(cv.pose_stamped(bf.T_map_cam, ns, MAP_FRAME))
            self.pub_kf_kp.publish(cv.cloud_to_msg(encode_keypoints(bf.keypoints, bf.map_points, bf.map_point_ids),
                                                   header))
            self.counts["keyframes"] += 1

    # ------------------------------------------------------------------ shutdown
    def summary(self) -> dict:
        return {"counts": dict(self.counts), "rejected": dict(self.rejected), "sync": self.sync_backend,
                "bridge": self.bridge.summary() if self.bridge is not None else None}

    def stop(self) -> None:
        """Stop the worker after the frame it is tracking: nothing is published afterwards."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._worker.join(timeout=60.0)

    def finish(self) -> None:
        """After `stop` (and destroy_node, so the last lines do not go to a dead /rosout): shut ORB-SLAM3 down
        (its keyframe trajectory goes into workdir), log the counts and write the summary file."""
        self.stop()
        files = {}
        if self.bridge is not None:
            try:
                files = self.bridge.shutdown(self.workdir)
            except Exception as exc:  # noqa: BLE001 - still write the summary and exit
                self.get_logger().error(f"ORB-SLAM3 shutdown failed: {type(exc).__name__}: {exc}")
        s = {**self.summary(), "files": files}
        try:
            (self.workdir / SUMMARY_FILE).write_text(json.dumps(s, indent=1, default=str))
        except OSError as exc:
            self.get_logger().error(f"cannot write {self.workdir / SUMMARY_FILE}: {exc}")
        self.get_logger().info(f"shut down: counts {dict(self.counts)}, dropped {dict(self.rejected)}, files "
                               f"{files}")


def main(args: list[str] | None = None) -> int:
    """Console script `orbslam3_bridge` (ros-args as for any ROS 2 node)."""
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(name)s: %(message)s")
    rclpy.init(args=sys.argv if args is None else args)
    node = None
    code = 0
    try:
        node = OrbSlam3BridgeNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while rclpy.ok() and node.fatal is None:
            executor.spin_once(timeout_sec=0.2)
        if node.fatal is not None:
            code = 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except StartupError as exc:
        get_logger(NODE_NAME).error(str(exc))
        code = 1
    except ParameterException as exc:  # a value outside a parameter's range, or of the wrong type
        get_logger(NODE_NAME).error(f"bad parameter: {exc}")
        code = 1
    finally:
        if node is not None:
            node.stop()
            node.destroy_node()
            node.finish()
        if rclpy.ok():
            rclpy.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
