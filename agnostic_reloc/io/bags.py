"""rosbag2 bags (sqlite3 and mcap) <-> the contract's plain types, with `rosbags` (no ROS installation needed).

Reading: `BagReader` opens a bag folder (or a single .db3 / .mcap file), checks the contract topics and their
types, and yields deserialized rosbags message objects in log-time order; the `msg_to_*` functions copy their
fields into `contract.Cloud` / `ImageData`, a 4x4 pose or a `CameraModel` (all decoding lives in contract.py).
Writing: `BagWriter` plus the `*_to_msg` builders; `sequence_messages` turns a world-generator sequence into
contract messages (what `agnostic-reloc make-bag` writes). Every bag-level problem is a `BagError` naming it.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .tum import tum_row
from .camera import CameraModel
from .contract import (
    DEPTH_SCALE,
    DEPTH_TOPIC,
    GROUND_TRUTH_TOPIC,
    INPUT_TOPICS,
    MAP_FRAME,
    MESSAGE_TYPES,
    Cloud,
    ImageData,
    T_to_pose,
    encode_image,
    encode_keypoints,
    seconds_to_ns,
    split_stamp,
)

STORAGES = ("sqlite3", "mcap")
# every topic a bag may carry under the contract, by role (INPUT_TOPICS keys + ground truth + depth)
REQUIRED_ROLES = ("keyframe_keypoints", "keyframe_pose", "image", "camera_info")  # no keyframe without these
CAMERA_FRAME = "camera"
WORLD_FRAME = "world"


class BagError(ValueError):
    """A bag that cannot be read or does not follow the contract; the text names the problem."""


@lru_cache(maxsize=1)
def typestore():
    """The rosbags type store with the ROS 2 Humble sensor_msgs / geometry_msgs / std_msgs definitions."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


def _types():
    return typestore().types



# ---------------------------------------------------------------------------- contract types -> message
def make_header(ns: int, frame_id: str) -> Any:
    t = _types()
    sec, nsec = split_stamp(ns)
    return t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec), frame_id=frame_id)


def cloud_to_msg(cloud: Cloud, ns: int, frame_id: str = CAMERA_FRAME) -> Any:
    t = _types()
    fields = [t["sensor_msgs/msg/PointField"](name=f.name, offset=f.offset, datatype=f.datatype, count=f.count)
              for f in cloud.fields]
    return t["sensor_msgs/msg/PointCloud2"](
        header=make_header(ns, frame_id), height=cloud.height, width=cloud.width, fields=fields,
        is_bigendian=cloud.is_bigendian, point_step=cloud.point_step, row_step=cloud.row_step,
        data=np.frombuffer(cloud.data, np.uint8), is_dense=cloud.is_dense)


def image_to_msg(image: ImageData, ns: int, frame_id: str = CAMERA_FRAME) -> Any:
    return _types()["sensor_msgs/msg/Image"](
        header=make_header(ns, frame_id), height=image.height, width=image.width, encoding=image.encoding,
        is_bigendian=int(image.is_bigendian), step=image.step, data=np.frombuffer(image.data, np.uint8))


