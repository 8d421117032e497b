"""The one set of message readers: ROS message objects -> the contract's plain types.

Duck-typed on the ROS 2 field names, so the same functions read rclpy messages (the nodes) and rosbags
messages (bags); all decoding and validation lives in `contract`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .camera import CameraModel
from .contract import Cloud, CloudField, ImageData, pose_to_T, stamp_ns


# ---------------------------------------------------------------------------- message -> contract types
def header_ns(msg: Any) -> int:
    """header.stamp of a message in integer nanoseconds."""
    return stamp_ns(msg.header.stamp.sec, msg.header.stamp.nanosec)


def msg_to_cloud(msg: Any) -> Cloud:
    fields = [CloudField(f.name, int(f.offset), int(f.datatype), int(f.count)) for f in msg.fields]
    return Cloud(fields, int(msg.point_step), int(msg.width), int(msg.height), bytes(msg.data),
                 bool(msg.is_bigendian), int(msg.row_step), bool(msg.is_dense))


def msg_to_image(msg: Any) -> ImageData:
    return ImageData(msg.encoding, int(msg.height), int(msg.width), int(msg.step), bytes(msg.data),
                     bool(msg.is_bigendian))


def msg_pose_to_T(pose: Any) -> np.ndarray:
    """geometry_msgs/Pose -> 4x4 (ContractError for NaN or a non-unit quaternion)."""
    p, q = pose.position, pose.orientation
    return pose_to_T((p.x, p.y, p.z), (q.x, q.y, q.z, q.w))


def msg_to_T(msg: Any) -> np.ndarray:
    """PoseStamped -> 4x4 (ContractError for NaN or a non-unit quaternion)."""
    return msg_pose_to_T(msg.pose)


def msg_to_camera(msg: Any) -> CameraModel:
    return CameraModel.from_camera_info(list(msg.k), list(msg.d), msg.distortion_model, int(msg.width),
                                        int(msg.height))
