"""Hard synthetic image pairs with exact ground-truth homographies, made from real photos.

image0 is the photo resized and centre-cropped to conf["size"]; image1 is the photo warped by a random
homography H_0to1 (pixel coords of image0 -> pixel coords of image1, pixel centres at integers) followed
by photometric changes. image1 is rendered from the full photo, so it may show content outside image0's
crop; where the photo ends image1 is black. Every pair draws a difficulty d in conf["difficulty_range"]
that scales all distortion strengths, so a set of pairs spans easy to very hard.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from agnostic_reloc.io.image import check_image, load_image

default_conf = {
    "size": (640, 480),  # (width, height) of image0 and image1, px
    "rotation_deg": 45,  # max in-plane rotation about the image centre, degrees (sign random)
    "scale_range": (0.45, 2.2),  # (zoom-out, zoom-in) extreme scale factors, sampled log-uniformly
    "perspective": 0.0015,  # max projective terms, 1/px in image0 centred coords
    "max_shift": 0.5,  # max translation of image0's centre, fraction of half the image size
    "gamma_range": (0.4, 2.2),  # extreme gamma exponents on [0, 1] intensities, sampled log-uniformly
    "gain_range": (0.5, 1.6),  # extreme brightness gains, sampled log-uniformly
    "blur_max_sigma": 2.5,  # max Gaussian blur sigma, px
    "noise_max_std": 8.0,  # max std of additive Gaussian noise, grey levels (0..255)
    "difficulty_range": (0.0, 1.0),  # per-pair difficulty d ~ U(range); each strength = max * d * U(0.25, 1)
    "min_visible": 0.3,  # min covisible fraction (see visible_fractions), resampled until met
    "photometric": True,  # False: image1 is the pure geometric warp (for checking ground truth)
    "max_tries": 200,  # geometric samples per pair before the difficulty is lowered
}


@dataclass
class HomographyPair:
    """A synthetic pair: image0, image1 RGB uint8 [H x W x 3]; H_0to1 3x3 float64 (image0 px -> image1 px)."""

    image0: np.ndarray
    image1: np.ndarray
    H_0to1: np.ndarray
    name: str
    params: dict = field(default_factory=dict)


def _conf(conf: dict | None) -> dict:
    conf = {**default_conf, **(conf or {})}
    unknown = set(conf) - set(default_conf)
    if unknown:
        raise ValueError(f"unknown homography_pairs conf keys {sorted(unknown)}; known: {sorted(default_conf)}")
    w, h = conf["size"]
    if int(w) < 16 or int(h) < 16:
        raise ValueError(f"conf size must be (width, height) >= 16 px, got {conf['size']}")
    for key in ("scale_range", "gamma_range", "gain_range"):
        lo, hi = conf[key]
        if not 0 < lo <= 1 <= hi:
            raise ValueError(f"conf {key} must be (lo, hi) with 0 < lo <= 1 <= hi, got {conf[key]}")
    lo, hi = conf["difficulty_range"]
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f"conf difficulty_range must satisfy 0 <= lo <= hi <= 1, got {conf['difficulty_range']}")
    if not 0 <= conf["min_visible"] < 1:
        raise ValueError(f"conf min_visible must be in [0, 1), got {conf['min_visible']}")
    for key in ("rotation_deg", "perspective", "max_shift", "blur_max_sigma", "noise_max_std"):
        if conf[key] < 0:
            raise ValueError(f"conf {key} must be >= 0, got {conf[key]}")
    return conf


def warp_points(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 3x3 homography to points [N x 2] (x, y) px -> [N x 2] float64; inf where the point maps to infinity."""
    H = np.asarray(H, dtype=np.float64)
    if H.shape != (3, 3):
        raise ValueError(f"H must be 3x3, got shape {H.shape}")
    pts = np.asarray(pts, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"pts must be [N x 2] (x, y), got shape {pts.shape}")
    xyw = pts @ H[:, :2].T + H[:, 2]
    w = xyw[:, 2:]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = xyw[:, :2] / w
    out[np.abs(w[:, 0]) < 1e-12] = np.inf
    return out


def _grid(size: tuple[int, int], n: int = 48) -> np.ndarray:
    w, h = size
    xs, ys = np.meshgrid(np.linspace(0, w - 1, n), np.linspace(0, h - 1, n))
    return np.stack([xs.ravel(), ys.ravel()], 1)