def pose_to_msg(T: np.ndarray, ns: int, frame_id: str) -> Any:
    t = _types()
    p, q = T_to_pose(T)
    position = t["geometry_msgs/msg/Point"](x=float(p[0]), y=float(p[1]), z=float(p[2]))
    orientation = t["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))
    pose = t["geometry_msgs/msg/Pose"](position=position, orientation=orientation)
    return t["geometry_msgs/msg/PoseStamped"](header=make_header(ns, frame_id), pose=pose)


def camera_info_to_msg(camera: CameraModel, ns: int, frame_id: str = CAMERA_FRAME) -> Any:
    """CameraInfo of a camera model (an undistorted one as plumb_bob with zero D)."""
    t = _types()
    d = np.zeros(5) if not camera.distorted else np.asarray(camera.D, np.float64)
    P = np.zeros((3, 4))
    P[:3, :3] = camera.K
    roi = t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return t["sensor_msgs/msg/CameraInfo"](
        header=make_header(ns, frame_id), height=camera.height, width=camera.width,
        distortion_model=camera.model if camera.distorted else "plumb_bob", d=d.astype(np.float64),
        k=np.asarray(camera.K, np.float64).reshape(9), r=np.eye(3).reshape(9), p=P.reshape(12),
        binning_x=0, binning_y=0, roi=roi)


def string_msg(text: str) -> Any:
    return _types()["std_msgs/msg/String"](data=text)


def depth_image(depth_m: np.ndarray) -> ImageData:
    """Depth in metres (inf / NaN / <= 0 = none) -> 16UC1 millimetres (0 = none), contract.DEPTH_TOPIC's encoding."""
    d = np.asarray(depth_m, np.float64) * DEPTH_SCALE
    mm = np.where(np.isfinite(d) & (d > 0), np.clip(np.round(d), 0, 65535), 0).astype("<u2")
    h, w = mm.shape
    return ImageData("16UC1", h, w, 2 * w, mm.tobytes())


# ---------------------------------------------------------------------------- writing
@dataclass
class OutMessage:
    """One message to write: topic, its contract type, log time (ns) and the rosbags message object (or its
    already serialized CDR bytes)."""

    topic: str
    msgtype: str
    log_ns: int
    msg: Any


class BagWriter:
    """Write contract messages to a new rosbag2 bag folder (sqlite3 or mcap); refuses an existing path."""

    def __init__(self, path: str | os.PathLike, storage: str = "sqlite3") -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        if storage not in STORAGES:
            raise BagError(f"unknown bag storage '{storage}' (choose {' or '.join(STORAGES)})")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"{self.path} exists already; not overwriting it (choose a new path or delete it)")
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=8, storage_plugin=plugin)
        self._conns: dict[str, Any] = {}
        self.count = 0

    def __enter__(self) -> "BagWriter":
        self._writer.open()
        return self

    def __exit__(self, *exc) -> None:
        self._writer.close()

    def write(self, m: OutMessage) -> None:
        ts = typestore()
        conn = self._conns.get(m.topic)
        if conn is None:
            conn = self._conns[m.topic] = self._writer.add_connection(m.topic, m.msgtype, typestore=ts)
        elif conn.msgtype != m.msgtype:
            raise BagError(f"topic {m.topic} written with two types: {conn.msgtype} and {m.msgtype}")
        data = bytes(m.msg) if isinstance(m.msg, (bytes, bytearray)) else ts.serialize_cdr(m.msg, m.msgtype)
        self._writer.write(conn, int(m.log_ns), data)
        self.count += 1


def write_bag(path: str | os.PathLike, messages: Iterable[OutMessage], storage: str = "sqlite3",
              progress: bool = False, total: int | None = None) -> int:
    """Write messages (in the given order) to a new bag; returns how many were written."""
    from tqdm import tqdm

    with BagWriter(path, storage) as w:
        for m in tqdm(messages, desc="writing bag", unit="msg", total=total, disable=not progress):
            w.write(m)
        return w.count


