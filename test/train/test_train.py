"""Detector-agnostic LightGlue training: ground truth, loss, padded forward, data, trainer (resume, NaN, export,
DDP) and evaluation. Tiny and on real photos; the CPU is slow, so trainings are a handful of steps."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from agnostic_reloc.train import groundtruth
from agnostic_reloc.train.data import collate

SMALL_KPTS = {"detectors": ["orb-ss"], "max_keypoints": 64, "nms_radius": 3.0, "device": "cpu"}


def small_conf(**train) -> dict:
    return {
        "seed": 0,
        "data": {"name": "homography", "n_pairs": 1, "batch_size": 1, "min_matches": 8, "resample_each_epoch": False,
                 "cache": "memory", "homography": {"size": [256, 192], "difficulty_range": [0.0, 0.3],
                                                   "photometric": False},
                 "keypoints": dict(SMALL_KPTS)},
        "train": {"epochs": 100, "lr": 2e-4, "decay_start": 100, "checkpoint_every": 3, "log_every": 1,
                  "device": "cpu", **train},
    }


# ----------------------------------------------------------------------------- ground truth
def test_groundtruth_homography_exact():
    H = np.array([[1.0, 0, 10], [0, 1, -5], [0, 0, 1]])
    k0 = np.array([[20.0, 20], [50, 50], [100, 100], [30, 80]])
    k1 = np.array([[30.0, 15], [61.0, 45], [113.0, 95], [300, 300]])  # k1[3]: far from all
    gt0, gt1 = groundtruth.matches_from_homography(k0, k1, H, match_px=3, unmatched_px=5)
    # k0[0] -> (30, 15) exact; k0[1] -> (60, 45): 1 px; k0[2] -> (110, 95): 3 px away -> match (<= 3);
    # k0[3] -> (40, 75): nearest is k1[1] at 30 px -> unmatched; k1[3] far from everything -> unmatched.
    assert gt0.tolist() == [0, 1, 2, -1]
    assert gt1.tolist() == [0, 1, 2, -1]
    k1[2] = [114.0, 95]  # 4 px: between match_px and unmatched_px -> ignored on both sides
    gt0, gt1 = groundtruth.matches_from_homography(k0, k1, H, match_px=3, unmatched_px=5)
    assert gt0.tolist() == [0, 1, -2, -1] and gt1.tolist() == [0, 1, -2, -1]


def test_groundtruth_mutual_nearest_only():
    d = np.array([[1.0, 2.0], [0.5, 9.0]])  # both rows prefer column 0; column 0 prefers row 1
    gt0, gt1 = groundtruth.assign(d, 3, 5)
    assert gt0.tolist() == [-2, 0] and gt1.tolist() == [1, -2]


def test_groundtruth_depth_exact():
    K = np.array([[100.0, 0, 80], [0, 100, 60], [0, 0, 1]])
    depth0 = np.full((120, 160), 2.0)
    depth1 = np.full((120, 160), 2.0)
    depth0[:, :10] = 0  # no depth there -> ignored
    T = np.eye(4)
    T[0, 3] = -0.4  # camera 1 is 0.4 m to the right: u1 = u0 - 100 * 0.4 / 2 = u0 - 20
    k0 = np.array([[50.0, 50], [100, 30], [5, 60], [10.0 + 15, 100], [150, 10]])
    k1 = np.array([[30.0, 50], [80, 31], [70, 90]])
    gt0, gt1 = groundtruth.matches_from_depth(k0, k1, depth0, depth1, K, K, T)
    # k0[0] exact, k0[1] 1 px off, k0[2] no depth, k0[3] -> (5, 100) nothing near, k0[4] -> (130, 10) nothing near
    assert gt0.tolist() == [0, 1, -2, -1, -1]
    assert gt1.tolist() == [0, 1, -1]
    depth1[:] = 1.0  # the other camera sees something much closer: everything occluded -> unmatched
    gt0, _ = groundtruth.matches_from_depth(k0, k1, depth0, depth1, K, K, T)
    assert gt0.tolist() == [-1, -1, -2, -1, -1]


def test_octave_labels_pair_compatible_levels_and_ignore_the_rest():
    # The same three corners found at pyramid levels 0..3 in both images, as ORB-SLAM3 gives them (no suppression);
    # image1 is image0 magnified 1.44x = two levels of 1.2, so a level-o keypoint of image0 is level o+2 there.
    # Each level sits 0.25 px further right: by position alone the nearest neighbours pair level o with o or o+1.
    H = np.diag([1.44, 1.44, 1.0])
    corners = np.array([[50.0, 60], [120, 80], [90, 140]])
    octave = np.tile(np.arange(4), 3)
    shift = np.c_[0.25 * octave, np.zeros(len(octave))]
    k0 = np.repeat(corners, 4, axis=0) + shift
    k1 = np.repeat(corners * 1.44, 4, axis=0) + shift
    assert np.allclose(groundtruth.homography_scale(H, k0), 1.44)

    def compatible(gt0):
        i = np.flatnonzero(gt0 >= 0)
        predicted = np.clip(octave[i] + 2, 0, 3)
        return np.abs(octave[gt0[i]] - predicted) <= 1

    plain, _ = groundtruth.matches_from_homography(k0, k1, H, 3, 5)
    assert not compatible(plain).all()  # position-only labels pair incompatible levels
    gt0, gt1 = groundtruth.matches_from_homography(k0, k1, H, 3, 5, levels=(octave, octave, 1.2), octave_tol=1.0)
    assert (gt0 >= 0).sum() >= 3 and compatible(gt0).all()
    assert (gt0 != groundtruth.UNMATCHED).all() and (gt1 != groundtruth.UNMATCHED).all()  # never a negative here
    assert ((gt0 >= 0) | (gt0 == groundtruth.IGNORE)).all()
    # single-scale keypoints (scale factor 1) are labelled by position only
    same, _ = groundtruth.matches_from_homography(k0, k1, H, 3, 5, levels=(octave, octave, 1.0))
    assert same.tolist() == plain.tolist()


def test_depth_scale_change_predicts_the_octave():
    # a wall 4 m ahead; camera 1 is 2 m closer, so the wall looks twice as big: ~3.8 levels of 1.2 higher there
    K = np.array([[100.0, 0, 80], [0, 100, 60], [0, 0, 1]])
    depth0, depth1 = np.full((120, 160), 4.0), np.full((120, 160), 2.0)
    T = np.eye(4)
    T[2, 3] = -2.0
    k0 = np.array([[80.0, 60], [70, 55]])
    _, _, visible, scale = groundtruth.project(k0, depth0, K, K, T, depth1, 0.1)
    assert visible.all() and np.allclose(scale, 2.0)
    ok = groundtruth.octave_compatible(np.array([0, 1]), np.arange(8), scale, 1.2, 1.0)
    assert ok[0].tolist() == [False, False, False, True, True, False, False, False]  # predicted 3.8
    assert ok[1].tolist() == [False, False, False, False, True, True, False, False]  # predicted 4.8


# ----------------------------------------------------------------------------- forward + loss
def test_padded_forward_matches_unpadded_and_loss_is_finite():
    from agnostic_reloc.matching.lightglue import build_network
    from agnostic_reloc.train.forward import forward_train
    from agnostic_reloc.train.losses import LightGlueLoss

    torch.manual_seed(0)
    net = build_network("aliked").train()
    sizes = [(12, 9), (7, 11)]
    samples = []
    for m, n in sizes:
        samples.append({"keypoints0": torch.rand(m, 2) * 100, "keypoints1": torch.rand(n, 2) * 100,
                        "descriptors0": torch.nn.functional.normalize(torch.randn(m, 128), dim=-1),
                        "descriptors1": torch.nn.functional.normalize(torch.randn(n, 128), dim=-1),
                        "gt_matches0": torch.tensor([0, 1] + [-1] * (m - 2)),
                        "gt_matches1": torch.tensor([0, 1] + [-1] * (n - 2)),
                        "image_size0": torch.tensor([100.0, 100]), "image_size1": torch.tensor([100.0, 100]),
                        "image0": None, "image1": None, "detector": "x", "name": "s"})
    batch = collate(samples)
    pred = forward_train(net, batch)
    assert len(pred["log_assignment"]) == 9 and len(pred["confidence0"]) == 8
    single = forward_train(net, collate([samples[1]]))
    m, n = sizes[1]
    torch.testing.assert_close(pred["log_assignment"][-1][1, :m, :n], single["log_assignment"][-1][0, :m, :n],
                               atol=1e-4, rtol=1e-4)
    loss = LightGlueLoss({"train_confidence": True})(pred, batch["gt_matches0"], batch["gt_matches1"])
    loss["total"].backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert torch.isfinite(loss["total"]) and grads and all(torch.isfinite(g).all() for g in grads)


# ----------------------------------------------------------------------------- data
def test_bad_sample_is_skipped_and_counted(photos, tmp_path):
    from agnostic_reloc.train.data import HomographyDataset

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    ds = HomographyDataset([broken], {"n_pairs": 2, "holdout": []}, SMALL_KPTS)
    out = ds[0]
    assert "skipped" in out and sum(ds.skipped.values()) == 1
    good = {"keypoints0": torch.zeros(3, 2), "keypoints1": torch.zeros(2, 2), "descriptors0": torch.zeros(3, 4),
            "descriptors1": torch.zeros(2, 4), "gt_matches0": torch.tensor([0, -1, -1]),
            "gt_matches1": torch.tensor([0, -1]), "image_size0": torch.tensor([9.0, 9]),
            "image_size1": torch.tensor([9.0, 9]), "image0": None, "image1": None, "detector": "x", "name": "g"}
    batch = collate([out, good, ds[1]])
    assert batch["n_skipped"] == 2 and batch["mask0"].shape == (1, 3)
    assert collate([out])["empty"]


def test_cached_features_round_trip_and_invalidate(photos, tmp_path, caplog):
    from agnostic_reloc.train.data import HomographyDataset

    conf = {"n_pairs": 2, "holdout": [], "min_matches": 8, "resample_each_epoch": False, "cache": "disk",
            "cache_dir": str(tmp_path), "homography": {"size": [256, 192], "difficulty_range": [0.0, 0.3]}}
    kp = {"detectors": ["orb"], "deployed": ["orb"], "deployed_max_keypoints": 300, "device": "cpu"}
    first = HomographyDataset(photos[:2], conf, kp)
    samples = [first[i] for i in range(2)]
    assert all("skipped" not in s for s in samples)
    files = sorted(tmp_path.glob("*.pt"))
    assert len(files) == 2 and all(f.name.startswith(first.fingerprint) for f in files)
    stored = torch.load(files[0], weights_only=False)
    assert "image0" not in stored and stored["detector"] == "orb"  # features and labels only
    xy = stored["keypoints0"].numpy()  # deployed: ORB-SLAM3's keypoints as they come, nearby ones included
    gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(len(xy)) * 1e9
    assert gaps.min() < 3.0

    again = HomographyDataset(photos[:2], conf, kp)
    again.load = None  # a cache hit must not compute anything
    for a, b in zip(samples, (again[0], again[1])):
        for key in ("keypoints0", "descriptors1", "gt_matches0", "gt_matches1"):
            assert torch.equal(a[key], b[key])

    changed = HomographyDataset(photos[:2], {**conf, "octave_tol": None}, kp)  # another label rule
    assert changed.fingerprint != first.fingerprint
    changed[0]
    assert len(list(tmp_path.glob("*.pt"))) == 3  # recomputed under its own name; the old files are untouched

    files[0].write_bytes(b"half a file")
    with caplog.at_level("WARNING", logger="agnostic_reloc.train"):
        redone = HomographyDataset(photos[:2], conf, kp)[int(files[0].stem.split("_")[-1])]
    assert "unreadable" in caplog.text and torch.equal(redone["descriptors0"], stored["descriptors0"])
    assert torch.load(files[0], weights_only=False)["name"] == stored["name"]  # rewritten whole


def test_mixed_data_with_world_revisits(photos):
    from agnostic_reloc.train.data import MixedDataset, build_dataset

    ds = build_dataset({"name": "mixed", "min_matches": 4, "parts": [
        {"name": "homography", "n_pairs": 2, "homography": {"size": [256, 192]}},
        {"name": "world", "pairs": "revisits", "n_frames": 40, "max_pairs": 3,
         "world": {"camera": {"width": 160, "height": 120, "f": 100}}}],
        "keypoints": {**SMALL_KPTS, "detectors": ["orb"], "deployed": ["orb"]}}, photos)
    assert isinstance(ds, MixedDataset) and len(ds) == 2 + len(ds.datasets[1])
    world = ds.datasets[1]
    seq = world.sequences[0]
    assert world.items and all(seq.frames[a].lap < seq.frames[b].lap for _, a, b in world.items)
    ds.set_epoch(1)
    assert all(d.epoch == 1 for d in ds.datasets)
    s = ds[2]
    assert "skipped" in s or (s["gt_matches0"] >= 0).sum() >= 4


def test_bad_training_data_options_are_refused_by_name(photos, tmp_path, capsys):
    from agnostic_reloc.cli import main
    from agnostic_reloc.train.data import KeypointSampler, WorldDataset

    with pytest.raises(ValueError, match=r"keypoints.deployed names unknown detectors \['orbslam'\]"):
        KeypointSampler({"deployed": ["orbslam"]})
    with pytest.raises(ValueError, match="keypoints.deployed_max_keypoints must be positive"):
        KeypointSampler({"deployed_max_keypoints": 0})
    with pytest.raises(ValueError, match="world pairs must be gaps or revisits, got 'loops'"):
        WorldDataset({"pairs": "loops", "n_frames": 4, "world": {"camera": {"width": 80, "height": 60, "f": 50}}})
    with pytest.raises(ValueError, match="compatible mask has shape"):
        groundtruth.assign(np.zeros((2, 3)), 3, 5, compatible=np.ones((3, 2), bool))
    assert main(["export-weights", str(tmp_path / "nothing.pth"), str(tmp_path / "out.pth")]) != 0
    assert "nothing.pth does not exist" in capsys.readouterr().err and not (tmp_path / "out.pth").exists()


def test_holdout_split(photos):
    from agnostic_reloc.train.data import DEFAULT_HOLDOUT, select_photos

    train = {p.name for p in select_photos(photos, DEFAULT_HOLDOUT, "train")}
    held = {p.name for p in select_photos(photos, DEFAULT_HOLDOUT, "holdout")}
    assert not train & held and len(held) >= 5 and "graf1.png" in held and "starry_night.jpg" in held


def test_megadepth_layout_loader(photos, tmp_path):
    import h5py

    from agnostic_reloc.io.image import load_image
    from agnostic_reloc.train.data import MegaDepthDataset

    photo = cv2.resize(load_image(photos[3]), (320, 240))
    root = tmp_path / "md"
    (root / "images").mkdir(parents=True)
    (root / "depths").mkdir()
    (root / "scene_info").mkdir()
    shift = 20  # f * tx / Z = 100 * 0.4 / 2
    K = np.array([[100.0, 0, 79.5], [0, 100, 59.5], [0, 0, 1]])
    poses = []
    for i, x0 in enumerate((60, 60 + shift)):
        cv2.imwrite(str(root / "images" / f"{i}.png"), cv2.cvtColor(photo[60:180, x0:x0 + 160], cv2.COLOR_RGB2BGR))
        with h5py.File(root / "depths" / f"{i}.h5", "w") as f:
            f["depth"] = np.full((120, 160), 2.0, np.float32)
        P = np.eye(4)
        P[0, 3] = -0.4 * i  # world -> camera; camera 1 sits 0.4 m to the right
        poses.append(P)
    pair_infos = np.empty(2, dtype=object)
    pair_infos[0] = ((0, 1), 0.5, np.zeros(0))
    pair_infos[1] = ((1, 0), 0.95, np.zeros(0))  # filtered out by max_overlap
    np.savez(root / "scene_info" / "0001.npz", image_paths=np.array(["images/0.png", "images/1.png"], dtype=object),
             depth_paths=np.array(["depths/0.h5", "depths/1.h5"], dtype=object), intrinsics=np.stack([K, K]),
             poses=np.stack(poses), pair_infos=pair_infos)
    ds = MegaDepthDataset(str(root), str(root / "scene_info"), {"min_matches": 5, "resize_max": None},
                          {**SMALL_KPTS, "max_keypoints": 128})
    assert len(ds) == 1
    s = ds[0]
    assert "skipped" not in s, s
    m = s["gt_matches0"]
    ok = m >= 0
    assert ok.sum() >= 5
    err = (s["keypoints0"][ok] - torch.tensor([shift, 0.0]) - s["keypoints1"][m[ok]]).norm(dim=-1)
    assert err.max() <= 3.0
    assert s["descriptors0"].shape == (len(s["keypoints0"]), 128)
    os.remove(root / "depths" / "1.h5")  # missing depth -> skipped, not a crash
    assert "skipped" in ds[0]


def test_world_adapter():
    try:
        from agnostic_reloc.world import make_sequence  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"agnostic_reloc.world.make_sequence not available yet: {exc}")
    from agnostic_reloc.train.data import WorldDataset

    ds = WorldDataset({"n_frames": 8, "frame_gaps": [1, 1], "max_pairs": 1, "min_matches": 4,
                       "world": {"camera": {"width": 160, "height": 120, "f": 100}}},
                      {**SMALL_KPTS, "detectors": ["orb-ss", "sequence"]})
    s = ds[0]
    assert "skipped" in s or (s["gt_matches0"] >= 0).sum() >= 4


# ----------------------------------------------------------------------------- trainer
@pytest.fixture(scope="module")
def trained(photos, tmp_path_factory):
    from agnostic_reloc.train.trainer import train

    out = tmp_path_factory.mktemp("train")
    res = train(small_conf(max_steps=6), out, photos=photos)
    return out, res


def test_training_reduces_loss_and_checkpoints(trained):
    out, res = trained
    losses = res["losses"]
    assert res["step"] == 6 and len(losses) == 6 and all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < np.mean(losses[:2]), losses
    ckpt = torch.load(out / "checkpoint_last.pth", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 6 and {"model", "optimizer", "scheduler", "conf", "rng"} <= set(ckpt)
    assert (out / "checkpoint_000003.pth").is_file() and (out / "tb").is_dir()


def test_export_loads_in_matcher(trained, tmp_path):
    from agnostic_reloc.matching.lightglue import LightGlueMatcher
    from agnostic_reloc.train.trainer import export_weights
    from agnostic_reloc.weights import sha256

    out, res = trained
    path, digest = export_weights(out / "checkpoint_last.pth", tmp_path / "agnostic.pth")
    assert (tmp_path / "agnostic.pth.sha256").read_text().split()[0] == digest == sha256(path)
    card = json.loads((tmp_path / "agnostic.json").read_text())  # what produced the file, beside it
    assert card["sha256"] == digest and card["step"] == 6 and card["train_wall_s"] > 0 and card["features"] == "aliked"
    assert card["config"]["data"]["keypoints"]["detectors"] == SMALL_KPTS["detectors"]
    state = torch.load(path, weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    matcher = LightGlueMatcher(weights=str(path), device="cpu")
    trained_w = res["model"].state_dict()["log_assignment.8.final_proj.weight"]
    torch.testing.assert_close(matcher.net.state_dict()["log_assignment.8.final_proj.weight"], trained_w,
                               atol=2e-3, rtol=2e-3)


def test_weights_resolve_by_shipped_name_and_corruption_is_refused(trained, tmp_path, monkeypatch):
    from agnostic_reloc import weights
    from agnostic_reloc.matching.lightglue import build_network
    from agnostic_reloc.train.trainer import export_weights

    out, _ = trained
    folder = tmp_path / "shipped"
    path, digest = export_weights(out / "checkpoint_last.pth", folder / "mine.pth")
    (folder / "mine.json").write_text(json.dumps({"sha256": digest, "features": "aliked"}))
    monkeypatch.setattr(weights, "SHIPPED_DIR", folder)
    monkeypatch.setattr(weights, "_verified", set())
    assert weights.shipped_names() == ["mine"] and weights.resolve_lightglue("mine") == path
    assert weights.resolve_lightglue("official") is None and weights.resolve_lightglue(None) is None
    build_network("aliked", "mine")
    with pytest.raises(weights.WeightsError, match="no shipped LightGlue weights named 'other'.*mine"):
        weights.resolve_lightglue("other")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    weights._verified.clear()
    with pytest.raises(weights.WeightsError, match="corrupt"):
        build_network("aliked", "mine")
    with pytest.raises(weights.WeightsError, match="corrupt"):  # by path: checked against <file>.sha256
        weights.resolve_lightglue(str(path))


def test_resume_then_nan_stops_with_last_good_checkpoint(trained, photos, monkeypatch):
    from agnostic_reloc.train import trainer

    out, _ = trained
    res = trainer.train(small_conf(max_steps=7, resume=True), out, photos=photos)
    assert res["step"] == 7 and len(res["losses"]) == 1
    assert torch.load(out / "checkpoint_last.pth", weights_only=True)["step"] == 7

    real = trainer.losses_mod.LightGlueLoss.__call__

    def nan_loss(self, pred, gt0, gt1):
        out_ = real(self, pred, gt0, gt1)
        out_["total"] = out_["total"] * float("nan")
        return out_

    monkeypatch.setattr(trainer.losses_mod.LightGlueLoss, "__call__", nan_loss)
    with pytest.raises(trainer.NonFiniteLossError, match="loss is nan at step 7.*last good checkpoint kept"):
        trainer.train(small_conf(max_steps=9, resume=True), out, photos=photos)
    assert torch.load(out / "checkpoint_last.pth", weights_only=True)["step"] == 7


DDP_SCRIPT = """
import json, os, sys
import torch
torch.set_num_threads(1)
from agnostic_reloc.train.trainer import param_digest, train
conf = json.loads(sys.argv[1])
res = train(conf, sys.argv[2])
rank = os.environ["RANK"]
with open(os.path.join(sys.argv[2], f"rank{rank}.json"), "w") as f:
    json.dump({"digest": param_digest(res["model"]), "seen": res["seen"], "step": res["step"]}, f)
