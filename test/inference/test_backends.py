"""Inference backends on real photos: the runtimes compute what torch computes, and fail over to torch."""

from __future__ import annotations

import sys
import warnings

import cv2
import numpy as np
import pytest
import torch

from agnostic_reloc.features.detectors import detect
from agnostic_reloc.inference import (
    BackboneRunner,
    DenseMapRunner,
    LayerRunner,
    resolve_backend,
)
from agnostic_reloc.inference.backends import (
    AUTO_ORDER,
    check_graph_folder,
    graph_folder,
    graph_key,
    missing_packages,
)
from agnostic_reloc.matching.lightglue import LightGlueMatcher, build_network

RUNTIMES = [pytest.param(b, marks=pytest.mark.skipif(bool(missing_packages(b)),
                                                     reason=f"{b} not installed: pip install {b} onnx"))
            for b in AUTO_ORDER]
INSTALLED = [b for b in AUTO_ORDER if not missing_packages(b)]


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 [H x W x 3] -> [1 x 3 x H x W] float in [0, 1]."""
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh export cache for this module: every graph is exported once per test run."""
    return tmp_path_factory.mktemp("graph_cache")


@pytest.fixture(scope="module")
def torch_aliked():
    """The reference: ALIKED in torch fp32 (the shared `aliked` fixture runs on the default backend)."""
    from agnostic_reloc.features.aliked import get_aliked

    return get_aliked("aliked-n16", "cpu", backend="torch")


@pytest.fixture(scope="module")
def orb_pair(graf):
    """~1000 ORB keypoints per graf image, described by ALIKED, as LightGlueMatcher inputs. Dense evaluation: these
    tests isolate LightGlue's runtimes (on the sparse path's descriptors, equal to 1e-5, one near-tie assignment
    flips on this pair: 99.3 % identical)."""
    from agnostic_reloc.features.aliked import get_aliked

    dense = get_aliked("aliked-n16", "cpu", backend="torch", evaluation="dense")
    k0, k1 = detect(graf[0], "orb", 1000), detect(graf[1], "orb", 1000)
    d0, d1 = dense.describe([graf[0], graf[1]], [k0, k1], sampling="full")
    return ({"keypoints": k0.xy, "descriptors": d0, "image_size": graf[0].shape[1::-1]},
            {"keypoints": k1.xy, "descriptors": d1, "image_size": graf[1].shape[1::-1]})


@pytest.fixture(scope="module")
def torch_matches(orb_pair):
    """The reference: torch fp32 matcher (adaptive depth and width on, pairs one at a time) and its matches."""
    matcher = LightGlueMatcher(device="cpu", backend="torch")
    return matcher, matcher.match(orb_pair[0], [orb_pair[1]])[0]


def same_matches(a, b) -> float:
    """Share of identical matches (intersection over union) of two PairMatches."""
    sa, sb = set(map(tuple, a.matches.tolist())), set(map(tuple, b.matches.tolist()))
    return len(sa & sb) / max(len(sa | sb), 1)


def test_backend_choice():
    assert resolve_backend("torch", "cpu") == "torch"
    assert resolve_backend("auto", "cuda") == "torch"  # CUDA keeps torch (fp16 there), without a warning
    if INSTALLED:
        assert resolve_backend("auto", "cpu") == INSTALLED[0]
    with pytest.warns(RuntimeWarning, match="CPU only"):
        assert resolve_backend("onnxruntime", "cuda") == "torch"
    with pytest.raises(ValueError, match="unknown inference backend 'tensorrt'"):
        resolve_backend("tensorrt", "cpu")


def test_missing_runtime_falls_back_to_torch_with_one_warning(monkeypatch, torch_aliked, cache):
    aliked = torch_aliked
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    with pytest.warns(RuntimeWarning, match="'openvino' needs openvino") as record:
        runner = DenseMapRunner(aliked.model, backend="openvino", cache_dir=cache)
    assert len(record) == 1 and runner.backend == "torch"
    images = torch.rand(1, 3, 64, 96)
    features, scores = runner(images)
    assert torch.equal(features, aliked.dense_maps(images)[0])

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.warns(RuntimeWarning, match="no CPU inference runtime is installed") as record:
        assert LayerRunner(build_network("aliked"), cache_dir=cache).backend == "torch"
    assert len(record) == 1