def frame_messages(ns: int, camera: CameraModel, tracking_state: str, image: np.ndarray, keypoints,
                   keyframe: tuple | None = None, depth: np.ndarray | None = None,
                   T_world_cam: np.ndarray | None = None) -> list[OutMessage]:
    """Contract messages of one frame, in the order ORB-SLAM3 would publish them (log times ns + k us).

    camera_info, tracking_state, image (rgb8), frame keypoints; with `keyframe` = (T_map_cam, map_points,
    map_point_ids) the keyframe pose (frame `map`) and keyframe keypoints with map points; depth (16UC1 mm,
    metres in) and the ground-truth T_world_cam when given.
    """
    T = MESSAGE_TYPES
    out = [OutMessage(INPUT_TOPICS["camera_info"], T["camera_info"], 0, camera_info_to_msg(camera, ns)),
           OutMessage(INPUT_TOPICS["tracking_state"], T["tracking_state"], 0, string_msg(tracking_state)),
           OutMessage(INPUT_TOPICS["image"], T["image"], 0, image_to_msg(encode_image(image, "rgb8"), ns)),
           OutMessage(INPUT_TOPICS["frame_keypoints"], T["frame_keypoints"], 0,
                      cloud_to_msg(encode_keypoints(keypoints), ns))]
    if keyframe is not None:
        T_map_cam, map_points, map_point_ids = keyframe
        out.append(OutMessage(INPUT_TOPICS["keyframe_pose"], T["keyframe_pose"], 0, pose_to_msg(T_map_cam, ns, MAP_FRAME)))
        out.append(OutMessage(INPUT_TOPICS["keyframe_keypoints"], T["keyframe_keypoints"], 0,
                              cloud_to_msg(encode_keypoints(keypoints, map_points, map_point_ids), ns)))
    if depth is not None:
        out.append(OutMessage(DEPTH_TOPIC, T["depth"], 0, image_to_msg(depth_image(depth), ns)))
    if T_world_cam is not None:
        out.append(OutMessage(GROUND_TRUTH_TOPIC, T["ground_truth"], 0, pose_to_msg(T_world_cam, ns, WORLD_FRAME)))
    for k, m in enumerate(out):
        m.log_ns = ns + 1000 * k
    return out


def sequence_messages(seq, depth: bool = True, ground_truth: bool = True) -> Iterator[OutMessage]:
    """Contract messages of a world-generator sequence, frame by frame (see `frame_messages`): keyframes carry
    their pose in the drifting SLAM map and their map points; depth if `depth` and the sequence kept it; the
    ground truth if `ground_truth`."""
    camera = CameraModel.pinhole(seq.K, seq.image_size[0], seq.image_size[1])
    for f in seq.frames:
        kf = None
        if f.is_keyframe and f.T_map_cam is not None and f.tracking_state == "OK":
            kf = (f.T_map_cam, f.map_points, f.map_point_ids)
        yield from frame_messages(seconds_to_ns(f.stamp), camera, f.tracking_state, f.image, f.keypoints, kf,
                                  f.depth if depth else None, f.T_world_cam if ground_truth else None)


# ---------------------------------------------------------------------------- reading
@dataclass
class BagMessage:
    """A message read from a bag: topic, log time (ns) and the deserialized message, or `error` when its bytes
    could not be deserialized (msg is None then)."""

    topic: str
    log_ns: int
    msg: Any
    error: str | None = None


_STORAGE_ERRORS = (sqlite3.Error, OSError, EOFError, KeyError, IndexError, ValueError, AssertionError)


