"""rosbag2 replay: world sequence -> contract bag -> the node's input path -> engine -> results.json / report.

Real bags on disk (sqlite3 and mcap) through `agnostic_reloc.cli.main`; two engine replays of one short
mixed sequence (classic matcher, 320x240) and cheap replays of a few frames for the error paths.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from agnostic_reloc.cli import main
from agnostic_reloc.io import bags as bagio
from agnostic_reloc.io import messages
from agnostic_reloc.io.bag_events import BagEvents
from agnostic_reloc.io.bags import BagError, BagReader, OutMessage, sequence_messages, write_bag
from agnostic_reloc.io.contract import (
    DEPTH_TOPIC,
    GROUND_TRUTH_TOPIC,
    INPUT_TOPICS,
    MESSAGE_TYPES,
    decode_image,
    seconds_to_ns,
)
from agnostic_reloc.io.params import load_engine_conf, parse_remaps, resolve_topics
from agnostic_reloc.io.results import RESULT_KEYS
from agnostic_reloc.io.tum import align_gt
from agnostic_reloc.loop.runner import events_from_sequence
from agnostic_reloc.types import KeyframeEvent, QueryEvent

pytestmark = pytest.mark.slow  # minutes on 2 CPU cores: `pytest -m "not slow"` skips it


@pytest.fixture(scope="module")
def world(photos):
    """Two laps + three kidnapped segments at 320x240, sparse keyframes (the demo's world, seed 3)."""
    from agnostic_reloc.world import make_sequence

    return make_sequence(seed=3, profile="mixed", conf={**bagio.SMALL_WORLD, "keep_depth": True}, progress=False)


@pytest.fixture(scope="module")
def few(world):
    """A few frames: the first keyframes and the first kidnapped segment (cheap replays)."""
    lost = [i for i, f in enumerate(world.frames) if f.tracking_state != "OK"]
    return dataclasses.replace(world, frames=world.frames[:7] + world.frames[lost[0]:lost[0] + 2])


def _write(path: Path, seq, storage: str = "sqlite3", drop=(), ground_truth: bool = True, edit=None) -> Path:
    msgs = (m for m in sequence_messages(seq, depth=True, ground_truth=ground_truth) if m.topic not in drop)
    write_bag(path, msgs if edit is None else map(edit, msgs), storage)
    return path


def _tum(path: Path, seq) -> Path:
    from agnostic_reloc.io.contract import T_to_pose

    rows = []
    for f in seq.frames:
        t, q = T_to_pose(f.T_world_cam)
        rows.append(" ".join(repr(float(v)) for v in [f.stamp + 0.002, *t, *q]))  # 2 ms off: nearest-stamp match
    path.write_text("# stamp tx ty tz qx qy qz qw\n" + "\n".join(rows) + "\n")
    return path


def _replay(tmp: Path, bag: Path, *extra: str) -> tuple[int, dict | None]:
    out = tmp / "out"
    rc = main(["replay", str(bag), "--out", str(out), "--matcher", "nn", "--device", "cpu", *extra])
    res = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else None
    return rc, res


# ---------------------------------------------------------------------------- full replays (engine)
@pytest.fixture(scope="module")
def full(world, tmp_path_factory):
    """The world replayed from sqlite3 with the node's parameter file format (single-map ALIKED sampling: 3x
    faster on CPU than the default octave sampling, same loops here)."""
    tmp = tmp_path_factory.mktemp("full")
    bag = _write(tmp / "bag", world, "sqlite3")
    config = tmp / "reloc.yaml"
    config.write_text("reloc_node:\n  ros__parameters:\n    sync_queue_size: 30\n    engine:\n      features:\n        sampling: full\n")
    rc, res = _replay(tmp, bag, "--config", str(config))
    assert rc == 0
    return tmp, bag, res, config


def test_results_have_stable_keys_and_types(full):
    tmp, _, res, _ = full
    for key in RESULT_KEYS:
        assert key in res
    assert res["loop_closures"] and res["relocalizations"]
    for lc in res["loop_closures"]:
        assert isinstance(lc["query_stamp"], float) and isinstance(lc["match_stamp"], float)
        assert np.asarray(lc["T_match_query"]).shape == (4, 4)
        assert isinstance(lc["inliers"], int) and isinstance(lc["score"], float)
        assert lc["query_stamp"] > lc["match_stamp"]
    for r in res["relocalizations"]:
        assert isinstance(r["stamp"], float) and np.asarray(r["T_map_cam"]).shape == (4, 4)
        assert isinstance(r["inliers"], int)
    for r in res["failed_relocalizations"]:
        assert isinstance(r["stamp"], float) and isinstance(r["reason"], str)
    for stage, p in res["timing_ms"].items():
        assert set(p) == {"p50", "p90", "max"} and p["p50"] <= p["p90"] <= p["max"]
    assert {"extract", "reloc_verify"} <= set(res["timing_ms"])
    assert res["rejected_messages"] == [] and res["bag"]["storage"] == "sqlite3"
    engine = res["config"]["engine"]
    assert engine["features"]["sampling"] == "full" and engine["matcher"]["name"] == "nn"
    assert DEPTH_TOPIC in res["bag"]["topics"]
    for name in ("report.md", "trajectory_loops.png", "loop_pr_curve.png", "latency_hist.png"):
        assert (tmp / "out" / name).stat().st_size > 0
    assert "trajectory_loops.png" in (tmp / "out" / "report.md").read_text()


def test_loops_are_true_and_kidnapped_frames_relocalize(full, world):
    _, _, res, _ = full
    m = res["metrics"]
    assert m["loops"]["n_loops"] == len(res["loop_closures"]) > 0
    assert m["loops"]["n_false"] == 0 and m["loops"]["precision"] == 1.0
    assert m["loops"]["recall"] >= 0.5
    assert m["ate"]["ate_after_m"] < m["ate"]["ate_before_m"]
    kidnapped = {f.stamp for f in world.frames if f.kidnapped}
    queries = {r["stamp"] for r in res["relocalizations"]} | {r["stamp"] for r in res["failed_relocalizations"]}
    assert queries == kidnapped  # exactly the lost frames became queries
    assert len(res["relocalizations"]) >= 0.6 * len(kidnapped)
    assert m["relocalization"]["success_at"]["0.5m_5deg"] >= 0.6
    assert m["gt_coverage"]["keyframes"] == f"{res['counts']['keyframes']}/{res['counts']['keyframes']}"


def test_second_replay_with_tum_gt_is_identical(full, world, tmp_path):
    """The same bag again, with the ground truth from a TUM file (stamps 2 ms off): same loops and metrics."""
    _, bag, first, config = full
    rc, again = _replay(tmp_path, bag, "--config", str(config), "--gt", str(_tum(tmp_path / "gt.txt", world)))
    assert rc == 0
    assert again["loop_closures"] == first["loop_closures"]
    assert again["relocalizations"] == first["relocalizations"]
    assert again["failed_relocalizations"] == first["failed_relocalizations"]
    assert again["metrics"]["gt_source"].startswith("file ")
    assert again["metrics"]["loops"]["flags"] == first["metrics"]["loops"]["flags"]
    assert again["metrics"]["relocalization"]["success_at"] == first["metrics"]["relocalization"]["success_at"]


# ---------------------------------------------------------------------------- messages (no engine)
def test_mcap_messages_give_the_sequence_events(few, tmp_path):
    """mcap round trip: bag -> StampSync + EventAssembler gives exactly the world generator's events."""
    bag = _write(tmp_path / "bag", few, "mcap")
    topics = resolve_topics()
    with BagReader(bag) as reader:
        assert reader.storage == "mcap"
        reader.check(topics)
        assert reader.topics[DEPTH_TOPIC] == MESSAGE_TYPES["depth"]
        src = BagEvents({r: t for r, t in topics.items() if t in reader.topics})
        got = list(src.events(reader, progress=False))
        depth = next(m.msg for m in reader.messages([DEPTH_TOPIC]))
    want = list(events_from_sequence(few))
    assert [type(e) for e in got] == [type(e) for e in want] and any(isinstance(e, QueryEvent) for e in got)
    for a, b in zip(got, want):
        assert a.stamp == b.stamp
        assert np.array_equal(a.image, b.image) and np.allclose(a.K, b.K)
        for k in ("xy", "octave", "response", "angle", "size"):
            assert np.array_equal(getattr(a.keypoints, k), getattr(b.keypoints, k))
        if isinstance(a, KeyframeEvent):
            assert np.allclose(a.T_map_cam, b.T_map_cam, atol=1e-9)
            assert np.array_equal(a.map_points, b.map_points, equal_nan=True)
            assert np.array_equal(a.map_point_ids, b.map_point_ids)
    assert src.rejected == [] and len(src.gt) == len(few.frames)
    mm = np.frombuffer(bytes(depth.data), "<u2").reshape(depth.height, depth.width)  # 16UC1 millimetres
    d0 = few.frames[0].depth
    ok = np.isfinite(d0)
    assert depth.encoding == "16UC1" and np.abs(mm[ok] / 1000.0 - d0[ok]).max() <= 0.0006 and (mm[~ok] == 0).all()


def test_make_bag_cli_and_no_overwrite(tmp_path, photos, capsys):
    out = tmp_path / "made"
    assert main(["make-bag", str(out), "--frames", "8", "--profile", "loop", "--small", "--no-depth",
                 "--storage", "mcap"]) == 0
    with BagReader(out) as r:
        assert r.storage == "mcap" and DEPTH_TOPIC not in r.topics
        assert r.counts[INPUT_TOPICS["image"]] == 8 and r.counts[GROUND_TRUTH_TOPIC] == 8
        msgs = list(r.messages(r.topics))
    order = [m.topic for m in msgs[:4]]
    assert order == [INPUT_TOPICS[k] for k in ("camera_info", "tracking_state", "image", "frame_keypoints")]
    img = messages.msg_to_image(msgs[2].msg)
    assert img.encoding == "rgb8" and decode_image(img).shape == (240, 320, 3)
    assert messages.header_ns(msgs[2].msg) == seconds_to_ns(0.0)
    capsys.readouterr()
    assert main(["make-bag", str(out)]) == 2
    assert "exists already" in capsys.readouterr().err


# ---------------------------------------------------------------------------- bad input
def test_malformed_keypoint_cloud_is_counted_not_fatal(few, tmp_path):
    kf_topic, fr_topic = INPUT_TOPICS["keyframe_keypoints"], INPUT_TOPICS["frame_keypoints"]
    seen, frames = [], []

    def break_messages(m: OutMessage) -> OutMessage:
        if m.topic == kf_topic:
            seen.append(messages.header_ns(m.msg) / 1e9)
            if len(seen) == 2:  # data no longer width x point_step
                m = dataclasses.replace(m, msg=dataclasses.replace(m.msg, data=m.msg.data[:-7]))
        if m.topic == fr_topic:
            frames.append(m)
            if len(frames) == 1:  # bytes that are no PointCloud2 at all
                m = dataclasses.replace(m, msg=b"\x00\x01\x00\x00 not a point cloud")
        return m

    bag = _write(tmp_path / "bag", few, "sqlite3", edit=break_messages)
    rc, res = _replay(tmp_path, bag)
    assert rc == 0
    assert res["rejected_counts"] == {"keyframe": 1, "frame_keypoints": 1}
    bad = {r["kind"]: r for r in res["rejected_messages"]}
    assert "PointCloud2 data has" in bad["keyframe"]["reason"] and bad["keyframe"]["stamp"] == seen[1]
    assert "cannot deserialize" in bad["frame_keypoints"]["reason"]
    n_kf = sum(f.is_keyframe and f.tracking_state == "OK" for f in few.frames)
    assert res["counts"]["keyframes"] == n_kf - 1


def test_bag_without_gt_says_metrics_skipped(few, tmp_path, capsys):
    bag = _write(tmp_path / "bag", few, "mcap", ground_truth=False)
    capsys.readouterr()
    rc, res = _replay(tmp_path, bag)
    assert rc == 0
    assert res["metrics"] == {} and "no ground truth" in res["metrics_skipped"]
    assert "metrics skipped" in capsys.readouterr().out
    assert res["relocalizations"] or res["failed_relocalizations"]


def test_missing_topic_wrong_type_corrupt_and_non_bags_exit_2(few, tmp_path, capsys):
    pose = INPUT_TOPICS["keyframe_pose"]
    missing = _write(tmp_path / "missing", few, drop={pose})
    with pytest.raises(BagError) as exc, BagReader(missing) as reader:
        reader.check(resolve_topics())
    assert pose in str(exc.value) and INPUT_TOPICS["image"] in str(exc.value)  # names what is missing + what is there

    def retype(m: OutMessage) -> OutMessage:
        if m.topic == INPUT_TOPICS["tracking_state"]:
            return OutMessage(m.topic, MESSAGE_TYPES["keyframe_pose"], m.log_ns,
                              bagio.pose_to_msg(np.eye(4), m.log_ns, "map"))
        return m

    wrong = _write(tmp_path / "wrong", few, edit=retype)
    truncated = {}
    for storage in ("sqlite3", "mcap"):
        bag = _write(tmp_path / f"trunc_{storage}", few, storage)
        data = next(p for p in bag.iterdir() if p.suffix in (".db3", ".mcap"))
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
        truncated[storage] = bag
    (tmp_path / "notabag").mkdir()
    (tmp_path / "notabag" / "readme.txt").write_text("hello")
    (tmp_path / "file.txt").write_text("hello")
    cases = {missing: "lacks the required topic", wrong: "std_msgs/msg/String", truncated["sqlite3"]: "corrupt",
             truncated["mcap"]: "corrupt", tmp_path / "notabag": "no metadata.yaml",
             tmp_path / "file.txt": "not a rosbag2 bag", tmp_path / "nothing": "does not exist"}
    for path, text in cases.items():
        capsys.readouterr()
        assert main(["replay", str(path), "--out", str(tmp_path / "o")]) == 2, path
        err = capsys.readouterr().err
        assert text in err and "Traceback" not in err, err


# ---------------------------------------------------------------------------- options
def test_gt_matching_remaps_and_config(tmp_path):
    gt = {1.0: np.eye(4), 2.003: 2 * np.eye(4)}
    assert set(align_gt(gt, [1.004, 2.0, 3.0], 0.005)) == {1.004, 2.0}
    assert parse_remaps(["image:=/cam/image", "/orb_slam3/tracking_state:=/state", "~/query/image:=/q"]) == {
        "image": "/cam/image", "tracking_state": "/state", "query_image": "/q"}
    assert resolve_topics(parse_remaps(["image:=/cam"]))["image"] == "/cam"
    assert "query_image" not in resolve_topics()
    for bad in (["image=/x"], ["/unknown:=/x"]):
        with pytest.raises(ValueError):
            parse_remaps(bad)
    nested = Path(__file__).resolve().parents[2] / "config" / "reloc.yaml"
    if nested.is_file():
        conf = load_engine_conf(nested)
        assert conf["matcher"]["name"] in ("lightglue", "nn") and conf["matcher"]["weights"] is None
        assert isinstance(conf["features"]["octave_levels"], tuple)
    flat = tmp_path / "flat.yaml"
    flat.write_text("reloc_node:\n  ros__parameters:\n    sync_queue_size: 5\n    engine.matcher: nn\n"
                    "    engine.min_inliers: 30\n    engine.ensemble_detector: ''\n")
    with pytest.warns(FutureWarning, match="min_inliers -> loop.min_inliers"):  # flat names of earlier releases
        conf = load_engine_conf(flat)
    assert conf == {"matcher": {"name": "nn"}, "loop": {"min_inliers": 30}, "features": {"ensemble_detector": None}}
    flat.write_text("reloc_node:\n  ros__parameters:\n    engine.not_an_option: 1\n")
    with pytest.raises(ValueError, match="unknown parameters.*engine.not_an_option"):
        load_engine_conf(flat)  # read as strictly as the node reads it


def test_realtime_paces_by_stamps(few, tmp_path):
    import time

    head = dataclasses.replace(few, frames=few.frames[:3])  # 0.4 s of bag
    bag = _write(tmp_path / "bag", head, "sqlite3")
    t0 = time.perf_counter()
    rc, res = _replay(tmp_path, bag, "--realtime", "--gt", str(_tum(tmp_path / "gt.txt", head)))
    assert rc == 0 and time.perf_counter() - t0 >= head.frames[-1].stamp - head.frames[0].stamp
    assert res["config"]["realtime"] is True and res["counts"]["keyframes"] >= 1
