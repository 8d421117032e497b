"""results.json of a run (replay, bridge, demo): JSON-safe conversion, the stable key layout, output folders.

Format (README, "results.json"): `loop_closures`, `relocalizations`, `failed_relocalizations`, `timing_ms`,
`metrics` (with ground truth), plus the input counters of the bag adapter.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..eval.metrics import percentiles
from ..types import RunResult

if TYPE_CHECKING:
    from .bag_events import BagEvents


RESULT_KEYS = ("loop_closures", "relocalizations", "failed_relocalizations", "timing_ms", "metrics")


# ---------------------------------------------------------------------------- results
def _T(T: np.ndarray | None) -> list | None:
    return None if T is None else np.asarray(T, np.float64).round(9).tolist()


def to_jsonable(x: Any) -> Any:
    """JSON-safe: numpy -> Python, NaN / inf -> None (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return to_jsonable(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer, int)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    return x


def dump_json(obj: Any) -> str:
    """Strict JSON, indented, with lists of numbers (matrix rows, curves) kept on one line."""
    import re

    text = json.dumps(obj, indent=1, allow_nan=False)
    return re.sub(r"\[\s+([^\[\]{}\"]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)


def run_results(result: RunResult, src: BagEvents | None = None) -> dict:
    """The stable part of results.json (everything but metrics) from a run."""
    out = {
        "loop_closures": [{"query_stamp": lc.query_stamp, "match_stamp": lc.match_stamp,
                           "T_match_query": _T(lc.T_match_query), "inliers": int(lc.inliers),
                           "score": float(lc.score), "metric": bool(lc.metric)} for lc in result.loops],
        "relocalizations": [{"stamp": r.stamp, "T_map_cam": _T(r.T_map_cam), "inliers": int(r.inliers),
                             "matched_keyframe_stamps": [result.keyframes[k][0] for k in r.matched_keyframes
                                                         if k in result.keyframes], "support": r.support}
                            for r in result.relocalizations if r.success],
        "failed_relocalizations": [{"stamp": r.stamp, "reason": r.reason} for r in result.relocalizations
                                   if not r.success],
        "timing_ms": {k: percentiles(v) for k, v in result.timing_ms.items() if len(v)},
        "metrics": {},
    }
    rejected = [] if src is None else list(src.rejected)
    rejected += [{"stamp": s, "kind": "engine", "reason": r} for s, r in result.rejected]
    out["rejected_messages"] = rejected
    out["rejected_counts"] = dict(Counter(r["kind"] for r in rejected))
    out["counts"] = {"keyframes": len(result.keyframes), "queries": len(result.relocalizations),
                     "loops": len(result.loops)}
    if src is not None:
        out["counts"]["messages"] = dict(src.counts)
        out["counts"]["sync_unpaired"] = {"keyframe_sync": src.kf_sync.dropped, "frame_sync": src.fr_sync.dropped}
    return out


def check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
