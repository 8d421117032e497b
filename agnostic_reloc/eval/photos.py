"""Real photos for tests, benchmarks and training: Debian's opencv-doc sample images.

The photos live in PHOTO_DIR (``apt-get install opencv-doc``); set the env var
AGNOSTIC_RELOC_PHOTOS to use another folder of images instead.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import cv2
import numpy as np

from agnostic_reloc.io.image import load_image

PHOTO_DIR = "/usr/share/doc/opencv-doc/examples/data"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# Files in opencv-doc that are not natural photos (drawings, logos, renders, text, ground-truth maps) or are
# near-duplicate series that would dominate a dataset (the 26 chessboard calibration shots). fnmatch patterns.
DEFAULT_EXCLUDE = (
    "chessboard.png", "gradient.png", "digits.png", "sudoku.png", "notes.png", "ml.png", "cards.png",
    "detect_blob.png", "ellipses.jpg", "mask.png", "templ.png", "tmpl.png", "pic[1-6].png",
    "*logo*", "LinuxLogo.jpg", "WindowsLogo.jpg", "imageText*.png", "text_*.jpg", "aloeGT.png",
    "Blender_Suzanne*.jpg", "blox.jpg", "pca_test1.jpg", "left[0-9][0-9].jpg", "right[0-9][0-9].jpg",
)

MIN_TEXTURE = 6.0  # mean |Laplacian| of the gray image resized to 256x256 (grey levels); below = flat/blurred
MIN_CONTRAST = 20.0  # std of the gray image (grey levels); below = washed out


class PhotosMissing(RuntimeError):
    """The real-photo folder (or a file in it) is not on this machine."""


def photo_dir() -> Path:
    """The photo folder: $AGNOSTIC_RELOC_PHOTOS if set, else PHOTO_DIR."""
    return Path(os.environ.get("AGNOSTIC_RELOC_PHOTOS") or PHOTO_DIR)


def _missing(what: str) -> PhotosMissing:
    return PhotosMissing(
        f"{what} not found in {photo_dir()}: run `apt-get install opencv-doc` "
        f"(or point AGNOSTIC_RELOC_PHOTOS at a folder of photos)")


def texture_stats(image: np.ndarray) -> tuple[float, float]:
    """(texture, contrast) of an RGB uint8 [H x W x 3] image: mean |Laplacian| at 256x256 and gray std."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(gray, (256, 256), interpolation=cv2.INTER_AREA).astype(np.float64)
    return float(np.abs(cv2.Laplacian(small, cv2.CV_64F)).mean()), float(gray.std())


def list_photos(min_side: int = 300, exclude: tuple = DEFAULT_EXCLUDE) -> list[Path]:
    """Sorted paths of natural, textured photos in the photo folder.

    Keeps images whose shorter side >= min_side px, whose name matches none of the fnmatch patterns in
    `exclude`, and that pass a texture check (MIN_TEXTURE, MIN_CONTRAST). Raises PhotosMissing if the
    folder is absent or nothing qualifies.
    """
    if min_side < 1:
        raise ValueError(f"min_side must be >= 1 px, got {min_side}")
    folder = photo_dir()
    if not folder.is_dir():
        raise _missing("photo folder")
    out = []
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if any(fnmatch.fnmatchcase(path.name, pat) for pat in exclude):
            continue
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None or min(img.shape[:2]) < min_side:
            continue
        texture, contrast = texture_stats(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
        if texture < MIN_TEXTURE or contrast < MIN_CONTRAST:
            continue
        out.append(path)
    if not out:
        raise _missing(f"no photo with min side >= {min_side} px")
    return out


def _read_homography(path: Path) -> np.ndarray:
    """3x3 float64 from an OpenCV FileStorage file (first matrix node) or a plain-text 3x3."""
    H = None
    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    try:
        if fs.isOpened():
            root = fs.root()
            for key in root.keys():
                node = root.getNode(key)
                if node.isMap():
                    H = node.mat()
                    break
    finally:
        fs.release()
    if H is None:
        H = np.loadtxt(path)
    H = np.asarray(H, dtype=np.float64)
    if H.shape != (3, 3) or not np.all(np.isfinite(H)) or H[2, 2] == 0:
        raise ValueError(f"{path} does not hold a finite 3x3 homography (got shape {H.shape})")
    return H / H[2, 2]


def oxford_graf() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Oxford 'graffiti' pair: (img1, img3) RGB uint8 [640 x 800 x 3] and H_1to3 (3x3, graf1 px -> graf3 px)."""
    folder = photo_dir()
    paths = [folder / n for n in ("graf1.png", "graf3.png", "H1to3p.xml")]
    for p in paths:
        if not p.is_file():
            raise _missing(p.name)
    return load_image(paths[0]), load_image(paths[1]), _read_homography(paths[2])
