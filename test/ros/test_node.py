"""reloc_node as a user runs it: console script + YAML in a subprocess, a generated sequence over real DDS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy is not importable (install requirements-ros.txt)")

from ros_helpers import isolate_domain, node_log, start_script  # noqa: E402

from agnostic_reloc.geometry import invert_T, rotation_angle_deg  # noqa: E402
from agnostic_reloc.io.camera import CameraModel  # noqa: E402
from agnostic_reloc.io.contract import (
    Cloud,
    CloudField,
    ImageData,
    decode_matches,
    encode_image,
    encode_keypoints,
    parse_keyframe_frame_id,
    seconds_to_ns,
)
from agnostic_reloc.map.store import KeyframeMap  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NODE = Path(sys.executable).parent / "reloc_node"

SEQ_CONF = {"camera": {"width": 320, "height": 240, "f": 250.0}, "keep_depth": False,
            "trajectory": {"kidnap_segments": 2},
            "slam": {"kf_max_dist": 0.6, "kf_max_angle_deg": 20.0, "kf_max_gap": 8, "max_keypoints": 600}}


@pytest.fixture(scope="module")
def sequence(photos):
    from agnostic_reloc.world import make_sequence

    return make_sequence(seed=3, profile="mixed", conf=SEQ_CONF, progress=False)


@pytest.fixture(scope="module")
def domain():
    """An isolated DDS domain for this module (the node subprocess and the test share it)."""
    return isolate_domain(20, 200)


def start_node(tmp: Path, *params: str) -> subprocess.Popen:
    return start_script(NODE, tmp, ["--ros-args", "--params-file", str(ROOT / "config/reloc.yaml"), "-p",
                                    "engine.device:=cpu", "-p", "diagnostics_period_s:=0.5", "-p",
                                    "warn_throttle_s:=0.0", *params])


class Harness:
    """Publishes the contract topics and records every output of the node."""

    def __init__(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped, TransformStamped
        from nav_msgs.msg import Path
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2
        from std_msgs.msg import String
        from visualization_msgs.msg import MarkerArray

        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node("test_harness", context=self.ctx)
        rel = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        n = self.node
        self.pub = {
            "kf_kp": n.create_publisher(PointCloud2, "/orb_slam3/keyframe/keypoints", rel),
            "kf_pose": n.create_publisher(PoseStamped, "/orb_slam3/keyframe/pose", rel),
            "image": n.create_publisher(Image, "/camera/image_raw", QoSProfile(depth=30)),
            "info": n.create_publisher(CameraInfo, "/camera/camera_info", QoSProfile(depth=30)),
            "fr_kp": n.create_publisher(PointCloud2, "/orb_slam3/frame/keypoints", rel),
            "state": n.create_publisher(String, "/orb_slam3/tracking_state", rel),
            "query": n.create_publisher(Image, "/reloc_node/query/image", QoSProfile(depth=2)),
        }
        self.loops, self.matches, self.relocs, self.status, self.diag, self.edges = [], [], [], [], [], []
        n.create_subscription(PoseWithCovarianceStamped, "/reloc_node/loop_closure", self.loops.append, rel)
        n.create_subscription(PointCloud2, "/reloc_node/loop_closure/matches", self.matches.append, rel)
        n.create_subscription(PoseWithCovarianceStamped, "/reloc_node/relocalization", self.relocs.append,
                              QoSProfile(depth=50))
        n.create_subscription(String, "/reloc_node/relocalization/status", self.status.append, QoSProfile(depth=50))
        n.create_subscription(DiagnosticArray, "/diagnostics", self.diag.append, QoSProfile(depth=10))
        n.create_subscription(MarkerArray, "/reloc_node/loop_edges", self.edges.append,
                              QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                         durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.images: list = []
        n.create_subscription(Image, "/reloc_node/matches_image", self.images.append, QoSProfile(depth=1))
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.paths, self.corrections, self.corrected = [], [], []
        n.create_subscription(Path, "/reloc_node/corrected_path", self.paths.append, latched)
        n.create_subscription(TransformStamped, "/reloc_node/correction", self.corrections.append, latched)
        n.create_subscription(PoseStamped, "/reloc_node/corrected_pose", self.corrected.append, rel)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(n)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.ctx)

    # ---------------------------------------------------------------- helpers
    def values(self) -> dict[str, str]:
        """Key/values of the latest diagnostics status of reloc_node."""
        for arr in reversed(self.diag):
            for st in arr.status:
                if "reloc_node" in st.name:
                    return {kv.key: kv.value for kv in st.values}
        return {}

    def wait_for(self, pred, timeout: float, what: str, proc=None) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"node exited ({proc.returncode}) while waiting for {what}:\n{node_log(proc)}")
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; diagnostics {self.values()}"
                             + (f"\n{node_log(proc)[-3000:]}" if proc is not None else ""))

    def wait_connected(self, proc) -> None:
        self.wait_for(lambda: all(p.get_subscription_count() > 0 for k, p in self.pub.items()), 60,
                      "the node's subscriptions", proc)
        self.wait_for(lambda: self.values(), 30, "diagnostics", proc)

    def camera_info(self, K, w, h, stamp_ns=0) -> None:
        from agnostic_reloc.ros.conversions import camera_info_msg

        self.pub["info"].publish(camera_info_msg(CameraModel.pinhole(K, w, h), stamp_ns, "camera"))

    def frame(self, f, K, w, h, keyframe_ok: bool = True) -> None:
        """Publish one world frame as ORB-SLAM3 would (state, image, frame keypoints, keyframe if any)."""
        from std_msgs.msg import String

        from agnostic_reloc.ros.conversions import cloud_to_msg, image_to_msg, make_header, pose_stamped

        ns = seconds_to_ns(f.stamp)
        self.camera_info(K, w, h, ns)
        self.pub["state"].publish(String(data=f.tracking_state))
        self.pub["image"].publish(image_to_msg(encode_image(f.image, "rgb8"), make_header(ns, "camera")))
        self.pub["fr_kp"].publish(cloud_to_msg(encode_keypoints(f.keypoints), make_header(ns, "camera")))
        if f.is_keyframe and f.T_map_cam is not None and keyframe_ok:
            self.pub["kf_pose"].publish(pose_stamped(f.T_map_cam, ns, "map"))
            self.pub["kf_kp"].publish(cloud_to_msg(encode_keypoints(f.keypoints, f.map_points, f.map_point_ids),
                                                   make_header(ns, "camera")))

    def call(self, name: str, timeout: float = 30.0):
        from std_srvs.srv import Trigger

        cli = self.node.create_client(Trigger, f"/reloc_node/{name}")
        assert cli.wait_for_service(timeout_sec=timeout), f"service {name} not available"
        fut = cli.call_async(Trigger.Request())
        end = time.monotonic() + timeout
        while not fut.done() and time.monotonic() < end:
            time.sleep(0.05)
        assert fut.done(), f"service {name} did not answer"
        return fut.result()


def published_keyframes(seq) -> list:
    return [f for f in seq.frames if f.is_keyframe and f.T_map_cam is not None and f.tracking_state == "OK"]


@pytest.fixture(scope="module")
def session(sequence, domain, tmp_path_factory):
    """Run the whole sequence through one node; yields (harness, proc, tmp dir)."""
    tmp = tmp_path_factory.mktemp("node")
    proc = start_node(tmp, "-p", f"map_path:={tmp / 'map.agrl'}", "-p", "query_queue_size:=2")
    h = Harness()
    try:
        h.wait_connected(proc)
        (w, hh), K = sequence.image_size, sequence.K
        # a burst: frames published 4x faster than real time, far faster than the CPU extracts keyframes
        dt = 0.25 * float(np.median(np.diff([f.stamp for f in sequence.frames])))
        for f in sequence.frames:
            h.frame(f, K, w, hh)
            time.sleep(dt)
        n_kf = len(published_keyframes(sequence))
        n_q = sum(f.tracking_state != "OK" for f in sequence.frames)
        h.wait_for(lambda: h.values().get("count_keyframes") == str(n_kf)
                   and h.values().get("queue_verify") == "0" and h.values().get("queue_queries") == "0"
                   and int(h.values().get("count_relocalized", 0)) + int(h.values().get("count_not_relocalized", 0))
                   + int(h.values().get("dropped_queries", 0)) >= n_q - 1,  # the first lost frame may race its (unstamped) state
                   900, f"{n_kf} keyframes inserted and verified, {n_q} queries answered or dropped", proc)
        time.sleep(1.0)
        yield h, proc, tmp
    finally:
        h.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_loops_are_true_and_carry_matches(session, sequence):
    h, proc, _ = session
    gt = {seconds_to_ns(f.stamp): f.T_world_cam for f in sequence.frames}
    kf_rows = {seconds_to_ns(f.stamp): len(f.keypoints) for f in published_keyframes(sequence)}
    assert len(h.loops) >= 2, f"expected loop closures, got {len(h.loops)}\n{node_log(proc)[-2000:]}"
    from agnostic_reloc.io.contract import covariance_from_ros, pose_to_T
    from agnostic_reloc.io.messages import header_ns, msg_to_cloud

    for msg in h.loops:
        q_ns, m_ns = header_ns(msg), parse_keyframe_frame_id(msg.header.frame_id)
        assert q_ns in kf_rows and m_ns in kf_rows and m_ns < q_ns
        p, o = msg.pose.pose.position, msg.pose.pose.orientation
        T = pose_to_T((p.x, p.y, p.z), (o.x, o.y, o.z, o.w))
        T_gt = invert_T(gt[m_ns]) @ gt[q_ns]
        err = invert_T(T_gt) @ T
        assert np.linalg.norm(err[:3, 3]) < 0.3 and rotation_angle_deg(err) < 3.0, "false loop published"
        cov = covariance_from_ros(msg.pose.covariance)
        assert np.allclose(cov, cov.T) and np.all(np.diag(cov) > 0)
    by_stamp = {(header_ns(m), m.header.frame_id): m for m in h.matches}
    for msg in h.loops:
        m = by_stamp[(header_ns(msg), msg.header.frame_id)]
        pairs, scores = decode_matches(msg_to_cloud(m))
        assert len(pairs) >= 30 and np.isfinite(scores).all()
        assert pairs[:, 0].max() < kf_rows[header_ns(msg)]
        assert pairs[:, 1].max() < kf_rows[parse_keyframe_frame_id(msg.header.frame_id)]
    # a subscriber to ~/matches_image gets the drawing of the last loop
    assert h.images and h.images[-1].encoding == "rgb8" and h.images[-1].width > 0
    # loop edges for RViz: keyframe spheres + one line segment per loop
    markers = h.edges[-1].markers
    assert {m.ns for m in markers} == {"keyframes", "loops"}
    assert len([m for m in markers if m.ns == "loops"][0].points) == 2 * len(h.loops)


def pose_T(p) -> np.ndarray:
    """geometry_msgs Pose -> 4x4."""
    from agnostic_reloc.io.contract import pose_to_T

    return pose_to_T((p.position.x, p.position.y, p.position.z),
                     (p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w))


def test_loop_corrected_path_pose_and_correction(session, sequence):
    """After accepted loops: ~/corrected_path (one pose per keyframe, in corrected_frame), ~/correction
    (corrected_frame -> map_frame) and ~/corrected_pose of the newest keyframe, consistent with each other."""
    h, proc, _ = session
    from agnostic_reloc.io.contract import pose_to_T
    from agnostic_reloc.io.messages import header_ns

    kfs = published_keyframes(sequence)
    kf_ns = [seconds_to_ns(f.stamp) for f in kfs]
    slam = {seconds_to_ns(f.stamp): f.T_map_cam for f in kfs}
    assert h.loops and h.paths and h.corrections and h.corrected
    for path in h.paths:  # keyframes in insertion order, each stamped with its image stamp
        stamps = [header_ns(p) for p in path.poses]
        assert path.header.frame_id == "map_corrected" and stamps == kf_ns[: len(stamps)]
        assert {p.header.frame_id for p in path.poses} <= {"map_corrected"}
    last = h.paths[-1]
    assert {header_ns(m) for m in h.loops} <= {header_ns(p) for p in last.poses}  # published after the loops
    assert len(h.paths) <= len(h.loops) + len(kfs) // 10  # on loops and every 10th keyframe, not on each one

    c = h.corrections[-1]
    assert (c.header.frame_id, c.child_frame_id) == ("map_corrected", "map")
    assert header_ns(c) == kf_ns[-1]  # the newest keyframe's correction
    t, q = c.transform.translation, c.transform.rotation
    T_corrected_slam = pose_to_T((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))
    assert not np.allclose(T_corrected_slam, np.eye(4), atol=1e-9)  # the metric loops moved the trajectory
    pose = h.corrected[-1]
    assert pose.header.frame_id == "map_corrected" and header_ns(pose) == kf_ns[-1]
    np.testing.assert_allclose(pose_T(pose.pose), T_corrected_slam @ slam[kf_ns[-1]], atol=1e-6)
    assert {header_ns(p) for p in h.corrected} == set(kf_ns)  # one on each keyframe (and again on loops)
    by_stamp = {header_ns(p): pose_T(p.pose) for p in last.poses}
    if kf_ns[-1] in by_stamp:  # the last path came after the last keyframe: same correction as ~/correction
        np.testing.assert_allclose(by_stamp[kf_ns[-1]], T_corrected_slam @ slam[kf_ns[-1]], atol=1e-6)
    try:
        import tf2_ros  # noqa: F401

        said = "broadcast on /tf (tf2_ros) and published on ~/correction"
    except ImportError:
        said = "published on ~/correction only"
    assert node_log(proc).count(said) == 1


def test_burst_absorbed_and_queries_answered_or_counted(session, sequence):
    h, _, _ = session
    v = h.values()
    assert v["count_keyframes"] == str(len(published_keyframes(sequence)))  # not one keyframe lost
    assert "rejected_keyframe" not in v, f"valid keyframes were rejected: {v}"
    assert int(v["dropped_queries"]) > 0  # the burst of lost frames exceeded the query queue
    assert len(h.status) == int(v["count_relocalized"]) + int(v["count_not_relocalized"])
    assert v["device"] == "cpu" and v["sync"] in ("message_filters", "in-package StampSync")
    assert float(v["latency_keyframe_p50_ms"]) > 0


def test_relocalizations_are_accurate(session, sequence):
    h, _, _ = session
    assert h.relocs, "no relocalization published"
    frames = {seconds_to_ns(f.stamp): f for f in sequence.frames}
    kfs = published_keyframes(sequence)
    from agnostic_reloc.io.contract import pose_to_T
    from agnostic_reloc.io.messages import header_ns

    for msg in h.relocs:
        ns = header_ns(msg)
        f = frames[ns]
        assert f.tracking_state != "OK" and msg.header.frame_id == "map"
        # the map frame drifts: compare in the map frame of the last keyframe before the query
        last = [k for k in kfs if k.stamp < f.stamp][-1]
        T_map_world = last.T_map_cam @ invert_T(last.T_world_cam)
        p, o = msg.pose.pose.position, msg.pose.pose.orientation
        err = invert_T(T_map_world @ f.T_world_cam) @ pose_to_T((p.x, p.y, p.z), (o.x, o.y, o.z, o.w))
        assert np.linalg.norm(err[:3, 3]) < 0.5 and rotation_angle_deg(err) < 5.0


def bad_cloud(kind: str, n: int = 50) -> Cloud:
    rng = np.random.default_rng(0)
    xy = rng.uniform(10, 200, (n, 2)).astype(np.float32)
    from agnostic_reloc.features.keypoints import Keypoints

    good = encode_keypoints(Keypoints(xy))
    if kind == "missing_y":
        return Cloud([f for f in good.fields if f.name != "y"], good.point_step, n, 1, good.data)
    if kind == "mistyped_x":
        return Cloud([CloudField("x", 0, 8)] + good.fields[1:], good.point_step, n, 1, good.data)
    if kind == "short_data":
        return Cloud(good.fields, good.point_step, n, 1, good.data[:-7])
    if kind == "outside":
        return encode_keypoints(Keypoints(xy * 10))
    return good


def test_malformed_input_is_survived_and_counted(session, sequence):
    h, proc, _ = session
    from std_msgs.msg import String

    from agnostic_reloc.ros.conversions import cloud_to_msg, image_to_msg, make_header, pose_stamped

    (w, hh) = sequence.image_size
    img = sequence.frames[0].image
    t0 = seconds_to_ns(sequence.frames[-1].stamp) + 10**9
    before = h.values()

    def kf(ns, cloud, T=np.eye(4), image=None):
        h.pub["image"].publish(image_to_msg(image or encode_image(img), make_header(ns, "camera")))
        h.pub["kf_pose"].publish(pose_stamped(T, ns, "map"))
        h.pub["kf_kp"].publish(cloud_to_msg(cloud, make_header(ns, "camera")))

    # stamps going backwards: a valid keyframe older than the last inserted one (sent alone first: a newer
    # keyframe set completing meanwhile would make the synchroniser discard its older image, as message_filters does)
    kf(seconds_to_ns(sequence.frames[1].stamp) + 1, bad_cloud("good"))
    h.wait_for(lambda: int(h.values().get("rejected_keyframe", 0)) > int(before.get("rejected_keyframe", 0)), 60,
               "the backwards keyframe counted", proc)
    for i, kind in enumerate(["missing_y", "mistyped_x", "short_data", "outside"]):
        kf(t0 + i * 10**8, bad_cloud(kind))

    nan_pose = pose_stamped(np.eye(4), t0 + 5 * 10**8, "map")
    nan_pose.pose.position.x = float("nan")
    ns = t0 + 5 * 10**8
    h.pub["image"].publish(image_to_msg(encode_image(img), make_header(ns, "camera")))
    h.pub["kf_pose"].publish(nan_pose)
    h.pub["kf_kp"].publish(cloud_to_msg(bad_cloud("good"), make_header(ns, "camera")))
    # unsupported encoding (on the query image) and an image whose size disagrees with CameraInfo
    yuv = ImageData("yuv422", hh, w, w * 2, bytes(hh * w * 2))
    h.pub["query"].publish(image_to_msg(yuv, make_header(t0 + 7 * 10**8, "camera")))
    small = encode_image(img[: hh // 2, : w // 2])
    h.pub["query"].publish(image_to_msg(small, make_header(t0 + 8 * 10**8, "camera")))
    h.pub["state"].publish(String(data="OK"))

    def rejected() -> int:
        v = h.values()
        return sum(int(v.get(k, 0)) for k in ("rejected_keyframe", "rejected_query"))

    base = sum(int(before.get(k, 0)) for k in ("rejected_keyframe", "rejected_query"))
    h.wait_for(lambda: rejected() - base >= 8, 60, "8 malformed messages counted", proc)
    assert proc.poll() is None
    log = node_log(proc)
    for text in ("no field 'y'", "field 'x' has datatype 8", "data has", "outside the", "non-finite",
                 "stamps went backwards", "unsupported image encoding 'yuv422'", "CameraInfo says"):
        assert text in log, f"no warning naming '{text}' in the node log"
    assert h.values()["count_keyframes"] == before["count_keyframes"]  # nothing malformed was inserted


def test_save_reset_and_new_session_relocalizes_from_image(session, sequence, tmp_path):
    h, proc, tmp = session
    n_kf = len(published_keyframes(sequence))
    res = h.call("save_map")
    assert res.success, res.message
    path = tmp / "map.agrl"
    saved = KeyframeMap.load(path)
    assert len(saved) == n_kf
    assert len(saved.corrections()) == n_kf  # the map file keeps the loop corrections
    from agnostic_reloc.io.messages import header_ns

    corrected = {header_ns(p): pose_T(p.pose) for p in h.paths[-1].poses}
    res = h.call("reset_map")
    assert res.success
    h.wait_for(lambda: h.values().get("map_keyframes") == "0", 10, "empty map after reset", proc)
    assert len(KeyframeMap.load(path)) == n_kf  # reset never touches the file

    # shutdown with an empty map keeps yesterday's file; SIGINT ends the node cleanly
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0, node_log(proc)[-2000:]
    assert len(KeyframeMap.load(path)) == n_kf

    # a new session loads the map and relocalizes a kidnapped frame from its image alone (~/query/image)
    proc2 = start_node(tmp, "-p", f"map_path:={path}", "-p", "save_map_on_shutdown:=false")
    try:
        h.diag.clear()
        h.status.clear()
        h.relocs.clear()
        h.paths.clear()
        h.wait_for(lambda: h.pub["query"].get_subscription_count() > 0 and h.values(), 60, "second node", proc2)
        assert h.values()["map_keyframes"] == str(n_kf)
        # the reloaded map starts corrected: its latched path holds the first session's corrected poses
        h.wait_for(lambda: h.paths and len(h.paths[-1].poses) == n_kf, 30, "the loaded map's corrected path", proc2)
        reloaded = {header_ns(p): pose_T(p.pose) for p in h.paths[-1].poses}
        for ns, T in corrected.items():
            np.testing.assert_allclose(reloaded[ns], T, atol=1e-9)
        (w, hh), K = sequence.image_size, sequence.K
        kid = [f for f in sequence.frames if f.kidnapped]
        from agnostic_reloc.ros.conversions import image_to_msg, make_header

        # a query before any CameraInfo is dropped with a warning naming it
        h.pub["query"].publish(image_to_msg(encode_image(kid[0].image), make_header(1, "camera")))
        h.wait_for(lambda: h.values().get("rejected_query") == "1", 30, "query without CameraInfo counted", proc2)
        assert "no CameraInfo received yet" in node_log(proc2)
        h.camera_info(K, w, hh)
        time.sleep(0.5)

        for f in kid[:: max(1, len(kid) // 3)][:3]:
            h.pub["query"].publish(image_to_msg(encode_image(f.image, "bgr8"),
                                                make_header(seconds_to_ns(f.stamp), "camera")))
            h.wait_for(lambda n=len(h.status): len(h.status) > n, 120, "a relocalization status", proc2)
        assert any(s.data.startswith("localized") for s in h.status), [s.data for s in h.status]
    finally:
        proc2.send_signal(signal.SIGINT)
        proc2.wait(60)


def test_node_logs_a_status_line(domain, tmp_path):
    """`-p status_period_s:=0.5`: the node says what it is doing, one line per period (io.status.status_line)."""
    proc = start_node(tmp_path, "-p", "status_period_s:=0.5", "-p", "save_map_on_shutdown:=false")
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end and node_log(proc).count("status: ") < 2 and proc.poll() is None:
            time.sleep(0.5)
        log = node_log(proc)
        assert log.count("status: 0 keyframes in map | backlog 0 keyframes") >= 2, log[-3000:]
        line = next(ln for ln in log.splitlines() if "status: " in ln)
        assert "loops 0 accepted, 0 refused" in line and "relocalization 0 ok, 0 failed" in line
        assert "cpu, aliked " in line and "keyframe p50 -" in line
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)


LAUNCH_SCRIPT = """
import sys
from launch import LaunchService
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
ls = LaunchService()
ls.include_launch_description(IncludeLaunchDescription(PythonLaunchDescriptionSource(sys.argv[1]),
                              launch_arguments=[a.split(':=', 1) for a in sys.argv[2:]]))
