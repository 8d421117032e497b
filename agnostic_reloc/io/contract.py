"""The message contract with ORB-SLAM3 in one place, ROS-free: topic names, frame ids, PointCloud2 layouts,
image encodings, pose and covariance conventions.

The node (rclpy messages), the bag writer and the bag reader (rosbags messages) convert their message
objects to and from the plain types here (`Cloud`, `ImageData`), so every surface shares one decoder and one
set of error messages. Every decoder raises `ContractError` (a ValueError) naming the problem.

Conventions:
  - Stamps: integer nanoseconds inside the adapters, float seconds in the engine and in results.json.
  - Loop closures: header.frame_id of the match keyframe is ``keyframe_<stamp_ns>`` (its image stamp in ns).
  - Poses: T_map_cam maps camera coordinates to the map frame (PoseStamped.pose = camera pose in the map).
  - Covariances: the engine's 6x6 is ordered [rx ry rz tx ty tz]; ROS PoseWithCovariance is
    [x y z rx ry rz], row-major 36 floats. Both are right perturbations of the pose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ..features.keypoints import Keypoints


class ContractError(ValueError):
    """A message that violates the contract; the text names the problem."""


# ---------------------------------------------------------------------------- topics
INPUT_TOPICS = {
    "keyframe_keypoints": "/orb_slam3/keyframe/keypoints",  # sensor_msgs/PointCloud2
    "keyframe_pose": "/orb_slam3/keyframe/pose",  # geometry_msgs/PoseStamped
    "image": "/camera/image_raw",  # sensor_msgs/Image
    "camera_info": "/camera/camera_info",  # sensor_msgs/CameraInfo
    "frame_keypoints": "/orb_slam3/frame/keypoints",  # sensor_msgs/PointCloud2
    "tracking_state": "/orb_slam3/tracking_state",  # std_msgs/String
    "query_image": "~/query/image",  # sensor_msgs/Image
}
OUTPUT_TOPICS = {
    "loop_closure": "~/loop_closure",  # geometry_msgs/PoseWithCovarianceStamped
    "loop_matches": "~/loop_closure/matches",  # sensor_msgs/PointCloud2
    "relocalization": "~/relocalization",  # geometry_msgs/PoseWithCovarianceStamped
    "relocalization_status": "~/relocalization/status",  # std_msgs/String
    "initialpose": "/initialpose",  # geometry_msgs/PoseWithCovarianceStamped (optional republish)
    "matches_image": "~/matches_image",  # sensor_msgs/Image
    "loop_edges": "~/loop_edges",  # visualization_msgs/MarkerArray
    "corrected_path": "~/corrected_path",  # nav_msgs/Path, keyframe poses after the loop pose graph
    "corrected_pose": "~/corrected_pose",  # geometry_msgs/PoseStamped, newest keyframe after the pose graph
    "correction": "~/correction",  # geometry_msgs/TransformStamped corrected_frame -> map_frame (also on /tf)
    "diagnostics": "/diagnostics",  # diagnostic_msgs/DiagnosticArray
}
GROUND_TRUTH_TOPIC = "/ground_truth/pose"  # geometry_msgs/PoseStamped, T_world_cam (bags only)
DEPTH_TOPIC = "/camera/depth/image_raw"  # sensor_msgs/Image 16UC1 millimetres, 0 = no depth (RGB-D bags)
# every topic a bag may carry for us, by role: the node's inputs plus ground truth and depth
CONTRACT_TOPICS = {**INPUT_TOPICS, "ground_truth": GROUND_TRUTH_TOPIC, "depth": DEPTH_TOPIC}
DEPTH_SCALE = 1000.0  # depth units per metre in DEPTH_TOPIC
MESSAGE_TYPES = {
    "keyframe_keypoints": "sensor_msgs/msg/PointCloud2",
    "keyframe_pose": "geometry_msgs/msg/PoseStamped",
    "image": "sensor_msgs/msg/Image",
    "camera_info": "sensor_msgs/msg/CameraInfo",
    "frame_keypoints": "sensor_msgs/msg/PointCloud2",
    "tracking_state": "std_msgs/msg/String",
    "query_image": "sensor_msgs/msg/Image",
    "ground_truth": "geometry_msgs/msg/PoseStamped",
    "depth": "sensor_msgs/msg/Image",
}
MAP_FRAME = "map"
# ORB-SLAM3's Tracking::eTrackingState names
TRACKING_STATES = ("SYSTEM_NOT_READY", "NO_IMAGES_YET", "NOT_INITIALIZED", "OK", "RECENTLY_LOST", "LOST", "OK_KLT")


def keyframe_frame_id(stamp_ns: int) -> str:
    """header.frame_id naming a keyframe: ``keyframe_<stamp_ns>``."""
    return f"keyframe_{int(stamp_ns)}"


def parse_keyframe_frame_id(frame_id: str) -> int:
    """Inverse of `keyframe_frame_id`: the keyframe's stamp in nanoseconds."""
    m = re.fullmatch(r"keyframe_(\d+)", frame_id)
    if not m:
        raise ContractError(f"frame_id '{frame_id}' is not of the form keyframe_<stamp_ns>")
    return int(m.group(1))


