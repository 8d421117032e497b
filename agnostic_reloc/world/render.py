"""Exact pinhole rendering of a `Scene`: per-plane inverse homography + analytic per-pixel depth + z-buffer.

Camera frame: x right, y down, z forward (OpenCV). Pixel (u, v) has its centre at integer coordinates.
For each plane, with X(s, t) = c0 + s e1 + t e2 in the world, the camera sees
    z [u, v, 1]^T = M [s, t, 1]^T,   M = K [R e1 | R e2 | R c0 + t]   (R, t from T_cam_world),
so M^-1 [u, v, 1]^T = [s, t, 1]^T / z gives the texture coordinates and the exact depth of every pixel.
Pixels with z <= near (behind the camera) are rejected per pixel, so planes crossing the camera plane
render exactly (no clipping holes); the clipped polygon only bounds the pixels to visit.
"""

from __future__ import annotations

import cv2
import numpy as np

from agnostic_reloc.world.scene import Scene

default_lighting = {
    "gain": 1.0,  # multiplies intensities after gamma
    "gamma": 1.0,  # intensity <- 255 * (intensity / 255) ** gamma (> 1 darkens mid-tones)
    "vignetting": 0.0,  # relative brightness loss at the image corners (0 = none, 0.3 = 30 %)
    "noise_std": 0.0,  # Gaussian sensor noise std (grey levels)
    "blur_px": 0.0,  # linear motion-blur length (px) at a seeded direction (0 = sharp)
    "seed": 0,  # noise and blur-direction seed
}

NEAR = 0.05  # near plane (m): nothing closer than this is drawn
FAR = 100.0  # far plane (m)


def default_K(width: int = 640, height: int = 480, f: float = 500.0) -> np.ndarray:
    """Pinhole intrinsics [3 x 3] float64 with the principal point at the image centre ((W-1)/2, (H-1)/2)."""
    return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]], np.float64)


def _check_pose(T: np.ndarray, name: str) -> np.ndarray:
    T = np.asarray(T, np.float64)
    if T.shape != (4, 4) or not np.isfinite(T).all():
        raise ValueError(f"{name} must be a finite 4x4 matrix, got shape {T.shape}")
    R = T[:3, :3]
    if np.abs(R @ R.T - np.eye(3)).max() > 1e-6 or np.linalg.det(R) < 0:
        raise ValueError(f"{name} rotation is not orthonormal")
    return T


def _clip_near(pts: np.ndarray, near: float) -> np.ndarray:
    """Sutherland-Hodgman clip of a convex polygon [N x 3] (camera frame) to z >= near."""
    out = []
    n = len(pts)
    for i in range(n):
        a, b = pts[i], pts[(i + 1) % n]
        ina, inb = a[2] >= near, b[2] >= near
        if ina:
            out.append(a)
        if ina != inb:
            out.append(a + (near - a[2]) / (b[2] - a[2]) * (b - a))
    return np.array(out).reshape(-1, 3)


def apply_lighting(image: np.ndarray, lighting: dict | None) -> np.ndarray:
    """Motion blur, gain, gamma, vignetting and seeded Gaussian noise on an RGB uint8 image (returns a new image).

    Blur is applied first (it happens on the scene radiance during the exposure), then the tone curve, the
    vignetting and the sensor noise.
    """
    if not lighting:
        return image
    unknown = set(lighting) - set(default_lighting)
    if unknown:
        raise ValueError(f"unknown lighting keys {sorted(unknown)}; known keys: {', '.join(default_lighting)}")
    c = {**default_lighting, **lighting}
    if (c["gain"] < 0 or c["gamma"] <= 0 or c["noise_std"] < 0 or not 0 <= c["vignetting"] < 1
            or not 0 <= c["blur_px"] <= 100):
        raise ValueError(f"bad lighting {c}: need gain >= 0, gamma > 0, noise_std >= 0, 0 <= vignetting < 1, "
                         "0 <= blur_px <= 100")
    if c["blur_px"] > 0:
        image = motion_blur(image, c["blur_px"], np.random.default_rng([int(c["seed"]), 1]).uniform(0, 180))
    lut = np.clip(255.0 * c["gain"] * (np.arange(256) / 255.0) ** c["gamma"], 0, 255)
    if c["vignetting"] == 0 and c["noise_std"] == 0:
        return cv2.LUT(image, lut.round().astype(np.uint8))
    out = lut.astype(np.float32)[image]
    h, w = image.shape[:2]
    if c["vignetting"] > 0:
        yy, xx = np.ogrid[:h, :w]
        r2 = ((xx - (w - 1) / 2) ** 2 + (yy - (h - 1) / 2) ** 2) / (((w - 1) / 2) ** 2 + ((h - 1) / 2) ** 2)
        out *= (1.0 - c["vignetting"] * r2).astype(np.float32)[..., None]
    if c["noise_std"] > 0:
        rng = np.random.default_rng(int(c["seed"]))
        out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(c["noise_std"])
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def motion_blur(image: np.ndarray, length_px: float, angle_deg: float) -> np.ndarray:
    """Linear motion blur: the average of the image along a segment of `length_px` at `angle_deg`."""
    n = int(np.ceil(length_px)) | 1  # odd kernel size
    kernel = np.zeros((n, n), np.float32)
    c = (n - 1) / 2
    d = np.array([np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))]) * length_px / 2
    cv2.line(kernel, (int(round(c - d[0])), int(round(c - d[1]))), (int(round(c + d[0])), int(round(c + d[1]))),
             1.0, 1, cv2.LINE_AA)
    kernel /= kernel.sum()
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT)


