"""orbslam3_bridge as a user runs it: console script in a subprocess, real ORB-SLAM3, a rendered RGB-D sequence
published over real DDS; its output checked against reloc_node's input contract."""

from __future__ import annotations

import json
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
pytest.importorskip("pyorbslam3", reason="pyorbslam3 is not importable (pip install pyorbslam3==0.1.1 and the "
                                         "GL/X11 runtime, see orbslam3/bridge.py)")

from ros_helpers import isolate_domain, node_log, start_script  # noqa: E402

from agnostic_reloc.geometry import invert_T  # noqa: E402
from agnostic_reloc.io.camera import CameraModel  # noqa: E402
from agnostic_reloc.io.contract import (
    DEPTH_SCALE,
    INPUT_TOPICS,
    TRACKING_STATES,
    ImageData,
    decode_keypoints,
    encode_image,
    pose_to_T,
    seconds_to_ns,
)

NODE = Path(sys.executable).parent / "orbslam3_bridge"
W, H = 320, 240
SEQ_CONF = {"camera": {"width": W, "height": H, "f": 250.0}, "trajectory": {"fps": 10.0, "frames_per_lap": 200}}


def test_config_file_matches_the_declared_parameters():
    """config/orbslam3_bridge.yaml holds every parameter of the node with its declared default."""
    import yaml

    from agnostic_reloc.ros.orbslam3_node import PARAMS

    root = Path(__file__).resolve().parents[2]
    conf = yaml.safe_load((root / "config/orbslam3_bridge.yaml").read_text())["orbslam3_bridge"]["ros__parameters"]
    assert conf == {k: v[0] for k, v in PARAMS.items()}


@pytest.fixture(scope="module")
def sequence(photos):
    from agnostic_reloc.world import make_sequence

    return make_sequence(seed=0, profile="loop", n_frames=60, conf=SEQ_CONF, progress=False)


@pytest.fixture(scope="module")
def vocabulary(photos):
    from agnostic_reloc.orbslam3.vocabulary import default_vocabulary

    return default_vocabulary()  # cached; the first build takes ~30 s


@pytest.fixture(scope="module")
def domain():
    """An isolated DDS domain (201..232: apart from test_node.py's 20..200)."""
    return isolate_domain(201, 232)


def start_node(tmp: Path, *params: str) -> subprocess.Popen:
    return start_script(NODE, tmp, ["--ros-args", *params])


def start_orbslam3(h, proc, K) -> str:
    """Wait for the bridge's subscriptions, then send CameraInfo until ORB-SLAM3 is ready; its log so far."""
    h.wait_for(lambda: all(p.get_subscription_count() > 0 for p in h.pub.values()), 60,
               "the bridge's subscriptions", proc)
    end = time.monotonic() + 90  # ORB-SLAM3 starts on the first CameraInfo (vocabulary load, a few seconds)
    while "ORB-SLAM3 ready" not in node_log(proc) and time.monotonic() < end and proc.poll() is None:
        h.camera_info(K)
        time.sleep(0.25)
    return node_log(proc)


def depth_16uc1(depth_m: np.ndarray) -> ImageData:
    """Metres (inf = none) -> 16UC1 millimetres, 0 = none (contract.DEPTH_TOPIC's encoding)."""
    d = np.asarray(depth_m, np.float64) * DEPTH_SCALE
    mm = np.where(np.isfinite(d) & (d > 0), np.clip(np.round(d), 0, 65535), 0).astype("<u2")
    return ImageData("16UC1", mm.shape[0], mm.shape[1], 2 * mm.shape[1], mm.tobytes())


