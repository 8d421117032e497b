"""ALIKED's descriptors from the backbone and the pixels SDDH reads equal those of kornia's dense map."""

import cv2
import numpy as np
import pytest
import torch
from kornia.feature.aliked.aliked import DeformableConv2d

from agnostic_reloc.features.aliked import AlikedExtractor, get_aliked
from agnostic_reloc.features.aliked_sparse import deform_conv
from agnostic_reloc.features.detectors import detect
from agnostic_reloc.features.keypoints import Keypoints
from agnostic_reloc.matching.lightglue import LightGlueMatcher


@pytest.fixture(scope="module")
def extractors():
    """The same torch fp32 network evaluated both ways."""
    return (get_aliked("aliked-n16", "cpu", backend="torch", evaluation="dense"),
            get_aliked("aliked-n16", "cpu", backend="torch", evaluation="sparse"))


def test_deform_conv_equals_kornia(extractors):
    model = extractors[0].model
    dcns = [m for m in model.modules() if isinstance(m, DeformableConv2d)]
    assert dcns, "aliked-n16 has deformable blocks"
    torch.manual_seed(0)
    with torch.inference_mode():
        for dcn in dcns:
            for h, w in ((24, 40), (37, 19)):  # landscape and portrait, odd sizes: offsets clamp by max(h, w)
                x = torch.randn(1, dcn.offset_conv.in_channels, h, w)
                ref = dcn(x)
                assert (deform_conv(dcn, x) - ref).abs().max() < 1e-4 * ref.abs().max()


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (371, 250)])
def test_sparse_descriptors_equal_dense(extractors, graf, size):
    """ORB keypoints of all 8 octaves (octave sampling, so every pyramid level's map), border keypoints included."""
    dense, sparse = extractors
    image = np.ascontiguousarray(cv2.resize(graf[0], size, interpolation=cv2.INTER_AREA))
    kpts = detect(image, "orb", 1000)
    h, w = image.shape[:2]
    corners = Keypoints(np.array([[0, 0], [w - 1, h - 1], [0.4, h - 1], [w - 1, 0.6], [1.5, 2.5]], np.float32),
                        octave=np.array([0, 0, 3, 7, 1]))
    kpts = Keypoints.concat([kpts, corners])
    ref = dense.describe([image], [kpts])[0]
    out = sparse.describe([image], [kpts])[0]
    assert out.shape == ref.shape == (len(kpts), 128)
    assert len(np.unique(kpts.octave)) == 8
    assert (out - ref).abs().max() < 1e-4
    assert torch.allclose(out.norm(dim=1), torch.ones(len(out)), atol=1e-5)


def test_sparse_gives_the_same_lightglue_matches(extractors, graf):
    """The acceptance bar of an accelerated path: >= 99% of LightGlue's matches identical."""
    dense, sparse = extractors
    k0, k1 = detect(graf[0], "orb", 1000), detect(graf[1], "orb", 1000)
    matcher = LightGlueMatcher(device="cpu", backend="torch")
    results = []
    for ex in (dense, sparse):
        d0, d1 = ex.describe([graf[0], graf[1]], [k0, k1])
        f0 = {"keypoints": k0.xy, "descriptors": d0, "image_size": graf[0].shape[1::-1]}
        f1 = {"keypoints": k1.xy, "descriptors": d1, "image_size": graf[1].shape[1::-1]}
        results.append(set(map(tuple, matcher.match(f0, [f1])[0].matches.tolist())))
    assert len(results[0]) > 100
    assert len(results[0] & results[1]) / len(results[0] | results[1]) >= 0.99


def test_batched_and_empty(extractors, graf):
    """Same-size images in one backbone batch give each image's own descriptors; no keypoints, no rows."""
    _, sparse = extractors
    k0 = detect(graf[0], "orb", 300)
    empty = Keypoints(np.zeros((0, 2), np.float32))
    both = sparse.describe([graf[0], graf[1]], [k0, empty])
    assert both[1].shape == (0, 128)
    assert (both[0] - sparse.describe([graf[0]], [k0])[0]).abs().max() < 1e-5


def test_pyramid_levels_shared_by_threads_give_the_same_descriptors(graf):
    """`workers`: the levels are described on two threads (the helper takes levels only while `share_when`
    allows, as the engine's keyframe stage does while the loop stage idles); the descriptors are those of one
    thread, bit for bit, whichever thread described which level."""
    ex = get_aliked("aliked-n16", "cpu")
    kpts = detect(graf[0], "orb", 1000)
    assert len(np.unique(kpts.octave)) == 8
    ref = ex.describe([graf[0]], [kpts])[0]
    calls = []

    def every_other() -> bool:  # the other core is free for every second look
        calls.append(1)
        return len(calls) % 2 == 0

    for share_when in (None, every_other, lambda: False):
        out = ex.describe([graf[0]], [kpts], workers=2, share_when=share_when)[0]
        assert torch.equal(out, ref)
    assert calls, "the helper asked whether it may run"
    desc, extra, _ = ex.describe_and_detect(graf[0], kpts, 100, workers=2)  # the query ensemble's path
    assert len(extra) > 0 and (desc - ref).abs().max() < 1e-5


def test_unknown_evaluation_is_named():
    with pytest.raises(ValueError, match="unknown evaluation 'fast'"):
        AlikedExtractor(device="cpu", backend="torch", evaluation="fast")


def test_variants_outside_the_released_models_are_refused():
    """DCNv2 (masked) convolutions and a conv2d-aggregating or masked SDDH are not what SparseSddh / deform_conv
    implement: they say so instead of computing something else."""
    from types import SimpleNamespace

    from kornia.feature.aliked.aliked import SDDH

    from agnostic_reloc.features.aliked_sparse import SparseSddh

    masked = DeformableConv2d(8, 8, mask=True)
    with pytest.raises(ValueError, match="DCNv1 with stride 1"):
        deform_conv(masked, torch.rand(1, 8, 16, 16))
    for head in (SDDH(32, 3, 8, conv2d=True), SDDH(32, 3, 8, mask=True)):
        with pytest.raises(ValueError, match="weighted aggregation and no mask"):
            SparseSddh(SimpleNamespace(desc_head=head))
