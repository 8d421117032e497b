"""A ground-truth 3D room made of textured planar rectangles (real photos + procedural textures).

World frame: metres, z up, floor at z = 0, room centred on the origin (x in [-L/2, L/2], y in [-W/2, W/2]).
Every surface is a rectangle `Plane` with corners [TL, TR, BR, BL] (as seen from its visible side) and an
RGB texture mapped so that texture column s in [0, 1] runs TL->TR and row t in [0, 1] runs TL->BL:
    X(s, t) = c0 + s * e1 + t * e2,   c0 = TL, e1 = TR - TL, e2 = BL - TL.

Content: 4 walls (procedural "terrazzo" background segments) with a row of photo posters 1 cm in front,
a tiled procedural floor, a weakly textured ceiling, two thin pillars between the camera path and the
walls, and boxes in the middle. PERCEPTUAL ALIASING: `n_alias` photos hang twice, on different (preferably
opposite) walls, with slightly different crops and sizes; `Scene.alias_pairs` lists them.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

import cv2
import numpy as np

from agnostic_reloc.conf import merge_conf
from agnostic_reloc.eval.photos import list_photos, photo_dir
from agnostic_reloc.io.image import load_image

default_conf = {
    "length": 8.0,  # room extent along world x (m)
    "width": 6.0,  # room extent along world y (m)
    "height": 2.8,  # floor-to-ceiling (m)
    "posters_long_wall": 4,  # posters on each of the two long (x) walls
    "posters_short_wall": 3,  # posters on each of the two short (y) walls
    "poster_height": (1.0, 1.3),  # poster height range (m); width follows the photo crop's aspect
    "poster_center_z": (1.35, 1.6),  # range of poster centre heights (m)
    "poster_offset": 0.01,  # posters hang this far in front of their wall (m)
    "n_alias": 4,  # photos hung twice (on different walls): perceptual aliasing
    "alias_crop_jitter": 0.08,  # the duplicate's crop is this much smaller (at most, per side) and shifted
    "wall_segment": 2.0,  # walls are split into background segments about this wide (m)
    "floor_tile": 2.0,  # floor tile size (m)
    "pillars": ((1.0, 2.6), (-1.6, -2.6)),  # (x, y) centres of the thin full-height pillars near walls
    "pillar_size": 0.3,  # pillar cross-section (m)
    "boxes": ((-0.8, 0.2, 1.0, 0.8, 1.0), (0.9, -0.3, 0.7, 0.7, 1.6)),  # (x, y, size_x, size_y, height) (m)
    "photo_ppm": 400.0,  # texture resolution of posters and photo-covered box faces (px per metre)
    "procedural_ppm": 200.0,  # texture resolution of procedural surfaces (px per metre)
    "speckle_density": 300.0,  # procedural shapes per square metre on walls and floor
}


@dataclass
class Plane:
    """One textured rectangle.

    Attributes:
        id: index in Scene.planes (also the value in rendered plane-id maps).
        corners: [4 x 3] float64 world-frame corners TL, TR, BR, BL (m), seen from the textured side.
        texture: RGB uint8 [h x w x 3]; column s*w, row t*h (pixel centres at +0.5).
        kind: 'wall', 'poster', 'floor', 'ceiling', 'pillar' or 'box'.
        source: photo file name ('' for procedural textures).
        alias_group: index of the aliasing pair this poster belongs to, -1 if none.
    """

    id: int
    corners: np.ndarray
    texture: np.ndarray
    kind: str
    source: str = ""
    alias_group: int = -1
    _pyramid: list = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    @property
    def origin(self) -> np.ndarray:
        """TL corner [3] (m)."""
        return self.corners[0]

    @property
    def e1(self) -> np.ndarray:
        """TL->TR edge [3] (m): texture s axis."""
        return self.corners[1] - self.corners[0]

    @property
    def e2(self) -> np.ndarray:
        """TL->BL edge [3] (m): texture t axis."""
        return self.corners[3] - self.corners[0]

    @property
    def normal(self) -> np.ndarray:
        """Unit normal [3] pointing to the textured (visible) side."""
        n = np.cross(self.e2, self.e1)
        return n / np.linalg.norm(n)

    @property
    def size_m(self) -> tuple[float, float]:
        """(width, height) in metres."""
        return float(np.linalg.norm(self.e1)), float(np.linalg.norm(self.e2))

    def point(self, s: np.ndarray, t: np.ndarray) -> np.ndarray:
        """World points [N x 3] at texture coordinates s, t in [0, 1]."""
        s = np.asarray(s, np.float64).reshape(-1, 1)
        t = np.asarray(t, np.float64).reshape(-1, 1)
        return self.origin + s * self.e1 + t * self.e2

    def pyramid(self) -> list[np.ndarray]:
        """Texture mip levels (level 0 = texture), halved until the short side is < 16 px."""
        if self._pyramid is None:
            levels = [self.texture]
            while min(levels[-1].shape[:2]) >= 32:
                levels.append(cv2.pyrDown(levels[-1]))
            self._pyramid = levels
        return self._pyramid


@dataclass
class Scene:
    """The room.

    Attributes:
        planes: all rectangles; planes[i].id == i.
        bounds: [2 x 3] float64 min/max corner of the room (m).
        obstacles: [M x 2 x 3] float64 axis-aligned boxes (min, max corners) of pillars and boxes (m).
        alias_pairs: (plane id a, plane id b, photo name) of every photo hung twice.
        seed, conf: what made it.
    """

    planes: list[Plane]
    bounds: np.ndarray
    obstacles: np.ndarray
    alias_pairs: list[tuple[int, int, str]]
    seed: int
    conf: dict

    def inside_free_space(self, p: np.ndarray, margin: float = 0.3) -> bool:
        """True if world point p [3] is in the room, >= margin (m) from walls, floor/ceiling and obstacles."""
        p = np.asarray(p, np.float64)
        lo, hi = self.bounds
        if np.any(p < lo + margin) or np.any(p > hi - margin):
            return False
        for bmin, bmax in self.obstacles:
            if np.all(p > bmin - margin) and np.all(p < bmax + margin):
                return False
        return True


def photo_family(name: str) -> str:
    """Group key of near-duplicate photos (stereo pairs, series): aero1/aero3 -> 'aero', left/right -> 'leftright'."""
    stem = name.rsplit(".", 1)[0]
    if stem in ("left", "right"):
        return "leftright"
    stem = re.sub(r"_(modified|original)$", "", stem)
    return re.sub(r"([0-9]+|[A-Z])$", "", stem) or stem


@functools.lru_cache(maxsize=4)
def _photos(folder: str) -> tuple[tuple[str, np.ndarray], ...]:
    """One photo per family, (name, RGB uint8), sorted by name. `folder` keys the cache only."""
    seen, out = set(), []
    for path in list_photos():
        fam = photo_family(path.name)
        if fam in seen:
            continue
        seen.add(fam)
        out.append((path.name, load_image(path)))
    return tuple(out)


def _rect(center, toward_viewer, up, width: float, height: float) -> np.ndarray:
    """Corners [TL, TR, BR, BL] [4 x 3] of a width x height rectangle facing `toward_viewer`, texture up = `up`."""
    center, n, up = (np.asarray(v, np.float64) for v in (center, toward_viewer, up))
    right = np.cross(-n, up)
    right /= np.linalg.norm(right)
    up = up / np.linalg.norm(up)
    hw, hh = right * width / 2, up * height / 2
    return np.stack([center - hw + hh, center + hw + hh, center + hw - hh, center - hw - hh])


def _crop_box(shape: tuple, aspect: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(x0, y0, w, h) of the largest crop of width/height = aspect at a random place in an image of `shape`."""
    h, w = shape[:2]
    cw, ch = (w, w / aspect) if w / aspect <= h else (h * aspect, h)
    cw, ch = max(1, int(cw)), max(1, int(ch))
    return int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1)), cw, ch