def _inside(H: np.ndarray, pts: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    w = pts @ H[2, :2] + H[2, 2]
    q = warp_points(H, pts)
    return (w > 0) & (q[:, 0] >= -0.5) & (q[:, 0] <= size[0] - 0.5) & (q[:, 1] >= -0.5) & (q[:, 1] <= size[1] - 0.5)


def visible_fractions(H_0to1: np.ndarray, size: tuple[int, int]) -> tuple[float, float]:
    """(fraction of image0 seen in image1, fraction of image1 showing image0's area), both images `size` (w, h)."""
    grid = _grid(size)
    return float(_inside(H_0to1, grid, size).mean()), float(_inside(np.linalg.inv(H_0to1), grid, size).mean())


def _signed_log_uniform(rng: np.random.Generator, strength: float, lo: float, hi: float) -> float:
    bound = math.log(hi) if rng.random() < 0.5 else math.log(lo)
    return math.exp(strength * bound)


def _sample_homography(rng: np.random.Generator, conf: dict, d: float) -> tuple[np.ndarray, dict]:
    w, h = conf["size"]
    c = np.array([(w - 1) / 2, (h - 1) / 2])

    def strength() -> float:
        return d * rng.uniform(0.25, 1.0)

    angle = strength() * conf["rotation_deg"] * rng.choice([-1.0, 1.0])
    scale = _signed_log_uniform(rng, strength(), *conf["scale_range"])
    persp = np.array([strength(), strength()]) * conf["perspective"] * rng.choice([-1.0, 1.0], 2)
    shift = np.array([strength(), strength()]) * conf["max_shift"] * c * rng.choice([-1.0, 1.0], 2)
    T0 = np.array([[1, 0, -c[0]], [0, 1, -c[1]], [0, 0, 1]], float)
    P = np.array([[1, 0, 0], [0, 1, 0], [persp[0], persp[1], 1]], float)
    a = math.radians(angle)
    RS = np.array([[scale * math.cos(a), -scale * math.sin(a), 0], [scale * math.sin(a), scale * math.cos(a), 0],
                   [0, 0, 1]])
    T1 = np.array([[1, 0, c[0] + shift[0]], [0, 1, c[1] + shift[1]], [0, 0, 1]], float)
    H = T1 @ RS @ P @ T0
    params = {"difficulty": d, "rotation_deg": angle, "scale": scale, "perspective": persp.tolist(),
              "shift_px": shift.tolist()}
    return H / H[2, 2], params


def _valid(H: np.ndarray, conf: dict) -> tuple[bool, tuple[float, float]]:
    w, h = conf["size"]
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], float)
    Hinv = np.linalg.inv(H)
    # no horizon line inside either image: both views must see only points in front of the other
    if np.any(corners @ H[2, :2] + H[2, 2] <= 0.05) or np.any(corners @ Hinv[2, :2] + Hinv[2, 2] <= 0.05):
        return False, (0.0, 0.0)
    vis = visible_fractions(H, (w, h))
    return max(vis) >= conf["min_visible"] and min(vis) > 0.02, vis


