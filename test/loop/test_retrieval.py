"""RetrievalIndex (exact and HNSW, exclusions, removal) and the pooled global descriptor on real photos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from agnostic_reloc.loop.retrieval import RetrievalIndex, global_descriptor, global_descriptor_dim

DIM = global_descriptor_dim(128)


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_finds_itself_and_noisy_copy():
    rng = np.random.default_rng(0)
    x = unit(rng, 500)
    index = RetrievalIndex(dim=DIM)
    index.add_batch(range(100, 600), x)
    for i in (0, 17, 499):
        res = index.search(x[i], 5)
        assert res[0][0] == 100 + i and res[0][1] == pytest.approx(1.0, abs=1e-5)
        assert len(res) == 5 and all(a[1] >= b[1] for a, b in zip(res, res[1:]))
        noisy = x[i] + 0.5 / np.sqrt(DIM) * rng.standard_normal(DIM)
        assert index.search(noisy, 1)[0][0] == 100 + i
    assert RetrievalIndex(dim=DIM).search(x[0], 3) == []
    with pytest.raises(ValueError, match="already"):
        index.add(100, x[0])
    with pytest.raises(ValueError, match="vectors must be"):
        index.add_batch([1], x[:2])


def test_exclusions_and_removal():
    rng = np.random.default_rng(1)
    base = unit(rng, 1)[0]
    x = base + 0.3 * unit(rng, 200)  # a trajectory: all similar, the query's neighbours most similar
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = RetrievalIndex(dim=DIM, search_margin=2)
    index.add_batch(range(200), x, stamps=np.arange(200) * 0.5)  # 2 Hz keyframes
    q = x[150]
    assert index.search(q, 1)[0][0] == 150
    res = index.search(q, 10, stamp=75.0, window=10.0)  # skip keyframes within 10 s of the query
    assert len(res) == 10 and all(abs(kid * 0.5 - 75.0) >= 10.0 for kid, _ in res)
    res = index.search(q, 10, query_id=150, min_id_gap=30)
    assert len(res) == 10 and all(abs(kid - 150) >= 30 for kid, _ in res)
    res = index.search(q, 10, exclude=set(range(100, 200)), covisible=[0, 1])
    assert len(res) == 10 and all(2 <= kid < 100 for kid, _ in res)
    res = index.search(q, 10, exclude=lambda kid: kid % 2 == 0)
    assert len(res) == 10 and all(kid % 2 for kid, _ in res)
    assert len(index.search(q, 10, exclude=set(range(195)))) == 5  # fewer allowed than k
    for kid in range(150, 200):
        index.remove(kid)  # triggers a compaction past compact_fraction
    assert len(index) == 150 and 150 not in index
    assert all(kid < 150 for kid, _ in index.search(q, 20))
    with pytest.raises(KeyError):
        index.remove(150)
    index.add(150, x[150])
    assert index.search(q, 1)[0][0] == 150


def test_hnsw_recall_vs_exact():
    rng = np.random.default_rng(2)
    x = unit(rng, 2000)
    exact = RetrievalIndex(dim=DIM)
    hnsw = RetrievalIndex(dim=DIM, exact_below=100)
    exact.add_batch(range(2000), x)
    hnsw.add_batch(range(1000), x[:1000])
    for i in range(1000, 2000):  # incremental adds after the switch
        hnsw.add(i, x[i])
    assert exact.mode == "exact" and hnsw.mode == "hnsw"
    queries = np.concatenate([x[rng.choice(2000, 50)] + 0.02 * unit(rng, 50), unit(rng, 50)])
    recall = [len({k for k, _ in exact.search(q, 10)} & {k for k, _ in hnsw.search(q, 10)}) / 10 for q in queries]
    assert np.mean(recall) >= 0.9, np.mean(recall)
    ids, vecs = np.arange(2000), x
    hnsw.rebuild(ids[::2], vecs[::2])
    assert len(hnsw) == 1000 and hnsw.search(x[10], 1)[0][0] == 10


def test_global_descriptor_basics():
    rng = np.random.default_rng(3)
    desc = unit(rng, 300, 128)
    xy = rng.uniform([0, 0], [639, 479], (300, 2))
    g = global_descriptor(desc, xy, (640, 480))
    assert g.shape == (DIM,) and g.dtype == np.float32 and np.linalg.norm(g) == pytest.approx(1, abs=1e-5)
    assert np.array_equal(g, global_descriptor(desc.copy(), xy.copy(), (640, 480)))  # deterministic
    for conf in ({"grid": (2, 2)}, {"pooling": "mean", "grid": (2, 2)}):
        gg = global_descriptor(desc, xy, (640, 480), conf)
        assert gg.shape == (global_descriptor_dim(128, conf),) and np.linalg.norm(gg) == pytest.approx(1, abs=1e-5)
    empty = global_descriptor(np.zeros((0, 128)), np.zeros((0, 2)), (640, 480))
    assert empty.shape == (DIM,) and not empty.any()
    with pytest.raises(ValueError, match="xy must be"):
        global_descriptor(desc, xy[:5], (640, 480))
    with pytest.raises(ValueError, match="unknown pooling"):
        global_descriptor(desc, xy, (640, 480), {"pooling": "vlad"})


def test_global_descriptor_overlapping_crops(photos, aliked):
    """Two overlapping crops (~64% shared area) of one photo are closer than crops of other photos.

    Held-out photos (the pooling was chosen on photos[::2]). One miss in five is tolerated: baboon.jpg
    (fur texture) scores 0.28 with its own other crop vs 0.30 with aloeR.jpg's.
    """
    from agnostic_reloc.io.image import load_image

    chosen = photos[1::2][:5]  # not the photos the pooling was chosen on (photos[::2])
    A, B = [], []
    for path in chosen:
        img = load_image(path)
        h, w = img.shape[:2]
        s = 400 / max(h, w)
        img = cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        h, w = img.shape[:2]
        for crop, out in ((img[: int(h * 0.85), : int(w * 0.75)], A), (img[int(h * 0.15):, int(w * 0.25):], B)):
            kpts, desc = aliked.detect_and_describe(crop, 500)
            out.append(global_descriptor(desc, kpts.xy, (crop.shape[1], crop.shape[0])))
    A, B = np.stack(A), np.stack(B)
    S = A @ B.T
    n = len(chosen)
    misses = []
    for i in range(n):
        others = max(max(S[i, j], S[j, i], float(A[i] @ A[j]), float(B[i] @ B[j])) for j in range(n) if j != i)
        if S[i, i] <= others:
            misses.append(f"{chosen[i].name}: same-photo {S[i, i]:.3f} <= other photo {others:.3f}")
    assert len(misses) <= 1, misses
    assert np.diag(S).mean() > S[~np.eye(n, dtype=bool)].mean() + 0.15


def test_search_and_rebuild_leave_the_callers_torch_threads_alone():
    """faiss and torch share one OpenMP runtime whose thread count is per calling thread: a search (1 faiss
    thread) or a build (all cores) must not change the count the caller's networks then run with."""
    import torch

    before = torch.get_num_threads()
    want = 3 if before != 3 else 2
    torch.set_num_threads(want)
    try:
        rng = np.random.default_rng(0)
        index = RetrievalIndex(dim=32, exact_below=4)  # HNSW once rebuilt with >= 4 entries
        vecs = rng.normal(size=(6, 32)).astype(np.float32)
        index.rebuild(list(range(6)), vecs, [float(i) for i in range(6)])
        assert torch.get_num_threads() == want
        assert index.search(vecs[2], 2)[0][0] == 2
        assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(before)