"""


def test_ddp_two_processes_synchronise_gradients(photos, tmp_path):
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    except OSError as exc:
        pytest.skip(f"cannot bind a local port for torchrun: {exc}")
    conf = small_conf(max_steps=1)
    conf["data"].update({"n_pairs": 2, "cache": "none"})
    conf["data"]["keypoints"]["max_keypoints"] = 32
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(port), str(script), json.dumps(conf), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    if proc.returncode != 0 and ("Address already in use" in proc.stderr or "EADDRINUSE" in proc.stderr):
        pytest.skip("torchrun could not bind its port")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["step"] == r1["step"] == 1
    assert r0["seen"] != r1["seen"]  # different data on each rank ...
    assert r0["digest"] == r1["digest"]  # ... but identical parameters after the step: gradients were averaged
    assert (tmp_path / "checkpoint_last.pth").is_file()


# ----------------------------------------------------------------------------- evaluation
def test_evaluate_matcher_writes_table_json_plot(photos, tmp_path, capsys):
    from agnostic_reloc.eval.homography_pairs import make_pairs
    from agnostic_reloc.train.evaluate import evaluate_matcher

    pairs = make_pairs(photos[:1], 1, seed=0, conf={"size": (256, 192), "difficulty_range": (0.0, 0.2)})
    res = evaluate_matcher(["official"], ["orb-ss"], pairs=pairs, out_dir=str(tmp_path),
                           conf={"max_keypoints": 128, "device": "cpu"})
    assert set(res["official"]["orb-ss"]["homography"]) == {"auc@3", "auc@5", "auc@10"}
    assert "orb-ss" in capsys.readouterr().out
    assert json.loads((tmp_path / "results.json").read_text())["results"] == res
    assert (tmp_path / "auc.png").stat().st_size > 1000


def test_world_posed_pairs_are_revisits_with_pose_auc(photos, tmp_path):
    """Posed revisit pairs of a small world: relative pose from ground truth, lap 2 darker; pose AUC reported."""
    from agnostic_reloc.geometry import rotation_angle_deg
    from agnostic_reloc.train.evaluate import evaluate_matcher, world_posed_pairs

    world = {"camera": {"width": 320, "height": 240, "f": 250.0}, "trajectory": {"frames_per_lap": 30}}
    posed = world_posed_pairs(3, seed=1, conf=world)
    assert 1 <= len(posed) <= 3 and len({p["name"] for p in posed}) == len(posed)
    for p in posed:
        assert p["image0"].shape == p["image1"].shape == (240, 320, 3)
        assert np.linalg.norm(p["T_0to1"][:3, 3]) <= 1.0 and rotation_angle_deg(p["T_0to1"]) <= 30.0
        assert p["image1"].mean() < p["image0"].mean()  # the lap-2 view is the darker one
    res = evaluate_matcher(["official"], ["orb-ss"], posed=posed[:1], conf={"max_keypoints": 256, "device": "cpu"})
    assert set(res["official"]["orb-ss"]["pose"]) == {"auc@5", "auc@10", "auc@20"}
    with pytest.raises(ValueError, match="positive"):
        world_posed_pairs(0)
