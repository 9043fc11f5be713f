"""Geometry metrics, the demo scene's true surface, the frame maps and the PLY writer."""
import math

import numpy as np
import pytest

from nerf_dist.export import frame, geometry_metrics as gm, truth
from nerf_dist.export.ply import write_ply
from nerf_dist.scenes import demo


def test_scores_hand_computed():
    # truth: 0 and 1 on the x axis; pred: 0.1 and 3.0. d(pred->truth) = 0.1, 2.0;
    # d(truth->pred) = 0.1, 0.9 (1 -> 0.1).
    t = np.array([[0.0, 0, 0], [1.0, 0, 0]])
    p = np.array([[0.1, 0, 0], [3.0, 0, 0]])
    s = gm.geometry_scores(p, t, tau=0.5)
    assert s["accuracy"] == pytest.approx(1.05)
    assert s["completeness"] == pytest.approx(0.5)
    assert s["chamfer"] == pytest.approx(0.775)
    assert gm.chamfer(p, t) == pytest.approx(0.775)
    assert (s["precision"], s["recall"]) == (0.5, 0.5)
    assert s["fscore"] == pytest.approx(0.5)
    assert gm.fscore(p, t, 0.05) == (0.0, 0.0, 0.0)
    assert gm.fscore(p, t, 1.0)[1:] == (1.0, pytest.approx(2 * 0.5 / 1.5))
    assert gm.chamfer(t, t) == 0.0
    with pytest.raises(ValueError, match="pred"):
        gm.chamfer(np.zeros((0, 3)), t)
    with pytest.raises(ValueError, match="tau"):
        gm.geometry_scores(p, t, 0.0)


def test_demo_surface_on_the_solids():
    pts, nrm = truth.demo_surface(20000, seed=1)
    assert 15000 < len(pts) <= 20000
    (ca, ra), (cb, rb), (lo, hi) = demo.SPHERE_A, demo.SPHERE_B, demo.BOX
    c, r, z0, z1 = demo.CYL
    box = np.maximum(lo - pts, pts - hi).max(1)  # 0 on the box surface (outside distance proxy)
    cyl = np.maximum(np.maximum(np.linalg.norm(pts[:, :2] - c, axis=1) - r, z0 - pts[:, 2]),
                     pts[:, 2] - z1)
    d = np.min([np.abs(np.linalg.norm(pts - ca, axis=1) - ra),
                np.abs(np.linalg.norm(pts - cb, axis=1) - rb), np.abs(box), np.abs(cyl)], axis=0)
    assert d.max() < 1e-9
    assert np.allclose(np.linalg.norm(nrm, axis=1), 1.0)
    # every kept point is outside every solid it is not on
    assert not np.any(truth._inside(pts), axis=0).any()
    # same seed, same points
    assert np.array_equal(truth.demo_surface(1000, seed=3)[0], truth.demo_surface(1000, seed=3)[0])


def test_visible_part_from_cameras():
    cams = np.stack(demo.camera_poses(8, 0)["train"])
    pts, nrm = truth.demo_surface(20000, seed=0)
    seen = truth.visible(pts, nrm, cams)
    assert 0.2 < seen.mean() < 0.95
    # cameras at elevation >= 15 deg never see a downward face (the bottoms of box and cylinder)
    assert not seen[nrm[:, 2] < -0.99].any()
    # a seen point is the first hit of the ray from some camera: trace from the nearest-facing
    o = cams[:, :3, 3]
    p = pts[seen][:50]
    for q in p:
        d = q - o
        dist = np.linalg.norm(d, axis=1)
        _, t = demo.trace(o, d / dist[:, None])
        assert np.any(np.abs(t - dist) < 1e-3)


def test_demo_truth_reads_the_folder(tmp_path):
    demo.write_demo_scene(str(tmp_path), resolution=8, views=6, supersample=1)
    pts = truth.demo_truth(str(tmp_path), n=5000)
    cams = np.stack(demo.camera_poses(6, 0)["train"])
    ref, rn = truth.demo_surface(5000, 0)
    assert np.array_equal(pts, ref[truth.visible(ref, rn, cams)])
    with pytest.raises(ValueError, match="transforms_train.json"):
        truth.demo_truth(str(tmp_path / "nope"))


def test_frame_maps_invert_the_readers():
    # ngp: x_scene = (x - offset) * scale
    m = frame.original_from_meta({"format": "ngp", "world_to_scene": {"offset": [1, 2, 3],
                                                                      "scale": 0.5}})
    x = np.array([[0.2, -0.4, 1.0]])
    assert np.allclose(frame.move_points(m, x)[0], x / 0.5 + [1, 2, 3])
    # colmap / llff: x_scene = T x
    a = 0.3
    rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    t = np.eye(4)
    t[:3, :3], t[:3, 3] = 2.0 * rot, [0.5, 0, -1]
    m = frame.original_from_meta({"format": "colmap", "transform": t.tolist()})
    assert frame.scale_of(m) == pytest.approx(0.5)
    xs = x @ t[:3, :3].T + t[:3, 3]
    back, n = frame.move_points(m, xs, np.array([[0.0, 0.0, 1.0]]))
    assert np.allclose(back, x) and np.allclose(n, [[0, 0, 1]])
    c2w = np.eye(4)[None].copy()
    c2w[0, :3, 3] = xs[0]
    out = frame.move_poses(m, c2w)
    assert np.allclose(out[0, :3, 3], x[0]) and np.allclose(out[0, :3, :3], rot.T)
    assert np.array_equal(frame.original_from_meta({"format": "blender"}), np.eye(4))
    with pytest.raises(ValueError, match="--frame scene"):
        frame.original_from_meta({"format": "other"})


