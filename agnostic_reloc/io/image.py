"""Image loading and validation: every entry point turns images into RGB uint8 [H x W x 3] here."""

from __future__ import annotations

import os

import cv2
import numpy as np
import torch


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB uint8 [H x W x 3]; ValueError naming the file if it is missing or unreadable."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"image file {path} does not exist")
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"image file {path} is not a readable image (corrupt or unsupported format)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate an image array and return it as RGB uint8 [H x W x 3].

    Accepts uint8 or uint16 (scaled to 8 bit) arrays of shape [H x W], [H x W x 1] or [H x W x 3].
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.size == 0 or image.ndim < 2 or min(image.shape[:2]) < 8:
        raise ValueError(f"image is empty or too small (shape {image.shape}); need at least 8x8 pixels")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(f"image dtype must be uint8 or uint16, got {image.dtype}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        image = np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be [H x W], [H x W x 1] or [H x W x 3], got shape {image.shape}")
    return np.ascontiguousarray(image)


def to_tensor(images: list[np.ndarray], device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Same-size RGB uint8 images -> [B x 3 x H x W] float tensor in [0, 1]."""
    arr = np.stack([check_image(im) for im in images])
    t = torch.from_numpy(arr).to(device).permute(0, 3, 1, 2)
    return t.to(dtype) / 255.0