def render(scene: Scene, T_world_cam: np.ndarray, K: np.ndarray, size: tuple[int, int],
           lighting: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render the scene from a camera pose.

    Args:
        scene: the room.
        T_world_cam: [4 x 4] float64 camera-to-world pose.
        K: [3 x 3] pinhole intrinsics (pixels).
        size: (W, H) image size in pixels.
        lighting: keys of `default_lighting` (None = the raw textures).
    Returns:
        image: RGB uint8 [H x W x 3];
        depth: float32 [H x W] z-depth along the optical axis (m), inf where nothing is seen;
        plane_id: int16 [H x W] id of the visible plane, -1 where nothing is seen.
    """
    T = _check_pose(T_world_cam, "T_world_cam")
    K = np.asarray(K, np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0 or K[2, 2] != 1:
        raise ValueError("K must be a finite 3x3 pinhole matrix with positive focal lengths and K[2, 2] = 1")
    W, H = (int(v) for v in size)
    if W < 8 or H < 8:
        raise ValueError(f"image size must be at least 8x8, got {size}")
    R = T[:3, :3].T
    t = -R @ T[:3, 3]
    image = np.zeros((H, W, 3), np.uint8)
    depth = np.full((H, W), np.inf, np.float32)
    plane_id = np.full((H, W), -1, np.int16)
    for plane in scene.planes:
        pc = plane.corners @ R.T + t
        poly = _clip_near(pc, NEAR)
        if len(poly) < 3:
            continue
        uv = (poly @ K.T)
        uv = uv[:, :2] / uv[:, 2:]
        x0, y0 = np.floor(uv.min(0)).astype(int)
        x1, y1 = np.ceil(uv.max(0)).astype(int)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W - 1), min(y1, H - 1)
        if x0 > x1 or y0 > y1:
            continue
        M = K @ np.column_stack([R @ plane.e1, R @ plane.e2, R @ plane.origin + t])
        if abs(np.linalg.det(M)) < 1e-12 * max(1.0, np.abs(M).max() ** 3):
            continue  # seen exactly edge-on
        Mi = np.linalg.inv(M)
        # Pixel grids relative to the bbox corner, float32 (errors ~1e-7 relative: far below 1 mm / 0.01 px).
        us = np.arange(x1 - x0 + 1, dtype=np.float32)
        vs = np.arange(y1 - y0 + 1, dtype=np.float32)[:, None]
        a = Mi @ np.array([x0, y0, 1.0])  # value at the bbox corner
        f32 = np.float32
        w = f32(Mi[2, 0]) * us + (f32(Mi[2, 1]) * vs + f32(a[2]))
        zbuf = depth[y0:y1 + 1, x0:x1 + 1]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            z = f32(1.0) / w
            s = (f32(Mi[0, 0]) * us + (f32(Mi[0, 1]) * vs + f32(a[0]))) * z
            tt = (f32(Mi[1, 0]) * us + (f32(Mi[1, 1]) * vs + f32(a[1]))) * z
            mask = (z > f32(NEAR)) & (z < f32(FAR)) & (z < zbuf) & (s >= 0) & (s <= 1) & (tt >= 0) & (tt <= 1)
        sub = mask[::4, ::4]
        if not sub.any() and not mask.any():
            continue
        # Mip level from the texture footprint of one pixel at the median visible depth:
        # |det d(s,t)/d(u,v)| = |det Mi| z^3.
        zs = z[::4, ::4][sub] if sub.any() else z[mask]
        z_med = float(np.median(zs))
        pyr = plane.pyramid()
        th, tw = plane.texture.shape[:2]
        footprint = np.sqrt(abs(np.linalg.det(Mi)) * z_med ** 3 * tw * th)
        level = int(np.clip(np.floor(np.log2(max(footprint, 1.0))), 0, len(pyr) - 1))
        tex = pyr[level]
        lh, lw = tex.shape[:2]
        mapx = s * f32(lw) - f32(0.5)
        mapy = tt * f32(lh) - f32(0.5)
        sampled = cv2.remap(tex, mapx, mapy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        np.copyto(image[y0:y1 + 1, x0:x1 + 1], sampled, where=mask[..., None])
        np.copyto(zbuf, z, where=mask)
        plane_id[y0:y1 + 1, x0:x1 + 1][mask] = plane.id
    return apply_lighting(image, lighting), depth, plane_id