class Harness:
    """Publishes the camera (+ depth, relocalizations) and records everything the bridge publishes."""

    def __init__(self, depth: bool = True) -> None:
        from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2
        from std_msgs.msg import String

        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = n = rclpy.create_node("bridge_test_harness", context=self.ctx)
        rel = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        cam = QoSProfile(depth=30, reliability=ReliabilityPolicy.RELIABLE)
        self.pub = {"info": n.create_publisher(CameraInfo, INPUT_TOPICS["camera_info"], cam),
                    "image": n.create_publisher(Image, INPUT_TOPICS["image"], cam),
                    **({"depth": n.create_publisher(Image, "/camera/depth/image_raw", cam)} if depth else {}),
                    "reloc": n.create_publisher(PoseWithCovarianceStamped, "/reloc_node/relocalization",
                                                QoSProfile(depth=10))}
        self.got: dict[str, list] = {k: [] for k in ("state", "frame_kp", "kf_pose", "kf_kp")}
        for key, typ, role in (("state", String, "tracking_state"), ("frame_kp", PointCloud2, "frame_keypoints"),
                               ("kf_pose", PoseStamped, "keyframe_pose"),
                               ("kf_kp", PointCloud2, "keyframe_keypoints")):
            n.create_subscription(typ, INPUT_TOPICS[role], self.got[key].append, rel)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(n)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.ctx)

    def wait_for(self, pred, timeout: float, what: str, proc) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return
            if proc.poll() is not None:
                raise AssertionError(f"node exited ({proc.returncode}) while waiting for {what}:\n{node_log(proc)}")
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}:\n{node_log(proc)[-3000:]}")

    def camera_info(self, K, stamp_ns: int = 0) -> None:
        from agnostic_reloc.ros.conversions import camera_info_msg

        self.pub["info"].publish(camera_info_msg(CameraModel.pinhole(K, W, H), stamp_ns, "camera"))

    def frame(self, ns: int, image: ImageData, depth: ImageData | None) -> None:
        from agnostic_reloc.ros.conversions import image_to_msg, make_header

        self.pub["image"].publish(image_to_msg(image, make_header(ns, "camera")))
        if depth is not None:
            self.pub["depth"].publish(image_to_msg(depth, make_header(ns, "camera")))

    def relocalization(self, T: np.ndarray, ns: int) -> None:
        from agnostic_reloc.ros.conversions import make_header, pose_with_covariance

        self.pub["reloc"].publish(pose_with_covariance(T, None, make_header(ns, "map")))


