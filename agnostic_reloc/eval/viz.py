"""Visualisation: match images and bar charts written as PNG files (no display needed)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from agnostic_reloc.io.image import check_image

GAP = 10  # px of white between the two images in draw_matches
BAR_HEIGHT = 36  # px of the colour-bar strip under the images (plus the title strip when a title is given)
TITLE_HEIGHT = 28  # px


def _colormap(name: str):
    import matplotlib  # colormaps need no backend

    return matplotlib.colormaps[name]


def draw_matches(image0: np.ndarray, image1: np.ndarray, kpts0: np.ndarray, kpts1: np.ndarray,
                 matches: np.ndarray, scores: np.ndarray | None, path: str | os.PathLike, title: str = "",
                 cmap: str = "turbo") -> Path:
    """Write `render_matches(...)` as a PNG to `path`; returns the path."""
    bgr = cv2.cvtColor(render_matches(image0, image1, kpts0, kpts1, matches, scores, title, cmap), cv2.COLOR_RGB2BGR)
    path = Path(path)
    if path.parent and not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), bgr):
        raise ValueError(f"could not write {path} (is the suffix .png?)")
    return path


def render_matches(image0: np.ndarray, image1: np.ndarray, kpts0: np.ndarray, kpts1: np.ndarray,
                   matches: np.ndarray, scores: np.ndarray | None, title: str = "", cmap: str = "turbo") -> np.ndarray:
    """RGB uint8 image of image0 | image1 (top-aligned, white padding) with match lines coloured by score.

    kpts0 [N0 x 2], kpts1 [N1 x 2] (x, y) px in their own image; matches [M x 2] int indices; scores [M]
    (None = all 1). Colour scale is [0, 1] when the scores lie in it, else [min, max]; best matches are drawn
    on top. Output size: (GAP + W0 + W1) wide, max(H0, H1) + BAR_HEIGHT (+ TITLE_HEIGHT if title) high.
    """
    im0, im1 = check_image(image0), check_image(image1)
    kpts0 = np.asarray(kpts0, dtype=np.float64).reshape(-1, 2)
    kpts1 = np.asarray(kpts1, dtype=np.float64).reshape(-1, 2)
    matches = np.asarray(matches).reshape(-1, 2) if np.size(matches) else np.zeros((0, 2), int)
    if matches.size and (not np.issubdtype(matches.dtype, np.integer) or matches.min() < 0
                         or matches[:, 0].max() >= len(kpts0) or matches[:, 1].max() >= len(kpts1)):
        raise ValueError(f"matches must be integer (index0, index1) pairs within {len(kpts0)} kpts0 and "
                         f"{len(kpts1)} kpts1")
    scores = np.ones(len(matches)) if scores is None else np.asarray(scores, dtype=np.float64).ravel()
    if len(scores) != len(matches):
        raise ValueError(f"scores has {len(scores)} values for {len(matches)} matches")

    (h0, w0), (h1, w1) = im0.shape[:2], im1.shape[:2]
    top = TITLE_HEIGHT if title else 0
    H, W = top + max(h0, h1) + BAR_HEIGHT, w0 + GAP + w1
    canvas = np.full((H, W, 3), 255, np.uint8)
    canvas[top:top + h0, :w0] = im0
    canvas[top:top + h1, w0 + GAP:] = im1
    bgr = cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)
    off1 = np.array([w0 + GAP, top], float)
    off0 = np.array([0.0, top])

    finite = scores[np.isfinite(scores)]
    lo, hi = (0.0, 1.0) if finite.size == 0 or (finite.min() >= 0 and finite.max() <= 1) else (finite.min(),
                                                                                                finite.max())
    norm = np.clip((np.nan_to_num(scores, nan=lo) - lo) / max(hi - lo, 1e-12), 0, 1)
    cm = _colormap(cmap)
    colors = (np.asarray(cm(norm))[:, :3] * 255).astype(int) if len(norm) else np.zeros((0, 3), int)

    shift = 4  # fixed-point sub-pixel drawing
    def pt(p):
        return tuple(int(round(c * (1 << shift))) for c in p)

    for p in kpts0:
        cv2.circle(bgr, pt(p + off0), 2 << shift, (40, 40, 40), -1, cv2.LINE_AA, shift)
    for p in kpts1:
        cv2.circle(bgr, pt(p + off1), 2 << shift, (40, 40, 40), -1, cv2.LINE_AA, shift)
    for k in np.argsort(norm, kind="stable"):
        i, j = matches[k]
        r, g, b = colors[k]
        cv2.line(bgr, pt(kpts0[i] + off0), pt(kpts1[j] + off1), (int(b), int(g), int(r)), 1, cv2.LINE_AA, shift)
        cv2.circle(bgr, pt(kpts0[i] + off0), 2 << shift, (int(b), int(g), int(r)), -1, cv2.LINE_AA, shift)
        cv2.circle(bgr, pt(kpts1[j] + off1), 2 << shift, (int(b), int(g), int(r)), -1, cv2.LINE_AA, shift)

    # colour bar: gradient strip with its range and the match count
    y0 = top + max(h0, h1) + 8
    bar_w = min(300, W - 200) if W > 260 else W // 2
    x0 = 60
    ramp = (np.asarray(cm(np.linspace(0, 1, max(bar_w, 1))))[:, :3] * 255).astype(np.uint8)[:, ::-1]
    bgr[y0:y0 + 12, x0:x0 + bar_w] = ramp[None]
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(bgr, f"{lo:.2g}", (4, y0 + 11), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(bgr, f"{hi:.2g} score   {len(matches)} matches", (x0 + bar_w + 6, y0 + 11), font, 0.4,
                (0, 0, 0), 1, cv2.LINE_AA)
    if title:
        cv2.putText(bgr, title, (6, 20), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def plot_bars(table: dict[str, dict[str, float]], path: str | os.PathLike, title: str = "",
              ylabel: str = "") -> Path:
    """Grouped bar chart PNG: one group per column key (e.g. "AUC@5px"), one bar per method (row key).

    table maps method -> {column: value}; columns appear in first-seen order, missing values are left out.
    Returns the path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: leaves the global backend alone

    if not table:
        raise ValueError("plot_bars needs a non-empty table {method: {column: value}}")
    methods = list(table)
    columns = list(dict.fromkeys(c for m in methods for c in table[m]))
    if not columns:
        raise ValueError("plot_bars table has no values")
    fig = Figure(figsize=(max(6.0, 1.2 * len(columns) * max(1, len(methods)) / 2 + 2), 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(methods)
    x = np.arange(len(columns))
    for k, m in enumerate(methods):
        vals = [table[m].get(c, np.nan) for c in columns]
        bars = ax.bar(x - 0.4 + width * (k + 0.5), vals, width, label=m)
        ax.bar_label(bars, labels=["" if not np.isfinite(v) else f"{v:.1f}" for v in vals], fontsize=7, padding=1)
    ax.set_xticks(x, columns)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
