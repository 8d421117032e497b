"""The message contract (ROS-free): PointCloud2 layouts, images, poses, camera model, stamp sync, events."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from agnostic_reloc.features.detectors import detect
from agnostic_reloc.geometry import so3_exp
from agnostic_reloc.io.camera import CameraModel
from agnostic_reloc.io.contract import (
    FLOAT32,
    FLOAT64,
    INT32,
    Cloud,
    CloudField,
    ContractError,
    ImageData,
    T_to_pose,
    TrackingState,
    covariance_from_ros,
    covariance_to_ros,
    decode_cloud,
    decode_image,
    decode_keypoints,
    decode_matches,
    encode_image,
    encode_keypoints,
    encode_matches,
    keyframe_frame_id,
    parse_keyframe_frame_id,
    pose_to_T,
    seconds_to_ns,
)
from agnostic_reloc.io.events import EventAssembler
from agnostic_reloc.io.params import NODE_PARAMS, engine_conf, engine_param_defaults, load_params
from agnostic_reloc.io.sync import StampSync


@pytest.fixture(scope="module")
def photo(photos):
    img = cv2.cvtColor(cv2.imread(str(photos[0])), cv2.COLOR_BGR2RGB)
    return cv2.resize(img, (640, 480))


@pytest.fixture(scope="module")
def orb(photo):
    return detect(photo, "orb", 500)


def test_keypoint_cloud_round_trip_keeps_rows_and_map_points(orb):
    rng = np.random.default_rng(0)
    mp = rng.normal(size=(len(orb), 3)).astype(np.float32)
    mp[::3] = np.nan
    ids = np.where(np.isfinite(mp).all(1), np.arange(len(orb)) + 1000, -1)
    cloud = encode_keypoints(orb, mp, ids)
    assert cloud.point_step == 40 and cloud.width == len(orb) and len(cloud.data) == 40 * len(orb)
    kc = decode_keypoints(cloud)
    assert np.array_equal(kc.keypoints.xy, orb.xy) and np.array_equal(kc.keypoints.octave, orb.octave)
    assert np.array_equal(kc.keypoints.angle, orb.angle) and np.array_equal(kc.keypoints.response, orb.response)
    assert np.array_equal(kc.map_point_ids, ids)
    assert np.array_equal(np.isnan(kc.map_points), np.isnan(mp)) and np.allclose(kc.map_points[::3 + 1], mp[::3 + 1],
                                                                                  equal_nan=True)


def test_decoder_ignores_extra_fields_and_reads_any_order_and_big_endian(orb):
    n = len(orb)
    dt = np.dtype([("response", ">f4"), ("pad", ">f8"), ("octave", ">i4"), ("y", ">f4"), ("x", ">f4")])
    rec = np.zeros(n, dt)
    rec["x"], rec["y"], rec["octave"], rec["response"] = orb.xy[:, 0], orb.xy[:, 1], orb.octave, orb.response
    fields = [CloudField(name, dt.fields[name][1], {"f4": FLOAT32, "f8": FLOAT64, "i4": INT32}[dt[name].str[1:]])
              for name in dt.names]
    kc = decode_keypoints(Cloud(fields, dt.itemsize, n, 1, rec.tobytes(), is_bigendian=True))
    assert np.array_equal(kc.keypoints.xy, orb.xy) and np.array_equal(kc.keypoints.octave, orb.octave)
    assert kc.map_points is None and np.all(kc.keypoints.angle == -1)  # absent optional fields get defaults


@pytest.mark.parametrize("make, text", [
    (lambda c: Cloud([f for f in c.fields if f.name != "x"], c.point_step, c.width, 1, c.data), "no field 'x'"),
    (lambda c: Cloud([CloudField("x", 0, FLOAT64)] + c.fields[1:], c.point_step, c.width, 1, c.data),
     "field 'x' has datatype 8"),
    (lambda c: Cloud(c.fields, c.point_step, c.width + 1, 1, c.data), "data has"),
    (lambda c: Cloud(c.fields, c.point_step, c.width, 1, c.data[:-1]), "data has"),
    (lambda c: Cloud([CloudField("x", 30, FLOAT32)] + c.fields[1:], c.point_step, c.width, 1, c.data),
     "outside point_step"),
    (lambda c: Cloud(c.fields, 0, c.width, 1, b""), "point_step"),
])
def test_malformed_clouds_name_the_problem(orb, make, text):
    with pytest.raises(ContractError, match=text):
        decode_keypoints(make(encode_keypoints(orb)))


def test_non_finite_keypoints_and_partial_map_fields_are_rejected(orb):
    bad = encode_keypoints(orb)
    arr = np.frombuffer(bad.data, np.float32).copy()
    arr[0] = np.nan
    with pytest.raises(ContractError, match="non-finite"):
        decode_keypoints(Cloud(bad.fields, bad.point_step, bad.width, 1, arr.tobytes()))
    with_map = encode_keypoints(orb, np.zeros((len(orb), 3)))
    partial = Cloud([f for f in with_map.fields if f.name != "map_z"], with_map.point_step, with_map.width, 1,
                    with_map.data)
    with pytest.raises(ContractError, match="only some of the fields"):
        decode_keypoints(partial)


def test_matches_cloud_round_trip():
    pairs = np.array([[0, 5], [3, 7], [10, 2]])
    got, scores = decode_matches(encode_matches(pairs, [0.5, 0.7, 0.9]))
    assert np.array_equal(got, pairs) and np.allclose(scores, [0.5, 0.7, 0.9])
    assert decode_cloud(encode_matches(pairs), [("score", FLOAT32)])["score"].tolist() == [1, 1, 1]


@pytest.mark.parametrize("encoding", ["mono8", "mono16", "rgb8", "bgr8", "rgba8", "bgra8"])
def test_every_contract_encoding_decodes_to_rgb(photo, encoding):
    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    arr = {"mono8": gray, "mono16": gray.astype(np.uint16) * 257, "rgb8": photo, "bgr8": photo[..., ::-1],
           "rgba8": np.dstack([photo, np.full(gray.shape, 255, np.uint8)]),
           "bgra8": np.dstack([photo[..., ::-1], np.zeros(gray.shape, np.uint8)])}[encoding]
    arr = np.ascontiguousarray(arr)
    padded = np.zeros((arr.shape[0], arr.strides[0] + 16), np.uint8)  # row padding (step > width)
    padded[:, : arr.strides[0]] = arr.reshape(arr.shape[0], -1).view(np.uint8)
    out = decode_image(ImageData(encoding, arr.shape[0], arr.shape[1], padded.shape[1], padded.tobytes()))
    expect = np.repeat(gray[..., None], 3, 2) if encoding.startswith("mono") else photo
    assert out.shape == photo.shape and np.array_equal(out, expect)
    assert np.array_equal(decode_image(encode_image(photo, "bgr8")), photo)
    if encoding == "mono16":  # 12-bit camera data in 16-bit words keeps its contrast
        g12 = np.ascontiguousarray(gray.astype(np.uint16) << 4)
        out12 = decode_image(ImageData("mono16", *g12.shape, g12.strides[0], g12.tobytes()))
        assert np.abs(out12[..., 0].astype(int) - gray).max() <= 1


def test_bad_images_name_the_problem(photo):
    with pytest.raises(ContractError, match="unsupported image encoding 'yuv422'"):
        decode_image(ImageData("yuv422", 480, 640, 1280, bytes(480 * 1280)))
    with pytest.raises(ContractError, match="expected height x step"):
        decode_image(ImageData("rgb8", 480, 640, 1920, bytes(100)))
    with pytest.raises(ContractError, match="step"):
        decode_image(ImageData("rgb8", 480, 640, 100, bytes(480 * 100)))


def test_pose_and_covariance_conventions():
    rng = np.random.default_rng(1)
    for _ in range(20):
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = so3_exp(rng.normal(size=3) * 2), rng.normal(size=3)
        t, q = T_to_pose(T)
        assert q[3] >= 0 and np.isclose(np.linalg.norm(q), 1)
        assert np.allclose(pose_to_T(t, q), T, atol=1e-9)
    with pytest.raises(ContractError, match="non-finite"):
        pose_to_T([np.nan, 0, 0], [0, 0, 0, 1])
    with pytest.raises(ContractError, match="norm"):
        pose_to_T([0, 0, 0], [0, 0, 0, 0])
    cov = np.diag([1e-4, 2e-4, 3e-4, 1e-2, 2e-2, 3e-2])  # engine order: rotation first
    ros = covariance_to_ros(cov)
    assert ros[0] == 1e-2 and ros[21] == 1e-4  # ROS order: x y z first
    assert np.array_equal(covariance_from_ros(ros), cov)
    assert parse_keyframe_frame_id(keyframe_frame_id(seconds_to_ns(12.3))) == 12_300_000_000
    with pytest.raises(ContractError):
        parse_keyframe_frame_id("map")
    assert not TrackingState.parse("LOST").tracking and TrackingState.parse("ok").tracking
    assert TrackingState.parse("WEIRD").unknown
    assert TrackingState.parse("2").name == "OK" and TrackingState.parse("4").name == "LOST"  # integer states


def test_camera_rectification_matches_opencv(photo, orb):
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    for model, D in (("plumb_bob", [-0.2, 0.05, 0.001, -0.001, 0.0]), ("equidistant", [0.05, -0.01, 0.002, 0.0])):
        cam = CameraModel.from_camera_info(K.reshape(-1), D, model, 640, 480)
        und = cam.undistort_points(orb.xy)
        back = cam.distort_points(und)
        inner = np.linalg.norm(orb.xy - [320, 240], axis=1) < 200
        assert np.abs(back[inner] - orb.xy[inner]).max() < 0.05  # distort(undistort(x)) == x
        img, kp = cam.rectify(photo, orb)
        assert img.shape == photo.shape and len(kp) == len(orb) and np.array_equal(kp.octave, orb.octave)
        assert np.allclose(kp.xy[inner], und[inner])
    flat = CameraModel.from_camera_info(K.reshape(-1), [0.0] * 5, "plumb_bob", 640, 480)
    img, kp = flat.rectify(photo, orb)
    assert img is photo and kp is orb  # zero distortion: nothing to do
    with pytest.raises(ContractError, match="distortion model"):
        CameraModel.from_camera_info(K.reshape(-1), [], "kannala", 640, 480)
    with pytest.raises(ContractError, match="camera matrix"):
        CameraModel.from_camera_info(np.zeros(9), [], "plumb_bob", 640, 480)
    with pytest.raises(ContractError, match="CameraInfo says"):
        flat.rectify(photo[:100], orb)


def test_stamp_sync_pairs_equal_and_near_stamps_and_drops_stale():
    got = []
    sync = StampSync(3, lambda *m: got.append(m), queue_size=5)
    sync.add(0, 10, "kp10")
    sync.add(1, 10, "pose10")
    sync.add(0, 20, "kp20")
    assert not got
    sync.add(2, 10, "img10")
    assert got == [("kp10", "pose10", "img10")]
    sync.add(2, 30, "img30")
    sync.add(1, 30, "pose30")
    sync.add(0, 30, "kp30")
    assert got[-1] == ("kp30", "pose30", "img30") and sync.dropped == 1  # kp20 never completed
    for i in range(10):
        sync.add(2, 100 + i, i)
    assert len(sync.queues[2]) == 5 and sync.dropped == 6
    near = []
    approx = StampSync(2, lambda *m: near.append(m), slop_ns=5)
    approx.add(0, 100, "a")
    approx.add(1, 108, "far")
    approx.add(1, 103, "b")
    assert near == [("a", "b")]
    with pytest.raises(ValueError):
        StampSync(1, print)


def test_stamp_sync_is_thread_safe():
    got = []
    sync = StampSync(2, lambda *m: got.append(m), queue_size=1000)
    threads = [threading.Thread(target=lambda i=i: [sync.add(i, s, s) for s in range(500)]) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(a for a, _ in got) == list(range(500)) and all(a == b for a, b in got)


def test_event_assembler_checks(photo, orb):
    asm = EventAssembler()
    img = encode_image(photo)
    with pytest.raises(ContractError, match="no CameraInfo"):
        asm.query(1, img)
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    asm.set_camera(CameraModel.pinhole(K, 640, 480))
    ev = asm.keyframe(2_000_000_000, encode_keypoints(orb), np.eye(4), img)
    assert ev.stamp == 2.0 and np.array_equal(ev.keypoints.xy, orb.xy) and np.array_equal(ev.image, photo)
    with pytest.raises(ContractError, match="backwards"):
        asm.keyframe(1_000_000_000, encode_keypoints(orb), np.eye(4), img)
    with pytest.raises(ContractError, match="outside the 320x240 image|CameraInfo says"):
        asm.keyframe(3_000_000_000, encode_keypoints(orb), np.eye(4), encode_image(photo[:240, :320]))
    asm.set_camera(CameraModel.pinhole(K, 320, 240))
    with pytest.raises(ContractError, match="outside the 320x240 image"):
        asm.keyframe(3_000_000_000, encode_keypoints(orb), np.eye(4), encode_image(photo[:240, :320]))
    q = asm.query(4_000_000_000, encode_image(photo[:240, :320]))
    assert q.keypoints is None and q.stamp == 4.0


def test_config_file_declares_every_parameter(tmp_path):
    from pathlib import Path

    params = load_params(Path(__file__).resolve().parents[2] / "config" / "reloc.yaml")
    assert set(params) == set(NODE_PARAMS) | set(engine_param_defaults())
    conf = engine_conf(params)
    assert conf["matcher"]["weights"] is None and conf["features"]["octave_levels"] == tuple(range(8))
    bad = tmp_path / "bad.yaml"
    bad.write_text("reloc_node:\n  ros__parameters:\n    engine:\n      matchr: nn\n")
    with pytest.raises(ValueError, match="unknown parameters"):
        load_params(bad)
    bad.write_text("other: {}\n")
    with pytest.raises(ValueError, match="no 'reloc_node: ros__parameters:'"):
        load_params(bad)
    with pytest.raises(ValueError, match="does not exist"):
        load_params(tmp_path / "missing.yaml")


def test_config_file_is_generated_from_the_parameter_table():
    """config/reloc.yaml, the node's declared parameters and the engine defaults are one table: the file is the
    table's rendering, and every value read back equals the node's default (values, not only key sets)."""
    from pathlib import Path

    from agnostic_reloc.io.params import param_table, render_yaml
    from agnostic_reloc.loop.engine import default_conf

    path = Path(__file__).resolve().parents[2] / "config" / "reloc.yaml"
    assert path.read_text() == render_yaml(), "config/reloc.yaml is stale: python -m agnostic_reloc.io.params > it"
    params = load_params(path)
    table = param_table()
    assert params == {name: value for name, (value, _, _) in table.items()}
    assert engine_conf(params) == default_conf
    assert all(text for _, text, _ in table.values())