@pytest.mark.parametrize("backend", RUNTIMES)
def test_dense_maps_equal_torch_at_any_size(backend, torch_aliked, graf, cache):
    aliked = torch_aliked
    runner = DenseMapRunner(aliked.model, backend=backend, cache_dir=cache)
    assert runner.backend == backend
    landscape = cv2.resize(graf[0], (320, 240), interpolation=cv2.INTER_AREA)
    # the graph is traced at 480x640: portrait and pyramid-level sizes must not inherit that shape
    for image in (landscape, np.ascontiguousarray(landscape.transpose(1, 0, 2)),
                  cv2.resize(landscape, (185, 139), interpolation=cv2.INTER_LINEAR)):
        images = image_tensor(image)
        features, scores = runner(images)
        ref_features, ref_scores = aliked.dense_maps(images)
        assert features.shape == ref_features.shape and scores.shape == ref_scores.shape
        assert (features - ref_features).abs().max() < 1e-4
        assert (scores - ref_scores).abs().max() < 1e-4


@pytest.mark.parametrize("backend", RUNTIMES)
def test_backbone_equals_torch_at_any_size(backend, torch_aliked, graf, cache):
    """The backbone graph (deformable blocks through GridSample) on the runtime, asked for by name."""
    model = torch_aliked.model
    runner = BackboneRunner(model, backend=backend, cache_dir=cache)
    assert runner.backend == backend
    reference = BackboneRunner(model, backend="torch")
    landscape = cv2.resize(graf[0], (320, 224), interpolation=cv2.INTER_AREA)
    for image in (landscape, np.ascontiguousarray(landscape.transpose(1, 0, 2)), landscape[:96, :160]):
        images = image_tensor(np.ascontiguousarray(image))
        for ours, ref in zip(runner(images), reference(images)):
            assert ours.shape == ref.shape
            assert (ours - ref).abs().max() < 1e-4


def test_auto_backend_is_per_network(torch_aliked, cache):
    """'auto' runs ALIKED's backbone in torch (measured fastest on CPU) and the dense map on the first runtime."""
    model = torch_aliked.model
    assert BackboneRunner(model, cache_dir=cache).backend == "torch"
    assert resolve_backend("auto", "cpu", order=("torch",)) == "torch"
    if INSTALLED:
        assert DenseMapRunner(model, cache_dir=cache).backend == INSTALLED[0]


def test_fused_cross_attention_equals_kornia(orb_pair):
    """Our cross-attention (one fused attention per direction) computes kornia's CrossBlock, with and without a
    mask (pruned points, a point with nothing to attend to), on the states of a real pair."""
    from agnostic_reloc.inference.lightglue_runtime import cross_attention

    net = build_network("aliked").eval()
    block = net.transformers[0].cross_attn
    with torch.inference_mode():
        x0, x1 = (net.input_proj(torch.as_tensor(f["descriptors"])[None]) for f in orb_pair)
        for a, b in zip(cross_attention(block, x0, x1), block(x0, x1)):
            assert (a - b).abs().max() < 1e-4
        torch.manual_seed(0)
        mask = (torch.rand(len(x0[0]), len(x1[0])) > 0.3)[None, None]
        mask[..., 5, :] = False  # query point 5 sees no candidate point
        ours, ref = cross_attention(block, x0, x1, mask), block(x0, x1, mask)
        for a, b in zip(ours, ref):
            assert torch.isfinite(a).all() and (a - b).abs().max() < 1e-4


def test_auto_lightglue_backend_follows_the_thread_count(cache):
    """'auto' runs LightGlue in torch with one intra-op thread (measured fastest there, idle and loaded) and on the
    first installed runtime with more."""
    net = build_network("aliked")
    assert LayerRunner(net, threads=1, cache_dir=cache).backend == "torch"
    assert LayerRunner(net, threads=2, cache_dir=cache).backend == (INSTALLED[0] if INSTALLED else "torch")


@pytest.mark.parametrize("backend", RUNTIMES)
def test_lightglue_layers_give_the_torch_matches(backend, orb_pair, torch_matches):
    f0, f1 = orb_pair
    _, ref = torch_matches
    matcher = LightGlueMatcher(device="cpu", backend=backend)  # adaptive depth + width driven around the graphs
    assert matcher.backend == backend
    ours = matcher.match(f0, [f1])[0]
    assert len(ref.matches) > 200
    assert ours.stop_layer == ref.stop_layer
    assert same_matches(ours, ref) >= 0.99



