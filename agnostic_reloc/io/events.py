"""Contract messages -> engine events, shared by the ROS node and the bag replay (identical input checks).

`EventAssembler` holds the little state the conversion needs (camera model, tracking state, last keyframe
stamp) and turns synchronised message contents into `KeyframeEvent` / `QueryEvent`. Every problem raises
`ContractError` naming it; the caller drops the message and counts it.
"""

from __future__ import annotations

import numpy as np

from ..types import KeyframeEvent, QueryEvent
from .camera import CameraModel
from .contract import Cloud, ContractError, ImageData, TrackingState, decode_image, decode_keypoints


class EventAssembler:
    """Builds engine events from decoded contract messages; rectifies distorted images and keypoints."""

    def __init__(self, scale_factor: float = 1.2) -> None:
        self.camera: CameraModel | None = None
        self.state = TrackingState("OK")
        self.scale_factor = scale_factor
        self.last_keyframe_ns: int | None = None

    def set_camera(self, camera: CameraModel) -> bool:
        """Use this camera model from now on; an identical repeat (CameraInfo comes with every frame) keeps the
        current model and its rectification maps. True when the camera changed."""
        old = self.camera
        if old is not None and np.array_equal(old.K, camera.K) and np.array_equal(old.D, camera.D) \
                and (old.width, old.height, old.model) == (camera.width, camera.height, camera.model):
            return False
        self.camera = camera
        return True

    def wants_queries(self) -> bool:
        """Frames become relocalization queries only while the SLAM is not tracking."""
        return not self.state.tracking

    def set_tracking_state(self, text: str) -> TrackingState:
        self.state = TrackingState.parse(text)
        return self.state

    def _image(self, image: ImageData) -> np.ndarray:
        if self.camera is None:
            raise ContractError("no CameraInfo received yet: cannot use images without intrinsics")
        img = decode_image(image)
        h, w = img.shape[:2]
        if (w, h) != (self.camera.width, self.camera.height):
            raise ContractError(f"image is {w}x{h} but CameraInfo says {self.camera.width}x{self.camera.height}")
        return img

    def _keypoints(self, cloud: Cloud, img: np.ndarray):
        kc = decode_keypoints(cloud, self.scale_factor)
        h, w = img.shape[:2]
        xy = kc.keypoints.xy
        out = (xy[:, 0] < 0) | (xy[:, 1] < 0) | (xy[:, 0] > w - 1) | (xy[:, 1] > h - 1)
        if out.any():
            raise ContractError(f"{int(out.sum())} of {len(xy)} keypoints lie outside the {w}x{h} image "
                                f"(first: row {int(np.flatnonzero(out)[0])} at {xy[out][0].tolist()}); "
                                f"image and keypoints do not belong together")
        return kc

    def keyframe(self, stamp_ns: int, cloud: Cloud, T_map_cam: np.ndarray, image: ImageData) -> KeyframeEvent:
        """A keyframe from its keypoints, pose and image (same stamp); stamps must increase."""
        if self.last_keyframe_ns is not None and stamp_ns <= self.last_keyframe_ns:
            raise ContractError(f"keyframe stamp {stamp_ns} ns is not after the previous keyframe "
                                f"({self.last_keyframe_ns} ns): stamps went backwards")
        img = self._image(image)
        kc = self._keypoints(cloud, img)
        if len(kc.keypoints) == 0:
            raise ContractError("keyframe keypoint cloud is empty")
        img, kpts = self.camera.rectify(img, kc.keypoints)
        self.last_keyframe_ns = stamp_ns
        return KeyframeEvent(stamp_ns / 1e9, img, kpts, np.asarray(T_map_cam, np.float64), self.camera.K.copy(),
                             kc.map_points, kc.map_point_ids)

    def query(self, stamp_ns: int, image: ImageData, cloud: Cloud | None = None) -> QueryEvent:
        """A relocalization query: an image with the SLAM's frame keypoints, or alone (detector keypoints)."""
        img = self._image(image)
        kpts = None
        if cloud is not None:
            kc = self._keypoints(cloud, img)
            img, kpts = self.camera.rectify(img, kc.keypoints)
        elif self.camera.distorted:
            from ..features.keypoints import Keypoints

            img, _ = self.camera.rectify(img, Keypoints(np.zeros((0, 2), np.float32)))
        return QueryEvent(stamp_ns / 1e9, img, self.camera.K.copy(), kpts)

    def reset(self) -> None:
        self.last_keyframe_ns = None
