"""Camera model from sensor_msgs/CameraInfo: pinhole intrinsics, distortion, rectification of image + keypoints.

The engine works in pinhole coordinates: a distorted image and its raw-pixel keypoints are rectified to the
same intrinsics K (new camera matrix = K), so descriptors and geometry agree. Keypoint rows keep their order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from ..features.keypoints import Keypoints
from .contract import ContractError

DISTORTION_MODELS = ("plumb_bob", "rational_polynomial", "equidistant", "none", "")


@dataclass
class CameraModel:
    """Intrinsics K [3 x 3], distortion coefficients D and model name, image size (W, H)."""

    K: np.ndarray
    D: np.ndarray
    model: str
    width: int
    height: int
    _maps: tuple | None = field(default=None, repr=False)

    @classmethod
    def from_camera_info(cls, k, d, distortion_model: str, width: int, height: int) -> "CameraModel":
        """Build from CameraInfo fields; ContractError for a singular K, unknown model or wrong coefficient count."""
        K = np.asarray(k, np.float64).reshape(-1)
        if K.size != 9 or not np.isfinite(K).all():
            raise ContractError("CameraInfo k must hold 9 finite values")
        K = K.reshape(3, 3)
        if K[0, 0] <= 0 or K[1, 1] <= 0 or abs(K[2, 2] - 1.0) > 1e-6:
            raise ContractError(f"CameraInfo k is not a valid camera matrix (fx={K[0, 0]}, fy={K[1, 1]}, k22={K[2, 2]})")
        if width <= 0 or height <= 0:
            raise ContractError(f"CameraInfo size is {width}x{height}")
        D = np.asarray(d, np.float64).reshape(-1)
        model = distortion_model or ("plumb_bob" if D.size else "none")
        if model not in DISTORTION_MODELS:
            raise ContractError(f"unsupported distortion model '{model}' (supported: plumb_bob, "
                                f"rational_polynomial, equidistant)")
        if not np.isfinite(D).all():
            raise ContractError("CameraInfo d holds non-finite values")
        if model == "equidistant" and D.size != 4:
            raise ContractError(f"equidistant distortion needs 4 coefficients, got {D.size}")
        if model in ("plumb_bob", "rational_polynomial") and D.size not in (0, 4, 5, 8, 12, 14):
            raise ContractError(f"{model} distortion has {D.size} coefficients (expected 5, or 8 for rational)")
        return cls(K, D, model, int(width), int(height))

    @classmethod
    def pinhole(cls, K: np.ndarray, width: int, height: int) -> "CameraModel":
        return cls(np.asarray(K, np.float64), np.zeros(0), "none", int(width), int(height))

    @property
    def distorted(self) -> bool:
        return self.model not in ("none", "") and bool(np.any(self.D != 0))

    def undistort_points(self, xy: np.ndarray) -> np.ndarray:
        """Raw pixel coordinates [N x 2] -> pinhole pixel coordinates with the same K."""
        xy = np.asarray(xy, np.float64).reshape(-1, 1, 2)
        if not self.distorted or len(xy) == 0:
            return xy.reshape(-1, 2).astype(np.float32)
        if self.model == "equidistant":
            out = cv2.fisheye.undistortPoints(xy, self.K, self.D, P=self.K)
        else:
            out = cv2.undistortPoints(xy, self.K, self.D, P=self.K)
        return out.reshape(-1, 2).astype(np.float32)

    def distort_points(self, xy: np.ndarray) -> np.ndarray:
        """Pinhole pixel coordinates [N x 2] -> raw (distorted) pixel coordinates."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        if not self.distorted or len(xy) == 0:
            return xy.astype(np.float32)
        Kinv = np.linalg.inv(self.K)
        rays = (np.c_[xy, np.ones(len(xy))] @ Kinv.T)[:, None, :]
        zero = np.zeros(3)
        if self.model == "equidistant":
            out = cv2.fisheye.projectPoints(rays, zero, zero, self.K, self.D)[0]
        else:
            out = cv2.projectPoints(rays, zero, zero, self.K, self.D)[0]
        return out.reshape(-1, 2).astype(np.float32)

    def rectify(self, image: np.ndarray, keypoints: Keypoints) -> tuple[np.ndarray, Keypoints]:
        """Image + raw keypoints -> pinhole image + keypoints (same K, same rows; clipped into the image)."""
        h, w = image.shape[:2]
        if (w, h) != (self.width, self.height):
            raise ContractError(f"image is {w}x{h} but CameraInfo says {self.width}x{self.height}")
        if not self.distorted:
            return image, keypoints
        if self._maps is None:
            if self.model == "equidistant":
                self._maps = cv2.fisheye.initUndistortRectifyMap(self.K, self.D, np.eye(3), self.K, (w, h),
                                                                 cv2.CV_16SC2)
            else:
                self._maps = cv2.initUndistortRectifyMap(self.K, self.D, np.eye(3), self.K, (w, h), cv2.CV_16SC2)
        rect = cv2.remap(image, self._maps[0], self._maps[1], cv2.INTER_LINEAR)
        xy = self.undistort_points(keypoints.xy)
        xy = np.clip(np.nan_to_num(xy, nan=0.0), 0, [w - 1, h - 1]).astype(np.float32)
        return rect, Keypoints(xy, keypoints.octave, keypoints.response, keypoints.angle, keypoints.size,
                               keypoints.scale_factor)