@pytest.mark.parametrize("backend", RUNTIMES)
def test_lightglue_from_two_threads_at_once_gives_the_torch_matches(backend, orb_pair, torch_matches):
    """A relocalization query matches two candidates side by side (reloc.parallel): calls of one matcher from two
    threads at once (OpenVINO: one infer request per thread, two streams) give each thread its own pair's matches."""
    from concurrent.futures import ThreadPoolExecutor

    f0, f1 = orb_pair
    _, ref = torch_matches
    swapped = LightGlueMatcher(device="cpu", backend="torch").match(f1, [f0])[0]
    matcher = LightGlueMatcher(device="cpu", backend=backend)
    jobs = [(f0, f1), (f1, f0)] * 2
    with ThreadPoolExecutor(2) as pool:
        out = list(pool.map(lambda p: matcher.match(p[0], [p[1]])[0], jobs))
    for (a, _), ours in zip(jobs, out):
        assert same_matches(ours, ref if a is f0 else swapped) >= 0.99


@pytest.mark.skipif(not INSTALLED, reason="no runtime installed: pip install openvino onnx")
def test_finetuned_weights_get_their_own_graphs(tmp_path, orb_pair, torch_matches, cache):
    net = build_network("aliked")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.transformers.parameters():
            p.mul_(1 + 0.02 * torch.randn_like(p))  # a "fine-tuned" checkpoint: every layer changed
    ckpt = tmp_path / "finetuned.pth"
    torch.save({"model": net.state_dict(), "step": 7}, ckpt)
    official = torch_matches[0]
    tuned = LightGlueMatcher(device="cpu", weights=str(ckpt), backend="torch")
    backend = "onnxruntime" if "onnxruntime" in INSTALLED else INSTALLED[0]  # the quicker export
    keys = [graph_key("lightglue-h4-layers", m.net.transformers, backend) for m in (official, tuned)]
    assert graph_folder(keys[0], cache) != graph_folder(keys[1], cache)

    f0, f1 = orb_pair
    ref = tuned.match(f0, [f1])[0]
    ours = LightGlueMatcher(device="cpu", weights=str(ckpt), backend=backend).match(f0, [f1])[0]
    assert same_matches(ours, ref) >= 0.99


@pytest.mark.skipif(not INSTALLED, reason="no runtime installed: pip install openvino onnx")
def test_corrupt_cached_graph_is_rebuilt_with_one_log_line(torch_aliked, cache, caplog):
    aliked = torch_aliked
    backend = "onnxruntime" if "onnxruntime" in INSTALLED else INSTALLED[0]
    runner = DenseMapRunner(aliked.model, backend=backend, cache_dir=cache)  # cached by the test above
    folder = runner.graph.path.parent
    weights_file = max((p for p in folder.iterdir() if p.name != "manifest.json"), key=lambda p: p.stat().st_size)
    data = bytearray(weights_file.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)  # flipped weights: still parses, silently wrong
    weights_file.write_bytes(bytes(data))
    assert "corrupt" in check_graph_folder(folder, graph_key(f"{aliked.model.model_name}-dense", aliked.model,
                                                                backend))

    with caplog.at_level("INFO", logger="agnostic_reloc"), warnings.catch_warnings():
        warnings.simplefilter("error")  # a rebuild is not a fallback: no warning
        rebuilt = DenseMapRunner(aliked.model, backend=backend, cache_dir=cache)
    lines = [r.getMessage() for r in caplog.records if "Rebuilding" in r.getMessage()]
    assert len(lines) == 1 and "corrupt" in lines[0] and rebuilt.backend == backend
    images = torch.rand(1, 3, 96, 128)
    assert (rebuilt(images)[0] - aliked.dense_maps(images)[0]).abs().max() < 1e-4
    other_key = {**graph_key(f"{aliked.model.model_name}-dense", aliked.model, backend), "torch": "0.0"}
    assert check_graph_folder(folder, other_key).startswith("stale")


def test_stage_threads_default_and_bad_value():
    """Each engine stage gets half the usable cores by default, an explicit count as given, and a negative count
    is a clear error (the node's `threads`, the CLI's --threads)."""
    from agnostic_reloc.inference.backends import stage_threads

    assert stage_threads(0) >= 1 and stage_threads(3) == 3
    with pytest.raises(ValueError, match="threads must be >= 0"):
        stage_threads(-1)


def test_cli_refuses_negative_threads(capsys):
    from agnostic_reloc.cli import main

    assert main(["--threads", "-2", "replay", "no_such_bag", "--out", "unused"]) == 1
    assert "threads must be >= 0" in capsys.readouterr().err
