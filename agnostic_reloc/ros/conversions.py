"""The contract's plain types (`contract.Cloud`, `contract.ImageData`, 4x4 poses) -> rclpy message objects.

The readers (message -> plain types) are `io.messages`, shared with the bag tools; all decoding and
validation lives in `io.contract`; these functions only copy fields.
"""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, PoseStamped, PoseWithCovarianceStamped, TransformStamped
from nav_msgs.msg import Path
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

from ..io.camera import CameraModel
from ..io.contract import Cloud, ImageData, T_to_pose, covariance_to_ros, split_stamp


def make_header(stamp_ns_: int, frame_id: str) -> Header:
    sec, nsec = split_stamp(stamp_ns_)
    return Header(stamp=Time(sec=sec, nanosec=nsec), frame_id=frame_id)


def cloud_to_msg(cloud: Cloud, header: Header) -> PointCloud2:
    msg = PointCloud2(header=header, height=cloud.height, width=cloud.width, is_bigendian=cloud.is_bigendian,
                      point_step=cloud.point_step, row_step=cloud.row_step, is_dense=cloud.is_dense)
    msg.fields = [PointField(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count) for f in cloud.fields]
    msg.data = cloud.data
    return msg


def image_to_msg(image: ImageData, header: Header) -> Image:
    msg = Image(header=header, height=image.height, width=image.width, encoding=image.encoding,
                is_bigendian=int(image.is_bigendian), step=image.step)
    msg.data = image.data
    return msg


def fill_pose(pose: Pose, T: np.ndarray) -> Pose:
    t, q = T_to_pose(T)
    pose.position.x, pose.position.y, pose.position.z = map(float, t)
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = map(float, q)
    return pose


def pose_stamped(T: np.ndarray, stamp_ns_: int, frame_id: str) -> PoseStamped:
    msg = PoseStamped(header=make_header(stamp_ns_, frame_id))
    fill_pose(msg.pose, T)
    return msg


def transform_stamped(T_parent_child: np.ndarray, stamp_ns_: int, parent: str, child: str) -> TransformStamped:
    """T_parent_child [4 x 4] (child coordinates -> parent coordinates) -> TransformStamped, as tf2 reads it
    (header.frame_id = parent, child_frame_id = child)."""
    msg = TransformStamped(header=make_header(stamp_ns_, parent), child_frame_id=child)
    t, q = T_to_pose(T_parent_child)
    tr, rot = msg.transform.translation, msg.transform.rotation
    tr.x, tr.y, tr.z = map(float, t)
    rot.x, rot.y, rot.z, rot.w = map(float, q)
    return msg


def path(poses: list[np.ndarray], stamps_ns: list[int], frame_id: str, stamp_ns_: int) -> Path:
    """Poses T_frame_cam [4 x 4] with their stamps -> nav_msgs/Path in `frame_id` (header stamp `stamp_ns_`)."""
    msg = Path(header=make_header(stamp_ns_, frame_id))
    msg.poses = [pose_stamped(T, ns, frame_id) for T, ns in zip(poses, stamps_ns)]
    return msg


def pose_with_covariance(T: np.ndarray, covariance: np.ndarray | None, header: Header) -> PoseWithCovarianceStamped:
    """Pose + engine covariance ([rx ry rz tx ty tz]) -> PoseWithCovarianceStamped (ROS order x y z rx ry rz)."""
    msg = PoseWithCovarianceStamped(header=header)
    fill_pose(msg.pose.pose, T)
    msg.pose.covariance = covariance_to_ros(covariance)
    return msg


def camera_info_msg(camera: CameraModel, stamp_ns_: int, frame_id: str) -> CameraInfo:
    msg = CameraInfo(header=make_header(stamp_ns_, frame_id), width=camera.width, height=camera.height,
                     distortion_model=camera.model if camera.model not in ("none", "") else "plumb_bob")
    msg.k = [float(v) for v in np.asarray(camera.K).reshape(-1)]
    d = np.zeros(5) if camera.model in ("none", "") else np.asarray(camera.D, np.float64)
    msg.d = [float(v) for v in d]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    P = np.zeros((3, 4))
    P[:3, :3] = camera.K
    msg.p = [float(v) for v in P.reshape(-1)]
    return msg