sys.exit(ls.run())
"""


def test_launch_file_starts_the_node(domain, tmp_path):
    """`ros2 launch agnostic_reloc reloc.launch.py` equivalent, through the installed share/ and lib/ files."""
    try:
        import launch_ros  # noqa: F401

        import launch  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"launch/launch_ros not importable ({exc}); on the pip path they have no wheels")
    from ament_index_python.packages import get_package_prefix, get_package_share_directory

    env = dict(os.environ)
    env["AMENT_PREFIX_PATH"] = os.pathsep.join(p for p in (sys.prefix, env.get("AMENT_PREFIX_PATH")) if p)
    os.environ["AMENT_PREFIX_PATH"] = env["AMENT_PREFIX_PATH"]
    share = Path(get_package_share_directory("agnostic_reloc"))
    assert (share / "config/reloc.yaml").is_file() and (share / "launch/reloc.launch.py").is_file()
    assert (Path(get_package_prefix("agnostic_reloc")) / "lib/agnostic_reloc/reloc_node").exists()
    log = open(tmp_path / "launch.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH_SCRIPT, str(share / "launch/reloc.launch.py"),
                             "device:=cpu", f"map_path:={tmp_path / 'm.agrl'}", "namespace:=robot1"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    h = Harness()
    try:
        names = []

        def started() -> bool:
            names[:] = [st.name for arr in h.diag for st in arr.status]
            return any("/robot1/reloc_node" in n for n in names)

        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not started() and proc.poll() is None:
            time.sleep(0.5)
        assert started(), f"no diagnostics from /robot1/reloc_node ({names}):\n{(tmp_path / 'launch.log').read_text()}"
        values = {kv.key: kv.value for arr in h.diag for st in arr.status if "/robot1/" in st.name for kv in st.values}
        assert values["device"] == "cpu"
    finally:
        h.close()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