class BagReader:
    """Open a rosbag2 bag (folder with metadata.yaml, or a single .db3 / .mcap file); BagError when it is no
    readable bag. `topics` maps topic -> type, `counts` topic -> message count, `storage` is sqlite3 or mcap."""

    def __init__(self, path: str | os.PathLike) -> None:
        from rosbags.rosbag2 import Reader
        from rosbags.rosbag2.errors import ReaderError

        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"{self.path} does not exist")
        if self.path.is_dir() and not (self.path / "metadata.yaml").is_file():
            raise BagError(f"{self.path} is not a rosbag2 bag: the folder has no metadata.yaml")
        if self.path.is_file() and self.path.suffix not in (".db3", ".mcap"):
            raise BagError(f"{self.path} is not a rosbag2 bag: expected a bag folder or a .db3 / .mcap file")
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except (ReaderError, *_STORAGE_ERRORS) as exc:
            raise BagError(f"{self.path} is not a readable rosbag2 bag (truncated or corrupt?): {exc}") from None
        conns = self._reader.connections
        self.topics: dict[str, str] = {}
        self.counts: dict[str, int] = {}
        for c in conns:
            if c.topic in self.topics and self.topics[c.topic] != c.msgtype:
                raise BagError(f"{self.path}: topic {c.topic} has two types, {self.topics[c.topic]} and {c.msgtype}")
            self.topics[c.topic] = c.msgtype
            self.counts[c.topic] = self.counts.get(c.topic, 0) + int(c.msgcount)
        self.storage = self._storage_id()

    def _storage_id(self) -> str:
        if self.path.is_file():
            return "mcap" if self.path.suffix == ".mcap" else "sqlite3"
        text = (self.path / "metadata.yaml").read_text(errors="replace")
        return "mcap" if "storage_identifier: mcap" in text else "sqlite3"

    def __enter__(self) -> "BagReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "_reader", None) is not None and self._reader.is_open:
            self._reader.close()

    def describe(self) -> str:
        """'topic (type, N msgs)' lines of everything in the bag."""
        if not self.topics:
            return "  (no topics)"
        return "\n".join(f"  {t} ({self.topics[t]}, {self.counts[t]} msgs)" for t in sorted(self.topics))

    def check(self, wanted: dict[str, str], required: Iterable[str] = REQUIRED_ROLES) -> None:
        """BagError naming the required roles whose topic is missing (listing what the bag has) and any wanted
        topic present with a type other than the contract's (MESSAGE_TYPES). wanted: role -> topic."""
        missing = [f"{wanted[r]} ({MESSAGE_TYPES[r]})" for r in required if wanted[r] not in self.topics]
        if missing:
            raise BagError(f"{self.path} lacks the required topic(s) {', '.join(missing)}; the bag has:\n"
                           + self.describe())
        for role, topic in wanted.items():
            have = self.topics.get(topic)
            if have is not None and have != MESSAGE_TYPES[role]:
                raise BagError(f"{self.path}: topic {topic} has type {have}, the contract expects "
                               f"{MESSAGE_TYPES[role]}")

    def count(self, topics: Iterable[str]) -> int:
        return sum(self.counts.get(t, 0) for t in set(topics))

    def messages(self, topics: Iterable[str]) -> Iterator[BagMessage]:
        """Messages of `topics` in log-time order. A message whose bytes do not deserialize comes with `error`
        set (never fatal); a storage that fails mid-way (truncated file) raises BagError."""
        from rosbags.rosbag2.errors import ReaderError

        wanted = set(topics)
        conns = [c for c in self._reader.connections if c.topic in wanted]
        if not conns:
            return
        ts = typestore()
        n = 0
        try:
            for conn, log_ns, raw in self._reader.messages(connections=conns):
                n += 1
                try:
                    msg = ts.deserialize_cdr(raw, conn.msgtype)
                except Exception as exc:  # any decoding failure of one message's bytes: count it, go on
                    yield BagMessage(conn.topic, int(log_ns), None, f"cannot deserialize {conn.msgtype}: "
                                                                    f"{type(exc).__name__}: {exc}")
                    continue
                yield BagMessage(conn.topic, int(log_ns), msg)
        except (ReaderError, *_STORAGE_ERRORS) as exc:
            raise BagError(f"{self.path} is truncated or corrupt: reading failed after {n} messages: "
                           f"{type(exc).__name__}: {exc}") from None


# ---------------------------------------------------------------------------- world sequences as bags
# the demo's world: 320x240 camera and keyframes every 0.6 m / 20 deg / 8 frames (replays in minutes on a CPU)
SMALL_WORLD = {"camera": {"width": 320, "height": 240, "f": 250.0}, "trajectory": {"kidnap_segments": 3},
               "slam": {"kf_max_dist": 0.6, "kf_max_angle_deg": 20.0, "kf_max_gap": 8}}


SPLIT_BAGS = ("laps", "kidnapped")  # make_bag(split=True): the tracked laps, then the kidnapped (LOST) frames
GROUND_TRUTH_FILE = "ground_truth.txt"  # make_bag(split=True): every frame's T_world_cam as a TUM file


