"""Ground-truth world generator: determinism, exact rendering geometry, simulated SLAM output, save/load."""

from __future__ import annotations

import numpy as np
import pytest

SMALL = {"camera": {"width": 320, "height": 240, "f": 250.0}}


@pytest.fixture(scope="module")
def mixed(photos):
    """A short mixed sequence (two laps + kidnapped segments) at 320x240."""
    from agnostic_reloc.world import make_sequence

    return make_sequence(seed=1, profile="mixed", n_frames=60, conf=SMALL, progress=False)


@pytest.fixture(scope="module")
def scene(photos):
    from agnostic_reloc.world import make_scene

    return make_scene(5)


def _inv(T):
    Ti = np.eye(4)
    Ti[:3, :3] = T[:3, :3].T
    Ti[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return Ti


def _random_poses(scene, rng, n, margin=0.1):
    from agnostic_reloc.world.trajectory import look_pose

    lo, hi = scene.bounds
    return [look_pose(rng.uniform(lo + margin, hi - margin), rng.uniform(-np.pi, np.pi),
                      rng.uniform(-0.6, 0.6), rng.uniform(-0.3, 0.3)) for _ in range(n)]


def test_scene_deterministic_and_aliased(photos, scene):
    from agnostic_reloc.world import make_scene

    again = make_scene(5)
    assert len(again.planes) == len(scene.planes)
    for a, b in zip(scene.planes, again.planes):
        assert np.array_equal(a.corners, b.corners) and np.array_equal(a.texture, b.texture)
    # Perceptual aliasing: photos hung twice, on different walls, metres apart, looking alike.
    import cv2

    assert len(scene.alias_pairs) == scene.conf["n_alias"] > 0
    for a, b, name in scene.alias_pairs:
        pa, pb = scene.planes[a], scene.planes[b]
        assert pa.source == pb.source == name and pa.kind == pb.kind == "poster"
        assert np.linalg.norm(pa.corners.mean(0) - pb.corners.mean(0)) > 3.0
        assert pa.normal @ pb.normal < 0.5  # facing elsewhere
        ga, gb = (cv2.resize(cv2.cvtColor(p.texture, cv2.COLOR_RGB2GRAY), (48, 48), interpolation=cv2.INTER_AREA)
                  .astype(np.float64).ravel() for p in (pa, pb))
        assert np.corrcoef(ga, gb)[0, 1] > 0.6, name
    with pytest.raises(ValueError, match="unknown scene conf key"):
        make_scene(0, {"nope": 1})


def test_render_geometry_exact(scene):
    from agnostic_reloc.world import default_K, render

    rng = np.random.default_rng(0)
    W, H = 160, 120
    K = default_K(W, H, 125.0)
    for T in _random_poses(scene, rng, 6):
        image, depth, pid = render(scene, T, K, (W, H))
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        assert depth.dtype == np.float32 and pid.dtype == np.int16
        assert np.isfinite(depth).all() and (pid >= 0).all(), "holes in a closed room"
        # Every pixel back-projected with its depth lies on its plane, inside the rectangle.
        v, u = np.mgrid[:H, :W]
        rays = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], 1) @ np.linalg.inv(K).T
        Xw = (rays * depth.reshape(-1, 1)) @ T[:3, :3].T + T[:3, 3]
        ids = pid.ravel()
        for p in np.unique(ids):
            pl = scene.planes[p]
            sel = ids == p
            dist = (Xw[sel] - pl.origin) @ pl.normal
            assert np.abs(dist).max() < 0.01
            st = np.linalg.lstsq(np.column_stack([pl.e1, pl.e2]), (Xw[sel] - pl.origin).T, rcond=None)[0]
            assert st.min() > -1e-3 and st.max() < 1 + 1e-3
        # A point on a plane, placed on the ray of a pixel centre, lands where the depth map says: at the
        # map's depth when that plane is seen there, behind it otherwise (occluded).
        o = T[:3, 3]
        for p in rng.choice(len(scene.planes), 12, replace=False):
            pl = scene.planes[p]
            sel = rng.choice(u.size, 400, replace=False)
            r = rays[sel] @ T[:3, :3].T
            with np.errstate(divide="ignore", invalid="ignore"):
                z = ((pl.origin - o) @ pl.normal) / (r @ pl.normal)
            X = o + z[:, None] * r
            st = np.linalg.lstsq(np.column_stack([pl.e1, pl.e2]), (X - pl.origin).T, rcond=None)[0]
            on = (z > 0.06) & (st.min(0) > 0.001) & (st.max(0) < 0.999)
            d, q = depth.ravel()[sel][on], ids[sel][on]
            seen = q == p
            assert np.allclose(d[seen], z[on][seen], rtol=1e-4, atol=1e-4)
            assert (d[~seen] <= z[on][~seen] + 1e-3).all()