def stamp_ns(sec: int, nanosec: int) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(sec) * 1_000_000_000 + int(nanosec)


def split_stamp(ns: int) -> tuple[int, int]:
    """Integer nanoseconds -> (sec, nanosec)."""
    return int(ns) // 1_000_000_000, int(ns) % 1_000_000_000


def seconds_to_ns(t: float) -> int:
    return int(round(float(t) * 1e9))


# ---------------------------------------------------------------------------- PointCloud2
# sensor_msgs/PointField datatypes
INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = range(1, 9)
_DTYPES = {INT8: "i1", UINT8: "u1", INT16: "i2", UINT16: "u2", INT32: "i4", UINT32: "u4", FLOAT32: "f4", FLOAT64: "f8"}


@dataclass
class CloudField:
    name: str
    offset: int
    datatype: int
    count: int = 1


@dataclass
class Cloud:
    """The content of a sensor_msgs/PointCloud2 (header excluded)."""

    fields: list[CloudField]
    point_step: int
    width: int
    height: int = 1
    data: bytes = b""
    is_bigendian: bool = False
    row_step: int = -1
    is_dense: bool = True

    def __post_init__(self) -> None:
        if self.row_step < 0:
            self.row_step = self.point_step * self.width


KEYPOINT_FIELDS = [("x", FLOAT32), ("y", FLOAT32), ("size", FLOAT32), ("angle", FLOAT32), ("response", FLOAT32),
                   ("octave", INT32)]
MAP_POINT_FIELDS = [("map_x", FLOAT32), ("map_y", FLOAT32), ("map_z", FLOAT32), ("map_id", INT32)]
MATCH_FIELDS = [("query_index", INT32), ("match_index", INT32), ("score", FLOAT32)]


def encode_cloud(columns: dict[str, np.ndarray], layout: list[tuple[str, int]]) -> Cloud:
    """Columns (one value per point) -> an unorganised little-endian cloud with the fields of `layout`."""
    n = len(next(iter(columns.values()))) if columns else 0
    dtype = np.dtype([(name, "<" + _DTYPES[dt]) for name, dt in layout])
    rec = np.zeros(n, dtype)
    for name, _ in layout:
        col = np.asarray(columns[name]).reshape(-1)
        if len(col) != n:
            raise ContractError(f"column '{name}' has {len(col)} values, expected {n}")
        rec[name] = col
    fields = [CloudField(name, dtype.fields[name][1], dt) for name, dt in layout]
    return Cloud(fields, dtype.itemsize, n, 1, rec.tobytes())