def make_bag(out: str | os.PathLike, seed: int = 0, frames: int | None = None, profile: str = "mixed",
             storage: str = "sqlite3", depth: bool = True, small: bool = False, ground_truth: bool = True,
             progress: bool = True, fps: float | None = None, conf: dict | None = None, split: bool = False) -> dict:
    """Render a world-generator sequence and write it as a contract bag (see `sequence_messages`).

    small: the demo's world (SMALL_WORLD). fps: frame rate (default 5 Hz); the laps keep their length, so a
    higher rate gives proportionally more, closer frames (real ORB-SLAM3 needs >= 10 Hz to track the world).
    conf: nested overrides of the world conf (world.sequence.default_conf), applied last, e.g.
    {"trajectory": {"kidnap_night": world.NIGHT_LIGHTING}} for kidnapped frames lit at night.
    split: `out` becomes a folder of two bags of the one sequence, for a two-session run: `out/laps` (the
    tracked laps: keyframes, loops) and `out/kidnapped` (the kidnapped frames, all LOST: relocalization
    queries, to replay against the map saved by a replay of the first), plus `out/ground_truth.txt`, every
    frame's T_world_cam as a TUM file (the second bag's own ground truth does not cover the map's keyframes).
    Stamps continue from the first bag into the second, so both share one SLAM map frame.
    Returns counts {frames, keyframes, queries, messages, storage, image_size, laps}, laps: per pass of the
    trajectory (kidnapped frames excluded) {frames, first_stamp, last_stamp}; with split also {bags: {name:
    {path, frames, keyframes, queries, messages}}, ground_truth: path}. BagError when `out` exists (never
    overwritten) or, with split, when the profile has no kidnapped frames.
    """
    from ..conf import deep_update
    from ..world import make_sequence

    out = Path(out)
    if out.exists():
        raise BagError(f"{out} exists already; not overwriting it (choose a new path or delete it)")
    if storage not in STORAGES:
        raise BagError(f"unknown bag storage '{storage}' (choose {' or '.join(STORAGES)})")
    world_conf = {**(SMALL_WORLD if small else {}), "keep_depth": bool(depth)}
    if fps is not None:
        if not 0 < float(fps) <= 100:
            raise BagError(f"--fps must be in (0, 100] Hz, got {fps}")
        from ..world.trajectory import default_conf as traj_conf

        scale = float(fps) / traj_conf["fps"]
        world_conf["trajectory"] = {**world_conf.get("trajectory", {}), "fps": float(fps),
                                    "frames_per_lap": int(round(traj_conf["frames_per_lap"] * scale)),
                                    "kidnap_speed": traj_conf["kidnap_speed"] / scale}
    world_conf = deep_update(world_conf, conf)
    seq = make_sequence(seed=seed, profile=profile, n_frames=frames, conf=world_conf, progress=progress)
    laps = sorted({f.lap for f in seq.frames if not f.kidnapped})
    info = {**_counts(seq.frames), "storage": storage, "image_size": list(seq.image_size),
            "laps": [{"frames": len(st), "first_stamp": min(st), "last_stamp": max(st)}
                     for st in ([f.stamp for f in seq.frames if f.lap == lap and not f.kidnapped] for lap in laps)]}
    if not split:
        info["messages"] = write_bag(out, sequence_messages(seq, depth, ground_truth), storage, progress)
        return info
    import dataclasses

    parts = dict(zip(SPLIT_BAGS, ([f for f in seq.frames if not f.kidnapped], [f for f in seq.frames if f.kidnapped])))
    if not parts["kidnapped"]:
        raise BagError(f"profile '{profile}' has no kidnapped frames, so there is no second session to split off "
                       f"(use the mixed or kidnap profile)")
    out.mkdir(parents=True)
    info["bags"], info["messages"] = {}, 0
    for name, part in parts.items():
        n = write_bag(out / name, sequence_messages(dataclasses.replace(seq, frames=part), depth, ground_truth),
                      storage, progress)
        info["bags"][name] = {"path": str(out / name), **_counts(part), "messages": n}
        info["messages"] += n
    gt = out / GROUND_TRUTH_FILE
    gt.write_text("# stamp tx ty tz qx qy qz qw (T_world_cam of every frame, both bags)\n"
                  + "".join(tum_row(f.stamp, f.T_world_cam) + "\n" for f in seq.frames))
    info["ground_truth"] = str(gt)
    return info


def _counts(frames) -> dict:
    return {"frames": len(frames), "keyframes": sum(f.is_keyframe and f.tracking_state == "OK" for f in frames),
            "queries": sum(f.tracking_state != "OK" for f in frames)}


