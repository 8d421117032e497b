"""The one keypoint container shared by detectors, suppression, descriptors and matchers."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Keypoints:
    """Keypoints of one image, in the detector's (or SLAM's) own order.

    Attributes:
        xy: [N x 2] float32 pixel coordinates (x right, y down) in the raw image.
        octave: [N] int32 pyramid level (0 = full resolution; 0 for single-scale detectors).
        response: [N] float32 detector response (higher is stronger).
        angle: [N] float32 orientation in degrees, -1 when the detector gives none.
        size: [N] float32 diameter of the keypoint neighbourhood in pixels.
        scale_factor: pyramid scale between octaves (ORB-SLAM3: 1.2).
    """

    xy: np.ndarray
    octave: np.ndarray = field(default=None)  # type: ignore[assignment]
    response: np.ndarray = field(default=None)  # type: ignore[assignment]
    angle: np.ndarray = field(default=None)  # type: ignore[assignment]
    size: np.ndarray = field(default=None)  # type: ignore[assignment]
    scale_factor: float = 1.2

    def __post_init__(self) -> None:
        xy = np.asarray(self.xy, dtype=np.float32)
        if xy.ndim != 2 or xy.shape[1] != 2:
            if xy.size == 0:
                xy = xy.reshape(0, 2)
            else:
                raise ValueError(f"keypoints must have shape [N x 2], got {xy.shape}")
        n = len(xy)
        self.xy = xy

        def column(value, default, dtype, name):
            if value is None:
                return np.full(n, default, dtype=dtype)
            arr = np.asarray(value, dtype=dtype).reshape(-1)
            if len(arr) != n:
                raise ValueError(f"keypoint field '{name}' has {len(arr)} entries, expected {n}")
            return arr

        self.octave = column(self.octave, 0, np.int32, "octave")
        self.response = column(self.response, 1.0, np.float32, "response")
        self.angle = column(self.angle, -1.0, np.float32, "angle")
        self.size = column(self.size, 7.0, np.float32, "size")

    def __len__(self) -> int:
        return len(self.xy)

    def subset(self, index: np.ndarray) -> "Keypoints":
        """Keypoints selected by an index array or boolean mask (order follows `index`)."""
        return Keypoints(self.xy[index], self.octave[index], self.response[index],
                         self.angle[index], self.size[index], self.scale_factor)

    @staticmethod
    def concat(parts: list["Keypoints"]) -> "Keypoints":
        """Stack keypoint sets (e.g. an ensemble of detectors) in the given order."""
        if not parts:
            return Keypoints(np.zeros((0, 2), np.float32))
        return Keypoints(
            np.concatenate([p.xy for p in parts]),
            np.concatenate([p.octave for p in parts]),
            np.concatenate([p.response for p in parts]),
            np.concatenate([p.angle for p in parts]),
            np.concatenate([p.size for p in parts]),
            parts[0].scale_factor,
        )

    def validate(self, image_shape: tuple[int, ...] | None = None) -> None:
        """Raise ValueError naming the problem if coordinates are not finite or outside the image.

        Args:
            image_shape: (H, W, ...) of the image the keypoints belong to.
        """
        if not np.all(np.isfinite(self.xy)):
            bad = int(np.flatnonzero(~np.isfinite(self.xy).all(1))[0])
            raise ValueError(f"keypoint {bad} has a non-finite coordinate {self.xy[bad].tolist()}")
        if image_shape is not None and len(self):
            h, w = image_shape[:2]
            out = (self.xy[:, 0] < 0) | (self.xy[:, 1] < 0) | (self.xy[:, 0] > w - 1) | (self.xy[:, 1] > h - 1)
            if out.any():
                bad = int(np.flatnonzero(out)[0])
                raise ValueError(
                    f"keypoint {bad} at {self.xy[bad].tolist()} lies outside the {w}x{h} image "
                    f"({int(out.sum())} of {len(self)} keypoints are outside)")
        if np.any(self.octave < 0):
            raise ValueError("keypoint octaves must be >= 0")