def _jitter_box(box: tuple[int, int, int, int], jitter: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """The crop box shrunk by jitter/2..jitter (same aspect) and shifted at random inside itself."""
    x0, y0, cw, ch = box
    f = 1.0 - rng.uniform(0.5, 1.0) * jitter
    nw, nh = max(1, int(cw * f)), max(1, int(ch * f))
    return x0 + int(rng.integers(0, cw - nw + 1)), y0 + int(rng.integers(0, ch - nh + 1)), nw, nh


def procedural_texture(rng: np.random.Generator, size_m: tuple[float, float], ppm: float,
                       palette: np.ndarray, density: float) -> np.ndarray:
    """Unique 'terrazzo' texture: smooth colour noise plus random sharp shapes. RGB uint8 [h x w x 3].

    Args:
        size_m: (width, height) in metres; ppm: pixels per metre; palette: [P x 3] RGB colours;
        density: shapes per square metre (0 = smooth noise only).
    """
    w, h = max(8, int(round(size_m[0] * ppm))), max(8, int(round(size_m[1] * ppm)))
    base = palette[0].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    img[:] = base
    for cell, amp in ((64, 28.0), (16, 14.0), (4, 6.0)):
        small = rng.normal(0, 1, (max(2, h // cell + 2), max(2, w // cell + 2), 1)).astype(np.float32)
        img += amp * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)[..., None]
    img = np.clip(img, 0, 255).astype(np.uint8)
    n = int(density * size_m[0] * size_m[1])
    rmax = max(3, int(0.03 * ppm))
    colors = np.clip(palette[rng.integers(len(palette), size=n)] + rng.integers(-30, 31, (n, 3)), 0, 255).tolist()
    xs, ys = rng.integers(0, w, n).tolist(), rng.integers(0, h, n).tolist()
    rs = rng.integers(2, rmax, n).tolist()
    kinds = rng.integers(0, 3, n).tolist()
    ext = rng.uniform(0.3, 1.0, (n, 2))
    ang = rng.uniform(0, np.pi, n)
    dx = (2 * np.array(rs) * np.cos(ang)).astype(int).tolist()
    dy = (2 * np.array(rs) * np.sin(ang)).astype(int).tolist()
    ex = (2 * np.array(rs)[:, None] * ext).astype(int).tolist()
    for i in range(n):
        x, y, r, col = xs[i], ys[i], rs[i], colors[i]
        if kinds[i] == 0:
            cv2.circle(img, (x, y), r, col, -1, cv2.LINE_AA)
        elif kinds[i] == 1:
            cv2.rectangle(img, (x, y), (x + ex[i][0] + 1, y + ex[i][1] + 1), col, -1)
        else:
            cv2.line(img, (x, y), (x + dx[i], y + dy[i]), col, max(1, r // 3), cv2.LINE_AA)
    return cv2.GaussianBlur(img, (0, 0), 0.6)


PALETTES = {
    "wall": np.array([[200, 195, 185], [120, 110, 100], [90, 95, 110], [160, 110, 90], [235, 230, 220]]),
    "floor": np.array([[120, 90, 60], [70, 50, 35], [160, 130, 90], [40, 40, 40], [200, 180, 150]]),
    "ceiling": np.array([[225, 225, 220], [200, 200, 195]]),
    "box": np.array([[150, 160, 120], [60, 80, 40], [200, 200, 170], [30, 30, 30], [220, 120, 40]]),
}


def make_scene(seed: int = 0, conf: dict | None = None) -> Scene:
    """Build the room deterministically from `seed` (raises PhotosMissing without the photo folder)."""
    c = merge_conf(default_conf, conf, "scene conf keys")
    if c["n_alias"] < 0:
        raise ValueError(f"n_alias must be >= 0, got {c['n_alias']}")
    if min(c["length"], c["width"], c["height"]) <= 0:
        raise ValueError("room length, width and height must be positive")
    rng = np.random.default_rng(seed)
    photos = list(_photos(str(photo_dir())))
    order = rng.permutation(len(photos))
    photos = [photos[i] for i in order]
    L, W, H = float(c["length"]), float(c["width"]), float(c["height"])
    up = np.array([0.0, 0.0, 1.0])
    planes: list[Plane] = []

    def add(corners, texture, kind, source="", alias=-1) -> int:
        planes.append(Plane(len(planes), np.asarray(corners, np.float64), np.ascontiguousarray(texture),
                            kind, source, alias))
        return len(planes) - 1

    # Walls: (centre of the wall line, inward normal, length, posters).
    walls = [
        (np.array([0.0, W / 2]), np.array([0.0, -1.0]), L, c["posters_long_wall"]),  # north
        (np.array([L / 2, 0.0]), np.array([-1.0, 0.0]), W, c["posters_short_wall"]),  # east
        (np.array([0.0, -W / 2]), np.array([0.0, 1.0]), L, c["posters_long_wall"]),  # south
        (np.array([-L / 2, 0.0]), np.array([1.0, 0.0]), W, c["posters_short_wall"]),  # west
    ]
    for centre, n_in, length, _ in walls:
        n3 = np.array([n_in[0], n_in[1], 0.0])
        right = np.cross(-n3, up)
        nseg = max(1, int(round(length / c["wall_segment"])))
        seg = length / nseg
        for k in range(nseg):
            cxy = np.array([centre[0], centre[1], H / 2]) + right * (-length / 2 + seg * (k + 0.5))
            tex = procedural_texture(rng, (seg, H), c["procedural_ppm"], PALETTES["wall"], c["speckle_density"])
            add(_rect(cxy, n3, up, seg, H), tex, "wall")

    # Poster slots, then the photo for each slot (aliasing pairs on different walls first).
    slots = []  # (wall index, centre [3], normal [3], max width, height)
    for wi, (centre, n_in, length, n_posters) in enumerate(walls):
        n3 = np.array([n_in[0], n_in[1], 0.0])
        right = np.cross(-n3, up)
        slot_w = length / max(1, n_posters)
        for k in range(n_posters):
            along = -length / 2 + slot_w * (k + 0.5) + rng.uniform(-0.1, 0.1) * slot_w
            z = rng.uniform(*c["poster_center_z"])
            hgt = rng.uniform(*c["poster_height"])
            p = np.array([centre[0], centre[1], z]) + right * along + n3 * c["poster_offset"]
            slots.append((wi, p, n3, 0.8 * slot_w, hgt))
    n_alias = min(int(c["n_alias"]), len(slots) // 2)
    assigned: list[tuple[int, int, float]] = [(-1, -1, 0.0)] * len(slots)  # (photo index, alias group, crop shrink)
    free = list(rng.permutation(len(slots)))
    photo_i = 0
    for g in range(n_alias):
        a = free.pop(0)
        # Prefer the opposite wall, then any other wall.
        opposite = (slots[a][0] + 2) % 4
        cands = ([s for s in free if slots[s][0] == opposite]
                 or [s for s in free if slots[s][0] != slots[a][0]] or free)
        b = cands[0]
        free.remove(b)
        assigned[a] = (photo_i % len(photos), g, 0.0)
        assigned[b] = (photo_i % len(photos), g, c["alias_crop_jitter"])
        photo_i += 1
    for s in sorted(free):
        assigned[s] = (photo_i % len(photos), -1, 0.0)
        photo_i += 1
    alias_members: dict[int, list[int]] = {}
    alias_boxes: dict[int, tuple] = {}
    for (wi, p, n3, max_w, hgt), (pi, group, jitter) in zip(slots, assigned):
        name, photo = photos[pi]
        if group >= 0 and group in alias_boxes:
            # The duplicate: a slightly different crop of the same photo, slightly different size.
            first_box, first_h = alias_boxes[group]
            box = _jitter_box(first_box, jitter, rng)
            hgt = first_h * rng.uniform(0.9, 1.1)
        else:
            aspect = photo.shape[1] / photo.shape[0]
            box = _crop_box(photo.shape, min(max_w, hgt * aspect) / hgt, rng)
            if group >= 0:
                alias_boxes[group] = (box, hgt)
        x0, y0, cw, ch = box
        crop = photo[y0:y0 + ch, x0:x0 + cw]
        width = hgt * cw / ch
        size_px = (int(round(width * c["photo_ppm"])), int(round(hgt * c["photo_ppm"])))
        tex = cv2.resize(crop, size_px, interpolation=cv2.INTER_AREA if cw > size_px[0] else cv2.INTER_LINEAR)
        pid = add(_rect(p, n3, up, width, hgt), tex, "poster", name, group)
        if group >= 0:
            alias_members.setdefault(group, []).append(pid)
    alias_pairs = [(m[0], m[1], planes[m[0]].source) for g, m in sorted(alias_members.items())]

    # Floor tiles and ceiling.
    nx, ny = max(1, int(round(L / c["floor_tile"]))), max(1, int(round(W / c["floor_tile"])))
    tx, ty = L / nx, W / ny
    for i in range(nx):
        for j in range(ny):
            cxy = np.array([-L / 2 + tx * (i + 0.5), -W / 2 + ty * (j + 0.5), 0.0])
            tex = procedural_texture(rng, (tx, ty), c["procedural_ppm"], PALETTES["floor"], c["speckle_density"])
            add(_rect(cxy, up, [0, 1, 0], tx, ty), tex, "floor")
    tex = procedural_texture(rng, (L, W), c["procedural_ppm"] / 4, PALETTES["ceiling"], 2.0)
    add(_rect([0, 0, H], -up, [0, 1, 0], L, W), tex, "ceiling")

    # Obstacles: full-height pillars and boxes; side faces get photos while unused ones remain, else procedural.
    obstacles = []
    solids = [(x, y, c["pillar_size"], c["pillar_size"], H, "pillar") for x, y in c["pillars"]]
    solids += [(x, y, sx, sy, h, "box") for x, y, sx, sy, h in c["boxes"]]
    for x, y, sx, sy, h, kind in solids:
        obstacles.append([[x - sx / 2, y - sy / 2, 0.0], [x + sx / 2, y + sy / 2, h]])
        faces = [([1, 0, 0], sy), ([-1, 0, 0], sy), ([0, 1, 0], sx), ([0, -1, 0], sx)]
        for n, fw in faces:
            n = np.array(n, np.float64)
            half = sx / 2 if n[0] else sy / 2
            centre = np.array([x, y, h / 2]) + n * half
            if kind == "box" and photo_i < len(photos):
                name, photo = photos[photo_i]
                photo_i += 1
                x0, y0, cw, ch = _crop_box(photo.shape, fw / h, rng)
                crop = photo[y0:y0 + ch, x0:x0 + cw]
                tex = cv2.resize(crop, (int(round(fw * c["photo_ppm"])), int(round(h * c["photo_ppm"]))),
                                 interpolation=cv2.INTER_AREA)
                add(_rect(centre, n, up, fw, h), tex, kind, name)
            else:
                tex = procedural_texture(rng, (fw, h), c["procedural_ppm"], PALETTES["box"], c["speckle_density"])
                add(_rect(centre, n, up, fw, h), tex, kind)
        if h < H:
            tex = procedural_texture(rng, (sx, sy), c["procedural_ppm"], PALETTES["box"], c["speckle_density"])
            add(_rect([x, y, h], up, [0, 1, 0], sx, sy), tex, kind)
    bounds = np.array([[-L / 2, -W / 2, 0.0], [L / 2, W / 2, H]])
    return Scene(planes, bounds, np.asarray(obstacles, np.float64).reshape(-1, 2, 3), alias_pairs, int(seed), c)