def decode_cloud(cloud: Cloud, required: list[tuple[str, int]], optional: list[tuple[str, int]] = ()
                 ) -> dict[str, np.ndarray]:
    """Read named columns from a cloud; unknown extra fields are ignored.

    Raises ContractError for a missing or mistyped required field (optional ones are dropped when absent,
    ContractError when present with the wrong type), a field outside point_step, or a data size that does
    not match width x height x point_step.
    """
    n = int(cloud.width) * int(cloud.height)
    if cloud.point_step <= 0 and n:
        raise ContractError(f"PointCloud2 point_step is {cloud.point_step}")
    if cloud.height > 1 and cloud.row_step != cloud.width * cloud.point_step:
        raise ContractError(f"PointCloud2 row_step {cloud.row_step} != width {cloud.width} x point_step "
                            f"{cloud.point_step} (padded rows are not supported)")
    expected = n * cloud.point_step
    if len(cloud.data) != expected:
        raise ContractError(f"PointCloud2 data has {len(cloud.data)} bytes but width x height x point_step = "
                            f"{cloud.width} x {cloud.height} x {cloud.point_step} = {expected}")
    by_name = {f.name: f for f in cloud.fields}
    endian = ">" if cloud.is_bigendian else "<"
    raw = np.frombuffer(cloud.data, np.uint8).reshape(n, cloud.point_step) if n else None
    out: dict[str, np.ndarray] = {}
    for (name, dt), req in [(x, True) for x in required] + [(x, False) for x in optional]:
        f = by_name.get(name)
        if f is None:
            if req:
                raise ContractError(f"PointCloud2 has no field '{name}' (fields: {sorted(by_name)})")
            continue
        if f.datatype != dt:
            raise ContractError(f"PointCloud2 field '{name}' has datatype {f.datatype} "
                                f"({_DTYPES.get(f.datatype, 'unknown')}), expected {dt} ({_DTYPES[dt]})")
        size = np.dtype(_DTYPES[dt]).itemsize
        if f.offset < 0 or f.offset + size > cloud.point_step:
            raise ContractError(f"PointCloud2 field '{name}' at offset {f.offset} lies outside point_step "
                                f"{cloud.point_step}")
        if raw is None:
            out[name] = np.zeros(0, _DTYPES[dt])
        else:
            out[name] = np.ascontiguousarray(raw[:, f.offset:f.offset + size]).view(endian + _DTYPES[dt]).reshape(n)
            out[name] = out[name].astype(_DTYPES[dt])
    return out


@dataclass
class KeypointCloud:
    """Decoded keypoint message: keypoints in SLAM row order, map points (NaN rows) and ids (-1) or None."""

    keypoints: Keypoints
    map_points: np.ndarray | None = None
    map_point_ids: np.ndarray | None = None


def encode_keypoints(kpts: Keypoints, map_points: np.ndarray | None = None,
                     map_point_ids: np.ndarray | None = None) -> Cloud:
    """Keypoints (+ optional map points [N x 3] with NaN rows = none, and ids [N], -1 = unknown) -> Cloud."""
    cols = {"x": kpts.xy[:, 0], "y": kpts.xy[:, 1], "size": kpts.size, "angle": kpts.angle,
            "response": kpts.response, "octave": kpts.octave}
    layout = list(KEYPOINT_FIELDS)
    if map_points is not None:
        mp = np.asarray(map_points, np.float32).reshape(-1, 3)
        if len(mp) != len(kpts):
            raise ContractError(f"{len(mp)} map points for {len(kpts)} keypoints")
        ids = (np.full(len(kpts), -1, np.int64) if map_point_ids is None
               else np.asarray(map_point_ids, np.int64).reshape(-1))
        if len(ids) != len(kpts):
            raise ContractError(f"{len(ids)} map point ids for {len(kpts)} keypoints")
        if ids.max(initial=-1) > np.iinfo(np.int32).max:
            raise ContractError("map point ids exceed the int32 range of field 'map_id'")
        cols.update(map_x=mp[:, 0], map_y=mp[:, 1], map_z=mp[:, 2], map_id=ids.astype(np.int32))
        layout += MAP_POINT_FIELDS
    return encode_cloud(cols, layout)