def _crop_matrix(shape: tuple[int, int], size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """Photo px -> image0 px for resize-to-cover then centre crop; also the resized (w, h) and crop offset."""
    ph, pw = shape
    w, h = size
    k = max(w / pw, h / ph)
    rw, rh = max(w, round(pw * k)), max(h, round(ph * k))
    ox, oy = (rw - w) // 2, (rh - h) // 2
    fx, fy = rw / pw, rh / ph
    C = np.array([[fx, 0, 0.5 * fx - 0.5 - ox], [0, fy, 0.5 * fy - 0.5 - oy], [0, 0, 1]])
    return C, (rw, rh), (ox, oy)


def _render(photo: np.ndarray, M: np.ndarray, size: tuple[int, int], at: np.ndarray) -> np.ndarray:
    """Warp photo by M (photo px -> output px) into `size`, pre-shrinking the photo when M minifies near `at`."""
    p = M @ [at[0], at[1], 1.0]
    J = (M[:2, :2] - np.outer(p[:2] / p[2], M[2, :2])) / p[2]  # Jacobian of the warp at `at`
    s = math.sqrt(abs(np.linalg.det(J)))
    if s < 0.9:  # anti-alias: area-resample the photo so the warp is ~1:1 near the centre
        ph, pw = photo.shape[:2]
        rw, rh = max(8, round(pw * s)), max(8, round(ph * s))
        photo = cv2.resize(photo, (rw, rh), interpolation=cv2.INTER_AREA)
        fx, fy = rw / pw, rh / ph
        back = np.array([[1 / fx, 0, 0.5 / fx - 0.5], [0, 1 / fy, 0.5 / fy - 0.5], [0, 0, 1]])  # resized -> photo
        M = M @ back
    return cv2.warpPerspective(photo, M, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _photometric(image: np.ndarray, rng: np.random.Generator, conf: dict, d: float) -> tuple[np.ndarray, dict]:
    def strength() -> float:
        return d * rng.uniform(0.25, 1.0)

    gamma = _signed_log_uniform(rng, strength(), *conf["gamma_range"])
    gain = _signed_log_uniform(rng, strength(), *conf["gain_range"])
    sigma = strength() * conf["blur_max_sigma"]
    noise = strength() * conf["noise_max_std"]
    img = (image.astype(np.float32) / 255.0) ** gamma * gain * 255.0
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    if noise > 0:
        img = img + rng.normal(0.0, noise, img.shape).astype(np.float32)
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out, {"gamma": gamma, "gain": gain, "blur_sigma": sigma, "noise_std": noise}


def make_pair(image: np.ndarray, rng: np.random.Generator, conf: dict | None = None, name: str = "pair") -> HomographyPair:
    """One synthetic pair from an RGB uint8 photo [H x W x 3] (any size); randomness only from `rng`."""
    conf = _conf(conf)
    photo = check_image(image)
    size = (int(conf["size"][0]), int(conf["size"][1]))
    C, (rw, rh), (ox, oy) = _crop_matrix(photo.shape[:2], size)
    interp = cv2.INTER_AREA if rw < photo.shape[1] else cv2.INTER_LINEAR
    image0 = np.ascontiguousarray(cv2.resize(photo, (rw, rh), interpolation=interp)[oy:oy + size[1], ox:ox + size[0]])

    d = float(rng.uniform(*conf["difficulty_range"]))
    tries = 0
    while True:
        H, params = _sample_homography(rng, conf, d)
        ok, vis = _valid(H, conf)
        if ok:
            break
        tries += 1
        if tries % conf["max_tries"] == 0:
            d *= 0.8  # too hard to satisfy the visibility constraint: back off
    M = H @ C
    centre = np.linalg.solve(C, [(size[0] - 1) / 2, (size[1] - 1) / 2, 1.0])
    image1 = _render(photo, M, size, centre[:2] / centre[2])
    params.update(visible0=vis[0], visible1=vis[1], visible_fraction=max(vis), tries=tries + 1)
    if conf["photometric"]:
        image1, photo_params = _photometric(image1, rng, conf, d)
        params.update(photo_params)
    return HomographyPair(image0=image0, image1=image1, H_0to1=H, name=name, params=_jsonable(params))


def make_pairs(photos: list[Path], n_pairs: int, seed: int = 0, conf: dict | None = None) -> list[HomographyPair]:
    """n_pairs pairs cycling through `photos`; pair i depends only on (seed, i, photo, conf), not on n_pairs."""
    if n_pairs < 0:
        raise ValueError(f"n_pairs must be >= 0, got {n_pairs}")
    if n_pairs and not photos:
        raise ValueError("make_pairs needs at least one photo path")
    conf = _conf(conf)
    cache: dict[int, np.ndarray] = {}
    pairs = []
    for i in range(n_pairs):
        j = i % len(photos)
        if j not in cache:
            cache[j] = load_image(photos[j])
        rng = np.random.default_rng([seed, i])
        pairs.append(make_pair(cache[j], rng, conf, name=f"{i:04d}_{Path(photos[j]).stem}"))
    return pairs


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (np.integer, int)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return float(x)
    return x


def save_pairs(pairs: list[HomographyPair], folder: str | os.PathLike) -> Path:
    """Write pairs as <name>_0.png, <name>_1.png and pairs.json (names, H_0to1 row-major, params); returns folder."""
    folder = Path(folder)
    names = [p.name for p in pairs]
    if len(set(names)) != len(names):
        raise ValueError("save_pairs needs unique pair names (they become file names)")
    folder.mkdir(parents=True, exist_ok=True)
    index = []
    for p in pairs:
        if any(c in p.name for c in "/\\") or not p.name:
            raise ValueError(f"pair name {p.name!r} is not a valid file name")
        files = [f"{p.name}_0.png", f"{p.name}_1.png"]
        for im, fname in zip((p.image0, p.image1), files):
            if not cv2.imwrite(str(folder / fname), cv2.cvtColor(check_image(im), cv2.COLOR_RGB2BGR)):
                raise ValueError(f"could not write {folder / fname}")
        index.append({"name": p.name, "image0": files[0], "image1": files[1],
                      "H_0to1": _jsonable(np.asarray(p.H_0to1, np.float64)), "params": _jsonable(p.params)})
    with open(folder / "pairs.json", "w") as f:
        json.dump({"format": "agnostic_reloc.homography_pairs", "version": 1, "pairs": index}, f, indent=1)
    return folder


def load_pairs(folder: str | os.PathLike) -> list[HomographyPair]:
    """Read pairs written by save_pairs (same order, bit-exact images and H)."""
    folder = Path(folder)
    index_path = folder / "pairs.json"
    if not index_path.is_file():
        raise ValueError(f"{index_path} does not exist: not a folder written by save_pairs")
    with open(index_path) as f:
        data = json.load(f)
    if data.get("version") != 1:
        raise ValueError(f"{index_path} has unsupported version {data.get('version')!r} (expected 1)")
    pairs = []
    for e in data["pairs"]:
        H = np.array(e["H_0to1"], dtype=np.float64)
        if H.shape != (3, 3):
            raise ValueError(f"pair {e['name']} in {index_path} has H_0to1 of shape {H.shape}, expected 3x3")
        pairs.append(HomographyPair(load_image(folder / e["image0"]), load_image(folder / e["image1"]), H,
                                    e["name"], e.get("params", {})))
    return pairs