def test_render_near_plane_and_lighting(scene):
    from agnostic_reloc.world import default_K, render
    from agnostic_reloc.world.trajectory import look_pose

    K = default_K(160, 120, 125.0)
    # Camera 12 cm from a wall, looking along it: the wall crosses the camera plane and must have no holes.
    lo, hi = scene.bounds
    T = look_pose(np.array([0.0, hi[1] - 0.12, 1.4]), 0.2)
    img, depth, pid = render(scene, T, K, (160, 120))
    assert np.isfinite(depth).all() and (depth > 0.05).all()
    dark, _, _ = render(scene, T, K, (160, 120), {"gain": 0.5, "gamma": 1.3, "vignetting": 0.3,
                                                  "noise_std": 2.0, "seed": 3})
    assert dark.mean() < 0.6 * img.mean()
    again, _, _ = render(scene, T, K, (160, 120), {"gain": 0.5, "gamma": 1.3, "vignetting": 0.3,
                                                   "noise_std": 2.0, "seed": 3})
    assert np.array_equal(dark, again)
    # Motion blur keeps the mean brightness, removes fine detail, and is deterministic by seed.
    blur, _, _ = render(scene, T, K, (160, 120), {"blur_px": 9.0, "seed": 3})
    assert abs(float(blur.mean()) - float(img.mean())) < 2.0

    def detail(a):
        return float(np.abs(np.diff(a.astype(np.float32), axis=1)).mean() + np.abs(np.diff(a.astype(np.float32), axis=0)).mean())

    assert detail(blur) < 0.8 * detail(img)
    assert np.array_equal(blur, render(scene, T, K, (160, 120), {"blur_px": 9.0, "seed": 3})[0])
    with pytest.raises(ValueError, match="lighting"):
        render(scene, T, K, (160, 120), {"brightness": 2})
    with pytest.raises(ValueError, match="blur_px"):
        render(scene, T, K, (160, 120), {"blur_px": -1.0})
    with pytest.raises(ValueError, match="T_world_cam"):
        render(scene, np.eye(3), K, (160, 120))


def test_sequence_deterministic(photos):
    from agnostic_reloc.world import make_sequence

    a = make_sequence(seed=2, profile="kidnap", n_frames=12, conf=SMALL, progress=False)
    b = make_sequence(seed=2, profile="kidnap", n_frames=12, conf=SMALL, progress=False)
    c = make_sequence(seed=3, profile="kidnap", n_frames=12, conf=SMALL, progress=False)
    assert len(a.frames) == len(b.frames) == 12
    for fa, fb in zip(a.frames, b.frames):
        assert np.array_equal(fa.image, fb.image) and np.array_equal(fa.T_world_cam, fb.T_world_cam)
        assert np.array_equal(fa.keypoints.xy, fb.keypoints.xy)
        assert (fa.map_points is None) == (fb.map_points is None)
        if fa.map_points is not None:
            assert np.array_equal(fa.map_points, fb.map_points, equal_nan=True)
    assert not np.array_equal(a.frames[0].T_world_cam, c.frames[0].T_world_cam)
    with pytest.raises(ValueError, match="profile"):
        make_sequence(profile="spiral", n_frames=12, conf=SMALL, progress=False)
    with pytest.raises(ValueError, match="unknown"):
        make_sequence(n_frames=12, conf={"camera": {"fx": 3}}, progress=False)