def decode_keypoints(cloud: Cloud, scale_factor: float = 1.2) -> KeypointCloud:
    """Cloud -> keypoints (+ map points when `map_x/map_y/map_z` are present).

    Raises ContractError for malformed clouds and for non-finite keypoint coordinates or negative octaves.
    """
    cols = decode_cloud(cloud, KEYPOINT_FIELDS[:2], KEYPOINT_FIELDS[2:] + MAP_POINT_FIELDS)
    xy = np.stack([cols["x"], cols["y"]], 1).astype(np.float32)
    if not np.isfinite(xy).all():
        bad = int(np.flatnonzero(~np.isfinite(xy).all(1))[0])
        raise ContractError(f"keypoint row {bad} has a non-finite coordinate {xy[bad].tolist()}")
    octave = cols.get("octave")
    if octave is not None and len(octave) and octave.min() < 0:
        raise ContractError(f"keypoint row {int(np.argmin(octave))} has a negative octave {int(octave.min())}")
    kpts = Keypoints(xy, octave, cols.get("response"), cols.get("angle"), cols.get("size"), scale_factor)
    mp = ids = None
    if all(k in cols for k in ("map_x", "map_y", "map_z")):
        mp = np.stack([cols["map_x"], cols["map_y"], cols["map_z"]], 1).astype(np.float32)
        ids = cols["map_id"].astype(np.int64) if "map_id" in cols else np.full(len(mp), -1, np.int64)
        # NaN coordinates = no map point; a finite point with map_id -1 is a map point whose id is unknown
        # (pyorbslam3 gives no ids, see orbslam3/bridge.py)
        ids = np.where(np.isfinite(mp).all(1), ids, -1)
    elif any(k in cols for k in ("map_x", "map_y", "map_z")):
        raise ContractError("PointCloud2 has only some of the fields map_x, map_y, map_z")
    return KeypointCloud(kpts, mp, ids)


def encode_matches(pairs: np.ndarray, scores: np.ndarray | None = None) -> Cloud:
    """[S x 2] (query row, match row) + [S] scores -> Cloud with query_index, match_index, score."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    scores = np.ones(len(pairs), np.float32) if scores is None else np.asarray(scores, np.float32).reshape(-1)
    return encode_cloud({"query_index": pairs[:, 0], "match_index": pairs[:, 1], "score": scores}, MATCH_FIELDS)


def decode_matches(cloud: Cloud) -> tuple[np.ndarray, np.ndarray]:
    cols = decode_cloud(cloud, MATCH_FIELDS)
    return np.stack([cols["query_index"], cols["match_index"]], 1).astype(np.int64), cols["score"]


# ---------------------------------------------------------------------------- images
IMAGE_ENCODINGS = ("mono8", "mono16", "rgb8", "bgr8", "rgba8", "bgra8")
_CHANNELS = {"mono8": (1, "u1"), "mono16": (1, "u2"), "rgb8": (3, "u1"), "bgr8": (3, "u1"), "rgba8": (4, "u1"),
             "bgra8": (4, "u1"), "8UC1": (1, "u1"), "8UC3": (3, "u1"), "16UC1": (1, "u2")}


@dataclass
class ImageData:
    """The content of a sensor_msgs/Image (header excluded)."""

    encoding: str
    height: int
    width: int
    step: int
    data: bytes
    is_bigendian: bool = False


def decode_image(msg: ImageData) -> np.ndarray:
    """Image message content -> RGB uint8 [H x W x 3] (mono16 scaled to 8 bit); ContractError naming the problem."""
    enc = msg.encoding
    if enc not in _CHANNELS:
        raise ContractError(f"unsupported image encoding '{enc}' (supported: {', '.join(IMAGE_ENCODINGS)})")
    ch, dt = _CHANNELS[enc]
    h, w = int(msg.height), int(msg.width)
    if h < 8 or w < 8:
        raise ContractError(f"image is {w}x{h}; need at least 8x8 pixels")
    item = np.dtype(dt).itemsize
    if msg.step < w * ch * item:
        raise ContractError(f"image step {msg.step} is smaller than width x channels x bytes = {w * ch * item}")
    if len(msg.data) < h * msg.step:
        raise ContractError(f"image data has {len(msg.data)} bytes, expected height x step = {h * msg.step}")
    rows = np.frombuffer(msg.data, np.uint8, h * msg.step).reshape(h, msg.step)[:, : w * ch * item]
    img = np.ascontiguousarray(rows).view((">" if msg.is_bigendian else "<") + dt).reshape(h, w, ch)
    if item == 2:  # 10/12/16-bit data in 16-bit words: scale by the bit depth the data uses
        bits = max(8, int(img.max()).bit_length())
        img = (img.astype(np.uint32) >> (bits - 8)).astype(np.uint8)
    if ch == 1:
        return np.repeat(img, 3, axis=2)
    if enc.startswith("bgr"):
        img = img[..., 2::-1] if ch == 3 else img[..., [2, 1, 0]]
    return np.ascontiguousarray(img[..., :3])


def encode_image(image: np.ndarray, encoding: str = "rgb8") -> ImageData:
    """RGB uint8 [H x W x 3] (or gray [H x W]) -> image message content in `encoding` (rgb8, bgr8 or mono8)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ContractError(f"encode_image expects uint8, got {image.dtype}")
    if encoding == "mono8":
        import cv2

        arr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    elif encoding in ("rgb8", "bgr8"):
        arr = np.repeat(image[..., None], 3, 2) if image.ndim == 2 else image[..., :3]
        if encoding == "bgr8":
            arr = arr[..., ::-1]
    else:
        raise ContractError(f"encode_image supports rgb8, bgr8, mono8; got '{encoding}'")
    arr = np.ascontiguousarray(arr)
    h, w = arr.shape[:2]
    return ImageData(encoding, h, w, arr.strides[0], arr.tobytes())