def test_ply_round_trip(tmp_path):
    trimesh = pytest.importorskip("trimesh")
    rng = np.random.default_rng(0)
    v = rng.normal(size=(10, 3)).astype(np.float32)
    col = rng.integers(0, 256, (10, 3)).astype(np.uint8)
    path = str(tmp_path / "p.ply")
    size = write_ply(path, v, colors=col, normals=v / np.linalg.norm(v, axis=1, keepdims=True))
    assert size == (tmp_path / "p.ply").stat().st_size
    pc = trimesh.load(path)
    assert np.allclose(pc.vertices, v) and np.array_equal(pc.colors[:, :3], col)
    f = np.array([[0, 1, 2], [2, 3, 4]])
    write_ply(path, v, faces=f)
    mesh = trimesh.load(path, process=False)
    assert np.array_equal(mesh.faces, f)


def test_llff_meta_transform_maps_back_to_the_files(tmp_path):
    from nerf_dist.config import DataConfig
    from nerf_dist.scenes import open_scene
    from tests.test_scenes import write_llff
    gl = write_llff(tmp_path, n=10)
    sc = open_scene(DataConfig(root=str(tmp_path), format="llff", llff_hold=4), "train")
    back = frame.move_poses(frame.original_from_meta(sc.meta), sc.c2w.double().numpy())
    np.testing.assert_allclose(back[:, :3, :], gl[sc.meta["indices"]], atol=1e-5)


def test_read_ply_reads_what_write_ply_writes(tmp_path):
    from nerf_dist.export.ply import read_ply
    rng = np.random.default_rng(1)
    v = rng.normal(size=(7, 3)).astype(np.float32)
    col = rng.integers(0, 256, (7, 3)).astype(np.uint8)
    nrm = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    f = np.array([[0, 1, 2], [3, 4, 6]])
    path = str(tmp_path / "m.ply")
    write_ply(path, v, colors=col, normals=nrm, faces=f)
    got = read_ply(path)
    assert np.array_equal(got["verts"], v) and np.array_equal(got["colors"], col)
    assert np.array_equal(got["normals"], nrm) and np.array_equal(got["faces"], f)
    write_ply(path, v)
    got = read_ply(path)
    assert got["normals"] is None and got["colors"] is None and got["faces"] is None
    (tmp_path / "bad.ply").write_bytes(b"ply\nformat ascii 1.0\nend_header\n")
    with pytest.raises(ValueError, match="bad.ply"):
        read_ply(str(tmp_path / "bad.ply"))


@pytest.mark.parametrize("variant", ["objects", "unbounded", "city"])
def test_scene_truth_of_every_demo_variant(tmp_path, variant):
    from nerf_dist.scenes import demo_city, demo_unbounded
    write = {"objects": demo.write_demo_scene, "unbounded": demo_unbounded.write_unbounded_scene,
             "city": demo_city.write_city_scene}[variant]
    write(str(tmp_path), resolution=8, views=3, seed=2, supersample=1)
    pts, marker = truth.scene_truth(str(tmp_path), n=3000)
    assert marker["variant"] == variant and marker["seed"] == 2 and len(pts) > 300
    if variant == "objects":
        return
    # every truth point is on the scene's surface: a ray from above (or from the camera side)
    # ends on it; here, the traced point's own ray from a camera re-traces to it
    cams, angle = truth._cameras(str(tmp_path), "transforms_train.json")
    trace = demo_unbounded.trace if variant == "unbounded" else demo_city.make_trace(5, 2)
    o = cams[0, :3, 3]
    d = pts - o
    dist = np.linalg.norm(d, axis=1)
    _, t = trace(np.broadcast_to(o, pts.shape).copy(), d / dist[:, None])
    assert np.mean(np.abs(t - dist) < 1e-6) > 0.2  # the points camera 0 traced (a third)
    if variant == "unbounded":
        assert np.abs(pts).max() <= demo_unbounded.CAM_RADIUS
        assert (pts[:, 2] > demo_unbounded.GROUND_Z - 1e-9).all()


def test_scene_truth_refuses_other_folders(tmp_path):
    with pytest.raises(ValueError, match="not a demo scene"):
        truth.scene_truth(str(tmp_path))
    # a demo folder written before the marker existed is the objects variant
    demo.write_demo_scene(str(tmp_path), resolution=8, views=3, supersample=1)
    (tmp_path / demo.MARKER).unlink()
    assert truth.scene_variant(str(tmp_path)) == {"variant": "objects", "seed": 0}


def test_ply_writer_in_chunks_equals_write_ply(tmp_path):
    from nerf_dist.export.ply import PlyWriter
    rng = np.random.default_rng(2)
    v = rng.normal(size=(9, 3)).astype(np.float32)
    col = rng.integers(0, 256, (9, 3)).astype(np.uint8)
    f = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    write_ply(str(tmp_path / "a.ply"), v, colors=col, faces=f)
    with PlyWriter(str(tmp_path / "b.ply"), 9, colors=True, n_faces=3) as w:
        for s in (slice(0, 4), slice(4, 9)):
            w.vertices(v[s], colors=col[s])
        w.faces(f[:1])
        w.faces(f[1:])
    assert (tmp_path / "a.ply").read_bytes() == (tmp_path / "b.ply").read_bytes()
    with pytest.raises(ValueError, match="header states 9"):
        with PlyWriter(str(tmp_path / "c.ply"), 9) as w:
            w.vertices(v[:5])
    with pytest.raises(ValueError, match="declares nx"):
        with PlyWriter(str(tmp_path / "d.ply"), 9, normals=True) as w:
            w.vertices(v)