def test_keyframes_and_map_points(mixed):
    K = mixed.K
    kfs = mixed.keyframes()
    assert len(kfs) >= 10
    assert all(f.tracking_state == "OK" and f.T_map_cam is not None for f in kfs)
    n_points = 0
    for f in kfs:
        n = len(f.keypoints)
        assert f.map_points.shape == (n, 3) and f.map_points.dtype == np.float32
        assert f.map_point_ids.shape == (n,) and f.map_point_ids.dtype == np.int64
        ok = np.isfinite(f.map_points).all(1)
        assert np.array_equal(ok, f.map_point_ids >= 0) and not f.map_point_outlier.any()
        ids = f.map_point_ids[ok]
        assert len(np.unique(ids)) == len(ids)
        n_points += ok.sum()
        # Reprojection with the SLAM pose onto the keypoints.
        Xc = f.map_points[ok].astype(np.float64) @ _inv(f.T_map_cam)[:3, :3].T + _inv(f.T_map_cam)[:3, 3]
        uv = Xc @ K.T
        uv = uv[:, :2] / uv[:, 2:]
        assert np.abs(uv - f.keypoints.xy[ok]).max() < 1.0
        # And in the world (undoing the drift) the map points are on the rendered surface.
        T_world_map = f.T_world_cam @ _inv(f.T_map_cam)
        Xw = f.map_points[ok].astype(np.float64) @ T_world_map[:3, :3].T + T_world_map[:3, 3]
        z = (Xw - f.T_world_cam[:3, 3]) @ f.T_world_cam[:3, 2]
        ij = np.round(f.keypoints.xy[ok]).astype(int)
        assert np.median(np.abs(z - f.depth[ij[:, 1], ij[:, 0]])) < 0.01
    assert n_points > 100 * len(kfs)
    # Non-keyframes carry no map points; every frame has ORB keypoints.
    assert all(f.map_points is None for f in mixed.frames if not f.is_keyframe)
    assert all(len(f.keypoints) > 200 for f in mixed.frames)
    # The same physical point keeps its id across keyframes.
    from collections import Counter

    counts = Counter(int(i) for f in kfs for i in f.map_point_ids if i >= 0)
    assert sum(c > 1 for c in counts.values()) > 50


def test_outlier_map_points(mixed):
    from agnostic_reloc.world.slam import map_points_for_keyframe

    f = mixed.keyframes()[3]
    args = (mixed.scene, f.keypoints, f.depth, f.plane_id, mixed.K, f.T_world_cam, f.T_map_cam)
    pts, ids, out = map_points_for_keyframe(*args, np.random.default_rng(0), {"outlier_ratio": 0.3})
    ok = np.isfinite(pts).all(1)
    assert 0.2 < out[ok].mean() < 0.4 and not out[~ok].any()
    Xc = pts[out].astype(np.float64) @ _inv(f.T_map_cam)[:3, :3].T + _inv(f.T_map_cam)[:3, 3]
    uv = Xc[:, :2] / Xc[:, 2:] * mixed.K[0, 0] + mixed.K[:2, 2]
    assert np.median(np.linalg.norm(uv - f.keypoints.xy[out], axis=1)) > 5
    with pytest.raises(ValueError, match="unknown slam conf key"):
        map_points_for_keyframe(*args, np.random.default_rng(0), {"outliers": 0.3})