@pytest.fixture(scope="module")
def session(sequence, vocabulary, domain, tmp_path_factory):
    """The whole sequence through one bridge, then malformed input, then SIGINT; yields what was recorded."""
    tmp = tmp_path_factory.mktemp("bridge")
    work = tmp / "work"
    proc = start_node(tmp, "-p", f"vocabulary:={vocabulary}", "-p", f"workdir:={work}", "-p", "warn_throttle_s:=0.0")
    h = Harness()
    try:
        log = start_orbslam3(h, proc, sequence.K)
        assert "ORB-SLAM3 ready (RGB-D" in log, log[-3000:]
        sent = []
        for f in sequence.frames:  # ~10 Hz, as the sequence was rendered
            ns = seconds_to_ns(f.stamp)
            h.camera_info(sequence.K, ns)
            h.frame(ns, encode_image(f.image, "rgb8"), depth_16uc1(f.depth))
            sent.append(ns)
            time.sleep(0.1)
        # wait until the bridge has caught up (no new frame output for 2 s)
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < 2.0 and proc.poll() is None:
            if len(h.got["frame_kp"]) != last:
                last, quiet_since = len(h.got["frame_kp"]), time.monotonic()
            time.sleep(0.1)
        frame_out = {k: list(v) for k, v in h.got.items()}

        # malformed input: each dropped with a warning naming the problem, the node stays up
        t = sent[-1] + 10**9
        img, dep = sequence.frames[0].image, depth_16uc1(sequence.frames[0].depth)
        h.frame(t, ImageData("yuv422", H, W, 2 * W, bytes(H * W * 2)), dep)
        h.frame(t + 10**8, encode_image(img[: H // 2, : W // 2]), depth_16uc1(sequence.frames[0].depth[: H // 2, : W // 2]))
        h.frame(t + 2 * 10**8, encode_image(img), ImageData("8UC1", H, W, W, bytes(H * W)))
        bad_pose = np.eye(4)
        bad_pose[0, 3] = np.nan
        h.relocalization(bad_pose, sent[0])
        # a valid relocalization of a frame of the (already anchored) first map: handed to the bridge, unused
        h.relocalization(np.eye(4), sent[0])
        texts = ("unsupported image encoding 'yuv422'", "image is 160x120 but CameraInfo says 320x240",
                 "depth encoding '8UC1' not supported", "dropped relocalization: pose has non-finite values")
        h.wait_for(lambda: all(s in node_log(proc) for s in texts), 30, "warnings for the malformed input", proc)
        time.sleep(0.5)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(60)
    finally:
        h.close()  # now: later tests must not see this harness's publishers (sensor auto counts them)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    yield {"out": frame_out, "sent": sent, "rc": rc, "log": node_log(proc), "work": work}


def test_tracking_state_and_frame_keypoints(session):
    out, sent = session["out"], session["sent"]
    states = [m.data for m in out["state"]]
    assert states and set(states) <= set(TRACKING_STATES), states
    assert "OK" in states, f"ORB-SLAM3 never tracked: {states}\n{session['log'][-3000:]}"
    clouds = out["frame_kp"]
    assert len(clouds) == len(states) >= 10  # one state and one keypoint cloud per tracked frame
    from agnostic_reloc.io.messages import header_ns, msg_to_cloud

    stamps = [header_ns(m) for m in clouds]
    assert set(stamps) <= set(sent) and stamps == sorted(set(stamps))  # image stamps, in order, once each
    for m in clouds:
        assert m.header.frame_id == "camera"
        kc = decode_keypoints(msg_to_cloud(m))
        assert kc.map_points is None and len(kc.keypoints) > 50
        xy = kc.keypoints.xy
        assert (xy >= 0).all() and (xy[:, 0] <= W - 1).all() and (xy[:, 1] <= H - 1).all()
        assert (kc.keypoints.octave >= 0).all() and (kc.keypoints.octave < 8).all()


def test_keyframes_pose_and_map_points_reproject(session, sequence):
    out = session["out"]
    from agnostic_reloc.io.messages import header_ns, msg_to_cloud

    poses = {header_ns(m): m for m in out["kf_pose"]}
    kf_clouds = {header_ns(m): m for m in out["kf_kp"]}
    frame_clouds = {header_ns(m): m for m in out["frame_kp"]}
    assert poses and set(poses) == set(kf_clouds), "keyframe pose and keypoints must come in equal-stamp pairs"
    assert set(poses) <= set(frame_clouds)
    K = sequence.K
    n_points = 0
    for ns, pm in poses.items():
        assert pm.header.frame_id == "map"
        p, o = pm.pose.position, pm.pose.orientation
        T_map_cam = pose_to_T((p.x, p.y, p.z), (o.x, o.y, o.z, o.w))
        kc = decode_keypoints(msg_to_cloud(kf_clouds[ns]))
        fr = decode_keypoints(msg_to_cloud(frame_clouds[ns]))
        np.testing.assert_array_equal(kc.keypoints.xy, fr.keypoints.xy)  # the frame's keypoints, same rows
        assert kc.map_points is not None and len(kc.map_points) == len(kc.keypoints)
        has = np.isfinite(kc.map_points).all(1)
        assert (kc.map_point_ids[~has] == -1).all()
        X = kc.map_points[has].astype(np.float64)
        T_cam_map = invert_T(T_map_cam)  # T_map_cam is camera -> map
        Xc = X @ T_cam_map[:3, :3].T + T_cam_map[:3, 3]
        assert (Xc[:, 2] > 0).all(), "map points behind the keyframe camera"
        uv = (Xc / Xc[:, 2:3]) @ K.T
        err = np.linalg.norm(uv[:, :2] - kc.keypoints.xy[has], axis=1)
        assert err.max() < 3.0, f"keyframe {ns}: map points reproject up to {err.max():.2f} px off their keypoints"
        n_points += int(has.sum())
    assert n_points >= 15 * len(poses), f"only {n_points} map points on {len(poses)} keyframes"


def test_malformed_input_counted_and_sigint_exits_cleanly(session):
    assert session["rc"] == 0, session["log"][-3000:]
    work = session["work"]
    tum = work / "orbslam3_keyframes_tum.txt"
    assert tum.is_file() and tum.read_text().strip(), "ORB-SLAM3's keyframe trajectory was not written at shutdown"
    s = json.loads((work / "orbslam3_bridge_summary.json").read_text())
    assert s["rejected"].get("image") == 2 and s["rejected"].get("depth") == 1, s
    assert s["rejected"].get("relocalization") == 1, s
    assert s["counts"].get("answers_unused", 0) + s["counts"].get("anchored", 0) == 1, s
    assert s["counts"]["tracked"] >= 10 and s["bridge"]["sensor"] == "rgbd"
    assert s["sync"] in ("message_filters", "in-package StampSync")
    assert "Traceback" not in session["log"], session["log"][-3000:]


def test_auto_without_depth_runs_monocular(sequence, vocabulary, domain, tmp_path):
    """sensor auto and no depth publisher: ORB-SLAM3 monocular; states and keypoints still flow, SIGINT exits 0."""
    proc = start_node(tmp_path, "-p", f"vocabulary:={vocabulary}", "-p", f"workdir:={tmp_path / 'work'}")
    h = Harness(depth=False)
    try:
        log = start_orbslam3(h, proc, sequence.K)
        assert "sensor auto -> monocular" in log and "ORB-SLAM3 ready (monocular" in log, log[-3000:]
        for f in sequence.frames[:15]:
            ns = seconds_to_ns(f.stamp)
            h.frame(ns, encode_image(f.image, "bgr8"), None)
            time.sleep(0.1)
        h.wait_for(lambda: len(h.got["frame_kp"]) >= 5, 30, "frame keypoints", proc)
        from agnostic_reloc.io.messages import msg_to_cloud

        assert {m.data for m in h.got["state"]} <= set(TRACKING_STATES)
        for m in h.got["frame_kp"]:
            xy = decode_keypoints(msg_to_cloud(m)).keypoints.xy
            assert (xy >= 0).all() and (xy[:, 0] <= W - 1).all() and (xy[:, 1] <= H - 1).all()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, node_log(proc)[-3000:]
        s = json.loads((tmp_path / "work/orbslam3_bridge_summary.json").read_text())
        assert s["bridge"]["sensor"] == "monocular" and s["counts"]["tracked"] >= 5, s
    finally:
        h.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("kind", ["missing", "garbage"])
def test_bad_vocabulary_exits_1_naming_the_file(kind, domain, tmp_path):
    path = tmp_path / "ORBvoc.txt"
    if kind == "garbage":
        path.write_text("this is not a vocabulary")
    proc = start_node(tmp_path, "-p", f"vocabulary:={path}")
    try:
        rc = proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"the bridge did not exit on a {kind} vocabulary:\n{node_log(proc)}")
    log = node_log(proc)
    assert rc == 1, log
    errors = [line for line in log.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and str(path) in errors[0], log
    assert ("does not exist" if kind == "missing" else "is not a DBoW2 ORB text vocabulary") in errors[0]
    assert "Traceback" not in log


def test_cli_runs_the_node(domain, tmp_path):
    """`agnostic-reloc orbslam3-bridge --ros --ros-args ...` is the same node (here: the bad-vocabulary exit)."""
    path = tmp_path / "missing_voc.txt"
    cli = Path(sys.executable).parent / "agnostic-reloc"
    p = subprocess.run([str(cli), "orbslam3-bridge", "--ros", "--ros-args", "-p", f"vocabulary:={path}"],
                       capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert p.returncode == 1 and str(path) in p.stdout + p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
