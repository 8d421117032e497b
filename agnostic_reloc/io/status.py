"""The node's one-line status (ROS-free, so it is tested without a node): what the engine has done so far.

    status: 51 keyframes in map | backlog 2 keyframes, 0 to verify, 0 queries | loops 3 accepted, 120 refused
    (most: too few inliers x80) | relocalization 4 ok, 1 failed | cpu, aliked openvino, matcher openvino |
    keyframe p50 3400 ms

`reloc_node` logs it every `status_period_s` seconds (0: never). The refusal reasons are the engine's
(`loop.acceptance.LoopAcceptance.refused`): "no loop found" in a run is answered by the commonest one.
"""

from __future__ import annotations

from collections.abc import Mapping


def status_line(map_keyframes: int, depths: Mapping[str, int], counts: Mapping[str, int],
                refused: Mapping[str, int], device: str, backends: Mapping[str, str],
                latency_ms: Mapping[str, Mapping[str, float]]) -> str:
    """One line saying what the node is doing.

    Args:
        map_keyframes: keyframes in the map.
        depths: worker queue depths {"keyframes", "verify", "queries"} (`EngineWorker.depths()`).
        counts: worker counts {"loops", "relocalized", "not_relocalized", ...} (`EngineWorker.counts`).
        refused: loop refusals by reason (`LoopAcceptance.refused`).
        device: torch device of the networks ("cpu", "cuda:0").
        backends: runtime per network, e.g. {"aliked": "openvino", "matcher": "torch"}.
        latency_ms: per-stage percentiles in ms {"keyframe": {"p50", ...}} (`EngineWorker.latency()`);
            stages without a sample yet are absent.
    """
    n_refused = sum(refused.values())
    loops = f"loops {counts.get('loops', 0)} accepted, {n_refused} refused"
    if n_refused:
        reason, n = max(refused.items(), key=lambda kv: (kv[1], kv[0]))  # ties: a stable choice
        loops += f" (most: {reason} x{n})"
    p50 = latency_ms.get("keyframe", {}).get("p50")
    parts = [
        f"{map_keyframes} keyframes in map",
        (f"backlog {depths.get('keyframes', 0)} keyframes, {depths.get('verify', 0)} to verify, "
         f"{depths.get('queries', 0)} queries"),
        loops,
        f"relocalization {counts.get('relocalized', 0)} ok, {counts.get('not_relocalized', 0)} failed",
        ", ".join([device, *(f"{k} {v}" for k, v in backends.items())]),
        f"keyframe p50 {p50:.0f} ms" if p50 is not None else "keyframe p50 -",
    ]
    return "status: " + " | ".join(parts)
