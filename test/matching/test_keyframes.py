"""Keyframe matchers: one interface for the learned and classic modes, chosen once by the engine."""

from __future__ import annotations

import numpy as np

from agnostic_reloc.features.detectors import detect
from agnostic_reloc.loop.engine import Engine
from agnostic_reloc.matching.keyframes import HammingKeyframes, LightGlueKeyframes


def keyframe_pair(engine, graf, map_point_share: float):
    """graf1 / graf3 as keyframes; the candidate has map points on a share of its keypoints (NaN elsewhere)."""
    K = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
    k0, k1 = detect(graf[0], "orb", 1000), detect(graf[1], "orb", 1000)
    rng = np.random.default_rng(0)
    mp = np.where(rng.random((len(k1), 1)) < map_point_share, rng.normal(size=(len(k1), 3)) + [0, 0, 5], np.nan)
    q = engine.make_keyframe(0.0, graf[0], k0, np.eye(4), K)
    c = engine.make_keyframe(1.0, graf[1], k1, np.eye(4), K, mp.astype(np.float32))
    return q, c


def test_classic_mode_matches_orb_and_loads_no_lightglue(graf):
    engine = Engine({"device": "cpu", "matcher": {"name": "nn"}})
    assert isinstance(engine.matcher, HammingKeyframes) and engine.pipe.matcher is None
    q, c = keyframe_pair(engine, graf, 1.0)
    assert q.descriptors is None and q.orb_desc is not None
    pairs = engine.matcher.match(q, [c])[0]
    assert pairs.shape[1] == 2 and len(pairs) > 20
    assert pairs[:, 0].max() < len(q.keypoints) and pairs[:, 1].max() < len(c.keypoints)


def test_learned_mode_matches_the_candidates_map_points(graf):
    engine = Engine({"device": "cpu"})
    assert isinstance(engine.matcher, LightGlueKeyframes)
    q, c = keyframe_pair(engine, graf, 0.7)
    has = np.isfinite(c.map_points).all(1)
    pairs = engine.matcher.match(q, [c])[0]
    assert len(pairs) > 50 and has[pairs[:, 1]].all()  # PnP uses nothing else: only those were matched
    q, bare = keyframe_pair(engine, graf, 0.0)  # no map points at all: every keypoint is matched
    assert len(engine.matcher.match(q, [bare])[0]) > 50


def test_mutual_matches_tell_a_revisit_from_an_unrelated_view(graf, photos):
    """The pre-check that spares LightGlue: many mutual descriptor matches for graf1 / graf3 (a 40 deg viewpoint
    change), next to none for an unrelated photo; the engine refuses the unrelated candidate by name."""
    import cv2

    engine = Engine({"device": "cpu"})
    q, c = keyframe_pair(engine, graf, 0.7)
    floor = engine.conf["retrieval"]["mutual_min_cosine"]
    revisit = engine.matcher.mutual_matches(q, c, floor)
    other = next(p for p in photos if "graf" not in p.name.lower())
    image = np.ascontiguousarray(cv2.resize(cv2.imread(str(other))[:, :, ::-1], (640, 480)))
    K = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
    mp = np.full((1000, 3), 5.0, np.float32)
    kp = detect(image, "orb", 1000)
    unrelated = engine.make_keyframe(2.0, image, kp, np.eye(4), K, mp[:len(kp)])
    n_other = engine.matcher.mutual_matches(q, unrelated, floor)
    gate = engine.conf["retrieval"]["min_mutual_matches"]
    assert revisit >= 4 * gate > n_other
    assert engine._matchable(q, c) and not engine._matchable(q, unrelated)
    assert engine.acceptance.refused["too few mutual descriptor matches"] == 1
    classic = Engine({"device": "cpu", "matcher": {"name": "nn"}})
    assert classic.matcher.mutual_matches(q, unrelated, floor) is None  # Hamming is cheap: never gated