# ---------------------------------------------------------------------------- poses
def pose_to_T(position, orientation_xyzw) -> np.ndarray:
    """geometry_msgs/Pose (position xyz, quaternion xyzw) -> 4x4; ContractError for NaN or a zero quaternion."""
    p = np.asarray(position, np.float64).reshape(3)
    q = np.asarray(orientation_xyzw, np.float64).reshape(4)
    if not (np.isfinite(p).all() and np.isfinite(q).all()):
        raise ContractError(f"pose has non-finite values: position {p.tolist()}, orientation {q.tolist()}")
    n = np.linalg.norm(q)
    if abs(n - 1.0) > 0.01:
        raise ContractError(f"pose orientation quaternion has norm {n:.4f}, expected 1")
    x, y, z, w = q / n
    R = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                  [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                  [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, p
    return T


def T_to_pose(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """4x4 -> (position xyz, quaternion xyzw with w >= 0)."""
    T = np.asarray(T, np.float64)
    R = T[:3, :3]
    tr = np.trace(R)
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s]
    else:
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(max(1.0 + R[i, i] - R[j, j] - R[k, k], 1e-12))
        q = [0.0, 0.0, 0.0, (R[k, j] - R[j, k]) / s]
        q[i] = 0.25 * s
        q[j] = (R[j, i] + R[i, j]) / s
        q[k] = (R[k, i] + R[i, k]) / s
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    if q[3] < 0:
        q = -q
    return T[:3, 3].copy(), q


def covariance_to_ros(cov: np.ndarray | None) -> list[float]:
    """Engine 6x6 [rx ry rz tx ty tz] -> ROS 36 floats [x y z rx ry rz] row-major (zeros when None)."""
    if cov is None:
        return [0.0] * 36
    cov = np.asarray(cov, np.float64).reshape(6, 6)
    perm = [3, 4, 5, 0, 1, 2]
    return cov[np.ix_(perm, perm)].reshape(-1).tolist()


def covariance_from_ros(values) -> np.ndarray:
    """Inverse of `covariance_to_ros`."""
    c = np.asarray(values, np.float64).reshape(6, 6)
    perm = [3, 4, 5, 0, 1, 2]
    return c[np.ix_(perm, perm)]


@dataclass
class TrackingState:
    """ORB-SLAM3 tracking state from std_msgs/String; anything but OK makes frames relocalization queries."""

    name: str = "OK"
    unknown: bool = field(default=False)

    @classmethod
    def parse(cls, text: str) -> "TrackingState":
        """A state name, or ORB-SLAM3's integer eTrackingState (-1 SYSTEM_NOT_READY ... 5 OK_KLT)."""
        name = text.strip().upper()
        if name.lstrip("-").isdigit() and -1 <= int(name) <= 5:
            name = TRACKING_STATES[int(name) + 1]
        return cls(name, name not in TRACKING_STATES)

    @property
    def tracking(self) -> bool:
        """True when ORB-SLAM3 tracks (OK, or OK_KLT); every other state makes frames relocalization queries."""
        return self.name in ("OK", "OK_KLT")
