"""TUM trajectory files (`stamp tx ty tz qx qy qz qw`, T_world_cam) and their alignment to event stamps."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np


def tum_row(stamp: float, T: np.ndarray) -> str:
    """One TUM row `stamp tx ty tz qx qy qz qw` of a pose T [4 x 4] (no newline; read back by `load_tum`)."""
    from scipy.spatial.transform import Rotation

    q = Rotation.from_matrix(np.asarray(T)[:3, :3]).as_quat()  # x, y, z, w
    return " ".join(repr(float(v)) for v in [stamp, *np.asarray(T)[:3, 3], *q])


def load_tum(path: str | os.PathLike) -> dict[float, np.ndarray]:
    """TUM trajectory (`stamp tx ty tz qx qy qz qw` rows, # comments) -> stamp (s) -> 4x4 T_world_cam."""
    from .contract import pose_to_T

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"ground-truth file {path} does not exist")
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            v = [float(x) for x in line.replace(",", " ").split()]
            if len(v) != 8:
                raise ValueError(f"{len(v)} values, expected 8 (stamp tx ty tz qx qy qz qw)")
            out[v[0]] = pose_to_T(v[1:4], v[4:8])
        except ValueError as exc:
            raise ValueError(f"{path}:{n}: not a TUM row: {exc}") from None
    if not out:
        raise ValueError(f"ground-truth file {path} holds no poses")
    return out


def align_gt(gt: dict[float, np.ndarray], stamps: Iterable[float], max_dt: float) -> dict[float, np.ndarray]:
    """GT at each of `stamps`: the pose of the nearest GT stamp within max_dt s (stamps without one left out)."""
    gs = np.array(sorted(gt), np.float64)
    out = {}
    if not gs.size:
        return out
    for s in stamps:
        k = int(np.searchsorted(gs, s))
        best = min((j for j in (k - 1, k) if 0 <= j < len(gs)), key=lambda j: abs(gs[j] - s))
        if abs(gs[best] - s) <= max_dt:
            out[s] = gt[float(gs[best])]
    return out
