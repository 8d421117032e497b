"""`agnostic-reloc demo`: two sessions of one world, each matcher mode, a report that separates them.

One world sequence (the mixed world at 640x480, `make_bag(split=True)`) is cut into two rosbag2 bags that a
robot could have recorded on two occasions:
- session 1, day (`bags/laps`): the mapping lap in daylight and a revisit lap from another viewpoint during
  which the lights go out: its first half is the easy revisit (the world's darker lap-2 lighting), its second
  half the hard one (night: dark, noisy, motion-blurred); replayed from an empty map, its loops are judged per
  half and its map is saved at the end (`replay(map_out=...)`);
- session 2, night (`bags/kidnapped`): kidnapped frames (tracking LOST) lit by the night levels of
  `world.NIGHT_LIGHTING`, replayed with session 1's map loaded (`replay(map_in=...)`): relocalization against a
  map saved by one run and loaded by another, judged with the whole sequence's ground truth
  (`bags/ground_truth.txt`).
Each mode (`loop.engine.PRESETS`: learned = ALIKED + LightGlue, classic = ORB + Hamming NN) builds its own map
in session 1 and relocalizes against it in session 2. `report.md` puts the segments (easy revisit, night
revisit, night relocalization) side by side, `segments.png` shows them as bars.

Why 640x480: at the small world's 320x240 the night revisit defeats both matchers alike (loop recall 0.10 vs
0.00 at 320x240, 0.53 vs 0.08 at 640x480, seed 4, README "demo").
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from ..conf import deep_update
from ..io.results import check_out_dir, dump_json, to_jsonable
from ..loop.engine import PRESETS, preset_conf
from .replay import Replay, replay

logger = logging.getLogger(__name__)

DEMO_MODES = ("learned", "classic")  # engine presets (loop.engine.PRESETS), side by side
SESSIONS = {  # session -> (bag of make_bag(split=True), what it holds)
    "day": ("laps", "mapping lap + lap-2 revisit, map saved"),
    "night": ("kidnapped", "kidnapped frames at night, session 1's map loaded"),
}
MAP_FILE = "map.agrl"  # each mode's session-1 map, in out/<mode>/
# the demo's world: with it the night revisit separated the modes on 2026-12-04 (README: numbers, seeds)
DEMO_SEED = 4
SEGMENT_LEN = 3  # frames per kidnapped segment
NIGHT_FROM = 0.5  # the lights go out halfway through the revisit lap (trajectory conf lap2_night_from)
REVISITS = {  # session 1's revisit lap in two parts: key -> (name, what it is)
    "easy": ("easy revisit", "lap 2, first half: evening light"),
    "night": ("night revisit", "lap 2, second half: lights out, noise, 9 px blur"),
}
RELOC_THRESHOLD = "0.5m_5deg"  # a relocalization within this of the ground truth is a success (eval.loops keys)
WRONG_THRESHOLD = "5m_10deg"  # a published relocalization beyond this is a wrong pose (benchmarks/night_reloc.py)


def demo_world() -> dict:
    """World conf overrides of the demo (640x480 world): a revisit lap whose second half is at night, kidnapped
    segments lit at night."""
    from ..world import NIGHT_LIGHTING

    return {"trajectory": {
        # the revisit's viewpoint change: level 1 of benchmarks/world_difficulty.py (0.5-0.9 m, +-25 deg, 0.3 m up)
        "lap2_offset": (0.5, 0.9), "lap2_yaw_deg": 25.0, "lap2_dz": 0.3,
        "lap2_night_from": NIGHT_FROM,  # then the lights go out: the darkest night level (its level 5)
        "lap2_night_lighting": dict(NIGHT_LIGHTING[-1]),
        "kidnap_night": NIGHT_LIGHTING,  # night lighting levels 1-3 cycled over the kidnapped segments
        "kidnap_segments": 2 * len(NIGHT_LIGHTING),  # each night level twice
        "kidnap_segment_len": SEGMENT_LEN,  # 18 night queries in all
    }}


def per_level(night: dict) -> list[tuple[int, int]]:
    """(relocalized, queries) per night level (world.NIGHT_LIGHTING order) from session 2's results.json: the
    kidnapped segments come in stamp order and take the levels in turn (world/trajectory.py, kidnap_night)."""
    from ..world import NIGHT_LIGHTING

    done = {r["stamp"] for r in night["relocalizations"]}
    stamps = sorted(done | {r["stamp"] for r in night["failed_relocalizations"]})
    out = [[0, 0] for _ in NIGHT_LIGHTING]
    for rank, s in enumerate(stamps):
        level = out[(rank // SEGMENT_LEN) % len(NIGHT_LIGHTING)]
        level[0] += s in done
        level[1] += 1
    return [tuple(x) for x in out]


def revisit_parts(day: Replay, laps: list[dict], night_from: float = NIGHT_FROM) -> dict[str, dict]:
    """Loop metrics of session 1 per part of its revisit lap (REVISITS): its keyframes before and after the
    lights go out. laps: make_bag's per-lap stamps (the revisit lap is the second). Each part: keyframes,
    n_loops / n_true / n_false of loops queried from it, n_revisit_queries (keyframes with a strict revisit),
    recall and recall_at_100p over them (eval.loops.evaluate_loops(queries=...)). {} without ground truth."""
    from ..eval.loops import evaluate_loops
    from ..eval.runs import loop_records
    from ..world.trajectory import night_from_index

    if day.plot is None or len(laps) < 2:
        return {}
    lap2 = laps[1]
    dt = (lap2["last_stamp"] - lap2["first_stamp"]) / max(lap2["frames"] - 1, 1)
    start = lap2["first_stamp"] - dt / 2
    dark = lap2["first_stamp"] + (night_from_index(lap2["frames"], night_from) - 0.5) * dt
    stamps = {k: s for k, (s, _) in day.run.keyframes.items()}
    gt = day.plot["aligned"]
    gt_kf = {k: gt[s] for k, s in stamps.items() if s in gt}
    parts = {"easy": {k for k, s in stamps.items() if start <= s < dark},
             "night": {k for k, s in stamps.items() if s >= dark}}
    out = {}
    for name, ids in parts.items():
        m = evaluate_loops(loop_records(day.run), gt_kf, stamps, {"missing_gt": "skip"}, queries=ids)
        out[name] = {"keyframes": len(ids), **{k: m[k] for k in ("n_loops", "n_true", "n_false", "n_revisit_queries",
                                                                 "recall", "recall_at_100p")}}
    return out


def run_demo(out: str | os.PathLike = "demo_out", frames: int | None = None, seed: int = DEMO_SEED,
             progress: bool = True, device: str = "auto", engine_conf: dict | None = None
             ) -> dict[str, dict[str, dict]]:
    """World bags -> session 1 (day, map saved) and session 2 (night, map loaded) per mode -> report.md.

    Writes out/bags/{laps,kidnapped,ground_truth.txt} (bags of an earlier demo are replaced), per mode
    out/<mode>/map.agrl (session 1's map) and out/<mode>/{day,night}/ (results.json, plots, report.md), and
    out/report.md with out/segments.png. frames: total frames of the sequence (None: the mixed profile's).
    engine_conf: engine options for both modes (e.g. {"features": {"sampling": "full"}}: faster; the preset's
    matcher wins).
    Returns {mode: {session: results.json content}}.
    """
    from ..io.bags import GROUND_TRUTH_FILE, make_bag

    out = Path(out)
    check_out_dir(out)
    bags = out / "bags"
    if bags.exists():
        if not all((bags / b / "metadata.yaml").is_file() for b, _ in SESSIONS.values()):
            raise ValueError(f"{bags} exists and is not the demo's bags folder; move it away or choose another --out")
        shutil.rmtree(bags)
    t0 = time.perf_counter()
    info = make_bag(bags, seed=seed, frames=frames, profile="mixed", progress=progress, conf=demo_world(),
                    split=True)
    timings = {"bags": time.perf_counter() - t0}
    for session, (name, what) in SESSIONS.items():
        b = info["bags"][name]
        print(f"session {session} ({what}): {b['path']}: {b['frames']} frames, {b['keyframes']} keyframes, "
              f"{b['queries']} lost frames")
    gt_file = bags / GROUND_TRUTH_FILE
    runs: dict[str, dict[str, dict]] = {}
    parts: dict[str, tuple[dict, dict[str, str], str]] = {}
    for mode in DEMO_MODES:
        # the preset names the matcher, whatever engine_conf says
        conf = deep_update(preset_conf(mode, deep_update(engine_conf or {}, {"device": device})), PRESETS[mode])
        map_file = out / mode / MAP_FILE
        map_file.parent.mkdir(exist_ok=True)
        if map_file.exists():
            map_file.unlink()  # an earlier demo's map: session 1 starts from an empty map
        t = time.perf_counter()
        day = replay(bags / SESSIONS["day"][0], out / mode / "day", conf, progress=progress, map_out=map_file)
        timings[f"{mode} day"] = time.perf_counter() - t
        if day.results["map"]["saved"] is None:
            raise ValueError(f"{mode}: session 1 inserted no keyframe, so there is no map for session 2")
        if "metrics" in day.results and day.results["metrics"]:
            day.results["metrics"]["revisit_parts"] = to_jsonable(revisit_parts(day, info["laps"]))
            (out / mode / "day" / "results.json").write_text(dump_json(day.results))
        t = time.perf_counter()
        night = replay(bags / SESSIONS["night"][0], out / mode / "night", conf, gt_file=gt_file,
                       progress=progress, map_in=map_file)
        timings[f"{mode} night"] = time.perf_counter() - t
        runs[mode] = {"day": day.results, "night": night.results}
        parts[f"{mode}, day"] = (day.results, day.plots, f"{mode}/day")
        parts[f"{mode}, night"] = (night.results, night.plots, f"{mode}/night")
    timings["total"] = time.perf_counter() - t0
    _write_demo_report(out, runs, parts, info, seed, timings)
    return runs


# ---------------------------------------------------------------------------- the side-by-side report
def _threshold(key: str, join: str = " / ") -> str:
    """'0.5m_5deg' -> '0.5 m / 5 deg'."""
    m, d = key.split("m_")
    return f"{m} m{join}{d.replace('deg', '')} deg"


def _n(x) -> str:
    return "-" if x is None else str(x)


def _rate(x) -> str:
    return "-" if x is None or x != x else f"{x:.2f}"


def _part(p: dict | None) -> str:
    """A revisit part's loop recall @100% P with its true loops and revisit keyframes."""
    return "-" if not p else f"{_rate(p['recall_at_100p'])} ({p['n_true']} / {p['n_revisit_queries']})"


def session_numbers(day: dict, night: dict) -> dict:
    """The demo's numbers of one mode from its two results.json: loops of session 1, relocalizations of session 2.

    wrong_poses: relocalizations published with an error beyond WRONG_THRESHOLD; None where the metrics are
    missing (no ground truth).
    """
    loops = (day.get("metrics") or {}).get("loops", {})
    ate = (day.get("metrics") or {}).get("ate", {})
    reloc = (night.get("metrics") or {}).get("relocalization", {})
    n_q, n_loc = reloc.get("n_queries"), reloc.get("n_localized")
    success_at = reloc.get("success_at") or {}
    success, near = success_at.get(RELOC_THRESHOLD), success_at.get(WRONG_THRESHOLD)
    n_near = None if near is None or n_q is None else round(near * n_q)
    return {
        "keyframes": day["counts"]["keyframes"], "loops": len(day["loop_closures"]),
        "false_loops": loops.get("n_false"),
        "loop_recall_at_100p": loops.get("recall_at_100p"), "ate_before_m": ate.get("ate_before_m"),
        "ate_after_m": ate.get("ate_after_m"), "map_keyframes": night["map"]["loaded_keyframes"],
        "queries": n_q, "localized": n_loc, "reloc_success": success,
        "wrong_poses": None if n_near is None or n_loc is None else n_loc - n_near,
        "reloc_success_at": success_at, "fail_reasons": reloc.get("fail_reasons") or {},
        "day_wall_s": day.get("wall_s"), "night_wall_s": night.get("wall_s"), "per_level": per_level(night),
        "revisits": (day.get("metrics") or {}).get("revisit_parts") or {},
    }


def segments_table(runs: dict[str, dict[str, dict]]) -> str:
    """Markdown table, one column per mode, rows grouped by session (runs: {mode: {"day", "night": results}})."""
    num = {mode: session_numbers(r["day"], r["night"]) for mode, r in runs.items()}

    def row(label: str, cell) -> str:
        return f"| {label} | " + " | ".join(cell(num[m]) for m in runs) + " |"

    thresholds = list(dict.fromkeys(k for n in num.values() for k in n["reloc_success_at"]))
    lines = ["| segment: metric | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs),
             row("**day** (session 1): keyframes", lambda n: _n(n["keyframes"])),
             row("day: loops accepted / false", lambda n: f"{n['loops']} / {_n(n['false_loops'])}"),
             row("day: loop recall @100% precision", lambda n: _rate(n["loop_recall_at_100p"]))]
    for key, (name, what) in REVISITS.items():
        lines.append(row(f"**day, {name}** ({what}): loop recall @100% P (true loops / keyframes with a revisit)",
                         lambda n, key=key: _part(n["revisits"].get(key))))
    lines += [row("day: keyframe ATE before -> after pose graph (m)",
                  lambda n: "-" if n["ate_before_m"] is None else f"{n['ate_before_m']:.3f} -> {n['ate_after_m']:.3f}"),
              row("**night** (session 2): map keyframes loaded", lambda n: _n(n["map_keyframes"])),
              row("night: relocalized / queries", lambda n: f"{_n(n['localized'])} / {_n(n['queries'])}"),
              row("night: relocalized per level 1 / 2 / 3 (darker, noisier, more blur)",
                  lambda n: ", ".join(f"{a}/{b}" for a, b in n["per_level"]))]
    for th in thresholds:
        label = f"night: relocalization success @{_threshold(th)}"
        lines.append(row(f"**{label}**" if th == RELOC_THRESHOLD else label,
                         lambda n, th=th: _rate(n["reloc_success_at"].get(th))))
    lines += [row(f"night: wrong poses (published, off by > {_threshold(WRONG_THRESHOLD, ' or > ')})",
                  lambda n: _n(n["wrong_poses"])),
              row("replay wall time day / night (s)",
                  lambda n: f"{n['day_wall_s']:.0f} / {n['night_wall_s']:.0f}")]
    return "\n".join(lines)


def _write_demo_report(out: Path, runs: dict[str, dict[str, dict]], parts: dict, info: dict, seed: int,
                       timings: dict[str, float]) -> Path:
    from ..eval.report import plot_grouped_bars, write_report

    num = {mode: session_numbers(r["day"], r["night"]) for mode, r in runs.items()}
    extra = {}
    try:
        groups = ["day, easy revisit:\nloop recall @100% P", "day, night revisit:\nloop recall @100% P",
                  f"night: relocalization\nsuccess @{_threshold(RELOC_THRESHOLD)}",
                  "night: wrong poses\n(fraction of queries)"]
        values = {m: [(n["revisits"].get("easy") or {}).get("recall_at_100p"),
                      (n["revisits"].get("night") or {}).get("recall_at_100p"), n["reloc_success"],
                      None if n["wrong_poses"] is None or not n["queries"] else n["wrong_poses"] / n["queries"]]
                  for m, n in num.items()}
        plot_grouped_bars(groups, values, out / "segments.png", ylabel="rate",
                          title="Loops on an easy and a night revisit, relocalization against the day map")
        extra["day loops and night relocalization, both modes"] = "segments.png"
    except Exception as exc:  # the numbers matter more than the plot
        logger.warning("segments plot failed: %s", exc)
    laps, kid = info["bags"]["laps"], info["bags"]["kidnapped"]
    times = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    intro = (f"One world sequence (seed {seed}, mixed world at {info['image_size'][0]}x{info['image_size'][1]}) "
             f"as two sessions. **Day** (session 1, `bags/laps`): {laps['frames']} frames, {laps['keyframes']} "
             f"keyframes, the mapping lap in daylight and a revisit lap from another viewpoint (0.5-0.9 m aside, "
             f"+-25 deg) during which the lights go out: its first half is an easy revisit (evening light), its "
             f"second half a night revisit (dark, noisy, 9 px motion blur); loops are judged per half. Replayed "
             f"from an empty map, its map saved to "
             f"`<mode>/{MAP_FILE}`. **Night** (session 2, `bags/kidnapped`): {kid['queries']} kidnapped frames "
             f"(tracking LOST) lit at night (three levels, darker, noisier and more blurred in turn), replayed with "
             f"session 1's map loaded and judged against the ground truth of the whole sequence "
             f"(`bags/ground_truth.txt`). Each mode builds its own map: learned = ALIKED + LightGlue, classic = ORB + "
             f"Hamming NN. Times: {times}.\n\n" + segments_table(runs)
             + "\n\nAll metrics of the four replays:")
    return write_report(out, parts, "agnostic-reloc demo: day loops and night relocalization, learned vs classic",
                        intro, extra)
