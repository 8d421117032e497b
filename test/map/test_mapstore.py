"""KeyframeMap: validation on add, exact save/load round trip, atomic saves, corrupt-file errors, mmap."""

from __future__ import annotations

import os
import struct
import threading

import numpy as np
import pytest

from agnostic_reloc.features.keypoints import Keypoints
from agnostic_reloc.map.store import FORMAT_VERSION, KeyframeMap, MapFormatError
from agnostic_reloc.types import Keyframe

W, H, D, G = 640, 480, 128, 640


def random_pose(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = q, rng.normal(size=3) * 5
    return T


def make_kf(kid: int, rng: np.random.Generator, n: int | None = None, orb: bool = True, full: bool = True) -> Keyframe:
    n = int(rng.integers(20, 60)) if n is None else n
    kp = Keypoints(rng.uniform([0, 0], [W - 1, H - 1], size=(n, 2)), rng.integers(0, 8, n),
                   rng.random(n), rng.uniform(0, 360, n), rng.uniform(7, 30, n))
    kept = np.sort(rng.choice(n, size=n * 3 // 4, replace=False)).astype(np.int64)
    mp = rng.normal(size=(n, 3)).astype(np.float32)
    mp[rng.random(n) < 0.3] = np.nan
    ids = rng.integers(0, 10**6, n).astype(np.int64)
    ids[np.isnan(mp[:, 0])] = -1
    desc = rng.normal(size=(len(kept), D))
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    g = rng.normal(size=G).astype(np.float32)
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    return Keyframe(
        id=kid, stamp=0.1 * kid, keypoints=kp, T_map_cam=random_pose(rng), K=K, image_size=(W, H),
        n_slam=n - 5 if full else n, map_points=mp if full else None, map_point_ids=ids if full else None,
        kept=kept, descriptors=desc.astype(np.float16), global_desc=g / np.linalg.norm(g),
        orb_desc=rng.integers(0, 256, (len(kept), 32), dtype=np.uint8) if orb else None,
        orb_valid=(rng.random(len(kept)) < 0.9) if orb else None)


def assert_same(a: Keyframe, b: Keyframe) -> None:
    assert (a.id, a.stamp, a.n_slam, tuple(a.image_size)) == (b.id, b.stamp, b.n_slam, tuple(b.image_size))
    assert a.keypoints.scale_factor == b.keypoints.scale_factor
    for name in ("xy", "octave", "response", "angle", "size"):
        x, y = getattr(a.keypoints, name), getattr(b.keypoints, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    for name in ("T_map_cam", "K", "map_points", "map_point_ids", "kept", "descriptors", "global_desc",
                 "orb_desc", "orb_valid"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert np.asarray(x).dtype == np.asarray(y).dtype, name
            np.testing.assert_array_equal(x, y, err_msg=name)


@pytest.fixture
def kfs():
    rng = np.random.default_rng(0)
    out = [make_kf(i, rng) for i in range(6)]
    out.append(make_kf(6, rng, orb=False, full=False))  # optional fields absent
    out.append(make_kf(7, rng, n=1))
    return out


def build(kfs) -> KeyframeMap:
    m = KeyframeMap()
    for kf in kfs:
        m.add(kf)
    return m


def test_container_basics(kfs):
    m = build(kfs)
    assert len(m) == len(kfs) and 3 in m and 99 not in m and m.ids() == list(range(len(kfs)))
    with pytest.raises(ValueError, match="already in the map"):
        m.add(kfs[0])
    m.remove(2)
    assert 2 not in m and [k.id for k in m] == [0, 1, 3, 4, 5, 6, 7]
    ids, g = m.global_descriptors()
    assert ids.tolist() == [0, 1, 3, 4, 5, 6, 7] and g.shape == (7, G) and g.dtype == np.float32
    np.testing.assert_array_equal(g[1], kfs[1].global_desc)
    pids, pos = m.positions()
    np.testing.assert_array_equal(pos[2], kfs[3].T_map_cam[:3, 3])
    with pytest.raises(KeyError):
        m.get(2)
    assert m.memory_bytes() > 0
    m.clear()
    assert len(m) == 0


def test_global_descriptors_are_snapshots(kfs):
    m = build(kfs[:4])
    ids, g = m.global_descriptors()
    before = g.copy()
    m.add(kfs[4])
    m.remove(0)
    ids2, g2 = m.global_descriptors()
    assert ids.tolist() == [0, 1, 2, 3] and np.array_equal(g, before) and ids2.tolist() == [1, 2, 3, 4]
    assert not g.flags.writeable


@pytest.mark.parametrize("mmap", [True, False])
def test_round_trip_exact(kfs, tmp_path, mmap):
    path = tmp_path / "map.agrl"
    build(kfs).save(path)
    loaded = KeyframeMap.load(path, mmap=mmap, verify=True)
    assert loaded.ids() == [k.id for k in kfs]
    for kf in kfs:
        assert_same(kf, loaded.get(kf.id))
    ids, g = loaded.global_descriptors()
    assert np.array_equal(g, np.stack([k.global_desc for k in kfs]))


def test_mmap_does_not_read_descriptors(kfs, tmp_path):
    path = tmp_path / "map.agrl"
    build(kfs).save(path)
    m = KeyframeMap.load(path, mmap=True)
    kf = m.get(3)
    assert isinstance(kf.descriptors, np.memmap) and isinstance(kf.kept, np.memmap)
    assert not kf.descriptors.flags.writeable
    in_ram = KeyframeMap.load(path, mmap=False).memory_bytes()
    assert m.memory_bytes() <= in_ram - sum(k.descriptors.nbytes for k in kfs)


def test_add_after_load_and_overwrite_same_path(kfs, tmp_path):
    path = tmp_path / "map.agrl"
    build(kfs[:5]).save(path)
    m = KeyframeMap.load(path, mmap=True)
    m.remove(1)
    for kf in kfs[5:]:
        m.add(kf)
    m.save(path)  # overwrites the memory-mapped file
    assert_same(m.get(0), kfs[0])  # old mapping still valid
    again = KeyframeMap.load(path)
    assert again.ids() == [0, 2, 3, 4, 5, 6, 7]
    for kid in again.ids():
        assert_same(again.get(kid), kfs[kid])
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_rejects_malformed_keyframes(kfs):
    rng = np.random.default_rng(1)
    m = KeyframeMap()
    empty = make_kf(10, rng)
    empty.keypoints = Keypoints(np.zeros((0, 2)))
    with pytest.raises(ValueError, match="no keypoints"):
        m.add(empty)
    nan_pose = make_kf(11, rng)
    nan_pose.T_map_cam = nan_pose.T_map_cam.copy()
    nan_pose.T_map_cam[0, 3] = np.nan
    with pytest.raises(ValueError, match="finite 4x4"):
        m.add(nan_pose)
    bad_mp = make_kf(12, rng)
    bad_mp.map_points = bad_mp.map_points[:-1]
    with pytest.raises(ValueError, match="map_points has shape"):
        m.add(bad_mp)
    bad_desc = make_kf(13, rng)
    bad_desc.descriptors = bad_desc.descriptors[:-2]
    with pytest.raises(ValueError, match="descriptors for"):
        m.add(bad_desc)
    bad_orb = make_kf(14, rng)
    bad_orb.orb_desc = bad_orb.orb_desc[:-1]
    with pytest.raises(ValueError, match="orb_desc has shape"):
        m.add(bad_orb)
    bad_kept = make_kf(15, rng)
    bad_kept.kept = bad_kept.kept + 1000
    with pytest.raises(ValueError, match="kept indices"):
        m.add(bad_kept)
    m.add(kfs[0])
    other_dim = make_kf(16, rng)
    other_dim.descriptors = np.zeros((len(other_dim.kept), 64), np.float16)
    with pytest.raises(ValueError, match="same D"):
        m.add(other_dim)
    assert len(m) == 1


def _corruptions(path: str):
    data = open(path, "rb").read()
    hlen = struct.unpack_from("<I", data, 12)[0]
    flipped = bytearray(data)
    flipped[24 + hlen // 2] ^= 0x40
    future = bytearray(data)
    struct.pack_into("<I", future, 8, FORMAT_VERSION + 1)
    body = bytearray(data)
    body[-100] ^= 0xFF  # inside the last array (orb_valid or global data): caught by verify=True
    return {
        "truncated": (data[: len(data) // 2], "truncated"),
        "header_flip": (bytes(flipped), "header crc32 mismatch"),
        "magic": (b"NOTAMAP\0" + data[8:], "wrong magic"),
        "future": (bytes(future), f"unsupported format version {FORMAT_VERSION + 1}.*reads versions 1"),
        "empty": (b"", "wrong magic"),
    }


def test_corrupt_files_raise_clear_errors(kfs, tmp_path):
    keep = tmp_path / "keep.agrl"
    build(kfs).save(keep)
    keep_bytes = keep.read_bytes()
    path = tmp_path / "map.agrl"
    build(kfs[:3]).save(path)
    build(kfs).save(path)  # save over an existing map
    for label, (content, message) in _corruptions(str(path)).items():
        bad = tmp_path / f"{label}.agrl"
        bad.write_bytes(content)
        with pytest.raises(MapFormatError, match=message) as info:
            KeyframeMap.load(bad)
        assert str(bad) in str(info.value), label
    with pytest.raises(MapFormatError, match="does not exist"):
        KeyframeMap.load(tmp_path / "nope.agrl")
    assert keep.read_bytes() == keep_bytes
    assert_same(KeyframeMap.load(keep).get(4), kfs[4])


def test_crc_of_mapped_arrays_checked_with_verify(kfs, tmp_path):
    path = tmp_path / "map.agrl"
    build(kfs).save(path)
    data = bytearray(path.read_bytes())
    import json

    hlen = struct.unpack_from("<I", data, 12)[0]
    spec = json.loads(bytes(data[24:24 + hlen]))["arrays"]["descriptors"]
    data[spec["offset"] + 10] ^= 0x01
    path.write_bytes(bytes(data))
    KeyframeMap.load(path, mmap=True)  # mapped arrays are not checked by default
    with pytest.raises(MapFormatError, match="crc32 mismatch in array descriptors"):
        KeyframeMap.load(path, mmap=True, verify=True)
    with pytest.raises(MapFormatError, match="crc32 mismatch in array descriptors"):
        KeyframeMap.load(path, mmap=False)


def test_failed_save_leaves_previous_file(kfs, tmp_path):
    path = tmp_path / "map.agrl"
    build(kfs[:4]).save(path)
    before = path.read_bytes()
    # 1) a keyframe array that cannot be serialised (modified after add)
    m = build(kfs[:4])
    m.add(make_kf(20, np.random.default_rng(5)))
    m.get(20).map_point_ids = np.array(["not-an-id"] * len(m.get(20).keypoints), dtype=object)
    with pytest.raises(ValueError, match="keyframe 20: cannot store map_point_ids"):
        m.save(path)
    assert path.read_bytes() == before
    # 2) disk full mid-write: the tmp file is a link to /dev/full (ENOSPC on write)
    if os.path.exists("/dev/full"):
        tmp = f"{path}.tmp-{os.getpid()}"
        os.symlink("/dev/full", tmp)
        with pytest.raises(OSError):
            build(kfs).save(path)
        assert path.read_bytes() == before and not os.path.lexists(tmp)
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_concurrent_add_and_read(tmp_path):
    rng = np.random.default_rng(3)
    kfs = [make_kf(i, rng, n=10) for i in range(200)]
    m = KeyframeMap()
    errors = []

    def writer():
        for kf in kfs:
            m.add(kf)

    def reader():
        try:
            for _ in range(200):
                ids, g = m.global_descriptors()
                assert len(ids) == len(g)
                for kid in ids[-3:]:
                    m.get(int(kid))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(m) == 200
    m.save(tmp_path / "m.agrl")
    assert len(KeyframeMap.load(tmp_path / "m.agrl")) == 200


# ---------------------------------------------------------------------------------------------------- corrections
def test_corrections_round_trip_exactly(kfs, tmp_path):
    rng = np.random.default_rng(4)
    corrections = {kf.id: random_pose(rng) for kf in kfs if kf.id != 3}  # keyframe 3 has none
    m = build(kfs)
    assert m.corrections() == {}
    m.set_corrections(corrections)
    m.set_corrections({2: corrections[2]})  # setting again replaces, the others stay
    path = tmp_path / "map.agrl"
    m.save(path)
    for mmap in (True, False):
        loaded = KeyframeMap.load(path, mmap=mmap, verify=True)
        got = loaded.corrections()
        assert list(got) == [kf.id for kf in kfs if kf.id != 3]  # insertion order
        for kid, T in corrections.items():
            assert got[kid].dtype == np.float64 and np.array_equal(got[kid], T)
        for kf in kfs:
            assert_same(kf, loaded.get(kf.id))
    # corrections of a loaded map are saved again (and follow removals)
    loaded.remove(5)
    loaded.add(make_kf(20, rng))
    loaded.set_corrections({20: corrections[0]})
    loaded.save(path)
    again = KeyframeMap.load(path).corrections()
    assert 5 not in again and 3 not in again and np.array_equal(again[20], corrections[0])
    assert np.array_equal(again[6], corrections[6])
    with pytest.raises(ValueError, match="not in the map"):
        loaded.set_corrections({99: np.eye(4)})
    with pytest.raises(ValueError, match="finite 4x4"):
        loaded.set_corrections({0: np.full((4, 4), np.nan)})


def test_previous_file_without_corrections_still_loads(tmp_path):
    """test/map/data/map_v1.agrl was written by the writer before corrections were stored (three keyframes,
    make_kf(i, default_rng(7), n=8)): it loads unchanged, with no corrections, and gains them when saved again."""
    path = os.path.join(os.path.dirname(__file__), "data", "map_v1.agrl")
    old = KeyframeMap.load(path, verify=True)
    rng = np.random.default_rng(7)
    expected = [make_kf(i, rng, n=8) for i in range(3)]
    assert old.ids() == [0, 1, 2] and old.corrections() == {}
    for kf in expected:
        assert_same(kf, old.get(kf.id))
    T = random_pose(rng)
    old.set_corrections({1: T})
    old.save(tmp_path / "new.agrl")
    new = KeyframeMap.load(tmp_path / "new.agrl")
    assert list(new.corrections()) == [1] and np.array_equal(new.corrections()[1], T)
    for kf in expected:
        assert_same(kf, new.get(kf.id))