def test_drift_grows(mixed):
    tracked = [f for f in mixed.frames if f.T_map_cam is not None]
    drift = [f.T_map_cam @ _inv(f.T_world_cam) for f in tracked]
    trans = np.array([np.linalg.norm(D[:3, 3]) for D in drift])
    yaw = np.array([abs(np.arctan2(D[1, 0], D[0, 0])) for D in drift])
    assert trans[0] < 1e-12 and yaw[0] < 1e-12
    n = len(trans)
    assert 0 < trans[n // 2] < trans[-1] and 0 < yaw[n // 2] < yaw[-1]
    assert 0.1 < trans[-1] < 1.0 and np.radians(0.5) < yaw[-1] < np.radians(5)
    # Smooth: consecutive drift changes stay small.
    assert np.abs(np.diff(trans)).max() < 0.05


def test_loop_revisits(mixed):
    from agnostic_reloc.world import gt_revisits

    lap2 = [f for f in mixed.keyframes() if f.lap == 1]
    revisits = gt_revisits(mixed, 1.0, 20.0)
    assert len(lap2) >= 5 and len(revisits) >= 0.5 * len(lap2)
    # Different viewpoint: lap 2 is offset from lap 1 (not the same poses), and darker.
    assert min(r[2] for r in revisits) > 0.05
    lap1 = [f for f in mixed.frames if f.lap == 0]
    lap2f = [f for f in mixed.frames if f.lap == 1]
    assert np.mean([f.image.mean() for f in lap2f]) < 0.8 * np.mean([f.image.mean() for f in lap1])


def test_kidnapped_frames(mixed):
    q = mixed.queries()
    assert len(q) > 0
    for f in mixed.frames:
        assert f.kidnapped == (f.tracking_state == "LOST") == (f.T_map_cam is None)
    assert not any(f.is_keyframe for f in q)
    lap1 = np.array([f.T_world_cam for f in mixed.frames if f.lap == 0])
    for f in q:
        d = np.linalg.norm(lap1[:, :3, 3] - f.T_world_cam[:3, 3], axis=1)
        ang = np.degrees(np.arccos(np.clip(lap1[:, :3, 2] @ f.T_world_cam[:3, 2], -1, 1)))
        assert ((d < 0.8) & (ang < 30)).any()
    stamps = np.array([f.stamp for f in mixed.frames])
    assert (np.diff(stamps) > 0).all()
    assert np.array_equal(mixed.gt_pose(q[0].stamp), q[0].T_world_cam)
    with pytest.raises(ValueError, match="no frame"):
        mixed.gt_pose(-5.0)


def test_save_load_roundtrip(mixed, tmp_path):
    from agnostic_reloc.world import load_sequence, save_sequence

    save_sequence(mixed, tmp_path / "seq")
    back = load_sequence(tmp_path / "seq")
    assert np.array_equal(back.K, mixed.K) and back.image_size == mixed.image_size
    assert back.seed == mixed.seed and back.profile == mixed.profile and back.conf == mixed.conf
    assert len(back.frames) == len(mixed.frames)
    for a, b in zip(mixed.frames, back.frames):
        assert (a.index, a.stamp, a.tracking_state, a.is_keyframe, a.kidnapped, a.lap) == \
            (b.index, b.stamp, b.tracking_state, b.is_keyframe, b.kidnapped, b.lap)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.T_world_cam, b.T_world_cam)
        assert np.array_equal(a.depth, b.depth) and np.array_equal(a.plane_id, b.plane_id)
        assert (a.T_map_cam is None and b.T_map_cam is None) or np.array_equal(a.T_map_cam, b.T_map_cam)
        for name in ("xy", "octave", "response", "angle", "size"):
            assert np.array_equal(getattr(a.keypoints, name), getattr(b.keypoints, name))
        assert a.keypoints.scale_factor == b.keypoints.scale_factor
        for name in ("map_points", "map_point_ids", "map_point_outlier"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None) == (y is None)
            if x is not None:
                assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f")
    rows = np.loadtxt(tmp_path / "seq" / "groundtruth.txt")
    assert rows.shape == (len(mixed.frames), 8)
    from scipy.spatial.transform import Rotation

    f = mixed.frames[7]
    assert np.allclose(rows[7, 1:4], f.T_world_cam[:3, 3])
    assert np.allclose(Rotation.from_quat(rows[7, 4:]).as_matrix(), f.T_world_cam[:3, :3])
    slam_rows = np.loadtxt(tmp_path / "seq" / "slam.txt")
    assert len(slam_rows) == sum(f.T_map_cam is not None for f in mixed.frames)
    # A keyframe converts to the engine's Keyframe type and validates.
    kf = mixed.to_keyframe(mixed.keyframes()[0])
    kf.validate()
