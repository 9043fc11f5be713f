"""The COLMAP scene reader (data.format=colmap) on tiny models the tests write byte by byte."""
from __future__ import annotations

import math
import struct
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from conftest import train_tiny
from nerf_dist.config import DataConfig
from nerf_dist.lifecycle import read_status
from nerf_dist.render_ops.rays import make_rays
from nerf_dist.scenes import (SceneError, detect_format, load_scene, open_scene, scene_sources,
                              sparse_points)
from nerf_dist.scenes.colmap_model import MODEL_IDS, qvec_to_rotmat

W, H = 8, 6
PARAMS = {  # COLMAP's parameter order per model
    "SIMPLE_PINHOLE": [7.0, 4.1, 2.9],
    "PINHOLE": [7.0, 7.5, 4.1, 2.9],
    "SIMPLE_RADIAL": [7.0, 4.1, 2.9, 0.05],
    "RADIAL": [7.0, 4.1, 2.9, 0.05, -0.01],
    "OPENCV": [7.0, 7.5, 4.1, 2.9, 0.05, -0.01, 0.002, -0.003],
}


# ----------------------------------------------------------------------------- hand-built models

def axis_angle(axis, angle: float) -> np.ndarray:
    """[3, 3] rotation about axis by angle (Rodrigues), built independently of the reader."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


def quat_of(axis, angle: float) -> list[float]:
    """(w, x, y, z) of the same rotation."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    return [math.cos(angle / 2), *(math.sin(angle / 2) * a)]


def look_from(centre, target=(0.0, 0.0, 0.0)):
    """(R, t) world-to-camera (OpenCV axes) of a camera at centre looking at target, z up."""
    c = np.asarray(centre, float)
    z = np.asarray(target, float) - c
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])  # rows: camera axes in world
    return R, -R @ c


def rot_to_quat(R: np.ndarray) -> list[float]:
    """(w, x, y, z) of a rotation matrix (Shepperd's method, largest-component branch)."""
    t = np.trace(R)
    if t > 0:
        s = 2 * math.sqrt(1 + t)
        return [s / 4, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    i = int(np.argmax(np.diag(R)))
    j, k = (i + 1) % 3, (i + 2) % 3
    s = 2 * math.sqrt(1 + R[i, i] - R[j, j] - R[k, k])
    q = [0.0] * 4
    q[0] = (R[k, j] - R[j, k]) / s
    q[1 + i] = s / 4
    q[1 + j] = (R[j, i] + R[i, j]) / s
    q[1 + k] = (R[k, i] + R[i, k]) / s
    return q


def write_model(folder: Path, cameras: dict, images: list, points: list, binary: bool) -> None:
    """cameras: {id: (model, w, h, params)}; images: [(id, qvec, tvec, camera_id, name)];
    points: [(id, xyz, rgb, error, [(image_id, idx), ...])]; written as COLMAP does."""
    folder.mkdir(parents=True, exist_ok=True)
    if binary:
        b = struct.pack("<Q", len(cameras))
        for cid, (model, w, h, params) in cameras.items():
            b += struct.pack("<IiQQ", cid, MODEL_IDS[model][0], w, h)
            b += struct.pack("<" + "d" * len(params), *params)
        (folder / "cameras.bin").write_bytes(b)
        b = struct.pack("<Q", len(images))
        for iid, q, t, cid, name in images:
            b += struct.pack("<I7dI", iid, *q, *t, cid) + name.encode() + b"\0"
            b += struct.pack("<Q", 1) + struct.pack("<ddq", 1.5, 2.5, -1)
        (folder / "images.bin").write_bytes(b)
        b = struct.pack("<Q", len(points))
        for pid, xyz, rgb, err, track in points:
            b += struct.pack("<Q3d3BdQ", pid, *xyz, *rgb, err, len(track))
            for iid, idx in track:
                b += struct.pack("<II", iid, idx)
        (folder / "points3D.bin").write_bytes(b)
        return
    lines = ["# Camera list with one line of data per camera:"]
    for cid, (model, w, h, params) in cameras.items():
        lines.append(" ".join(str(v) for v in [cid, model, w, h, *[repr(float(p)) for p in params]]))
    (folder / "cameras.txt").write_text("\n".join(lines) + "\n")
    lines = ["# Image list with two lines of data per image:"]
    for k, (iid, q, t, cid, name) in enumerate(images):
        lines.append(" ".join(str(v) for v in [iid, *[repr(float(x)) for x in q], *[repr(float(x)) for x in t],
                                                cid, name]))
        lines.append("1.5 2.5 -1" if k % 2 else "")  # COLMAP writes an empty line for no points
    (folder / "images.txt").write_text("\n".join(lines) + "\n")
    lines = ["# 3D point list with one line of data per point:"]
    for pid, xyz, rgb, err, track in points:
        lines.append(" ".join(str(v) for v in [pid, *[repr(float(x)) for x in xyz], *rgb, repr(float(err)),
                                                *[x for tr in track for x in tr]]))
    (folder / "points3D.txt").write_text("\n".join(lines) + "\n")


def make_scene(root: Path, model: str = "OPENCV", n: int = 6, binary: bool = True,
               cams_per_image: bool = False, size=(W, H), with_points: bool = True) -> dict:
    """A ring of n cameras around the origin looking at it, a cloud of points near the origin,
    random images. Image ids are deliberately not contiguous. Returns the truth."""
    rng = np.random.default_rng(0)
    w, h = size
    (root / "images").mkdir(parents=True, exist_ok=True)
    cameras, images, truth = {}, [], {"R": {}, "t": {}, "name": {}}
    for k in range(n):
        a = 2 * math.pi * k / n
        R, t = look_from([3 * math.cos(a), 3 * math.sin(a), 1.0 + 0.2 * k])
        cid = 10 + k if cams_per_image else 1
        params = list(PARAMS[model]) if model in PARAMS else [7.0, 7.5, 4.1, 2.9, 0.1, 0.0, 0.0, 0.0]
        if cams_per_image:
            params[0] += k
        cameras[cid] = (model, w, h, params)
        iid = 3 + 7 * k
        name = f"img_{(k * 5) % n:03d}.png"
        images.append((iid, rot_to_quat(R), list(t), cid, name))
        truth["R"][iid], truth["t"][iid], truth["name"][iid] = R, t, name
        iio.imwrite(root / "images" / name, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    pts = rng.normal(0, 0.3, (40, 3))
    points = [(100 + j, list(p), [1, 2, 3], 0.5, [(iid, 0) for iid, *_ in images])
              for j, p in enumerate(pts)] if with_points else []
    write_model(root / "sparse" / "0", cameras, images, points, binary)
    truth.update(points=pts, cameras=cameras, images=images)
    return truth


def cfg(root, **kw) -> DataConfig:
    kw.setdefault("llff_hold", 3)
    return DataConfig(root=str(root), **kw)


def colmap_project(cam, R, t, X) -> np.ndarray:
    """Pixel (u, v) of world point X as COLMAP computes it (its camera models, written out)."""
    model, _, _, p = cam
    x = R @ X + t
    u, v = x[0] / x[2], x[1] / x[2]
    if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        f = fy = p[0]
        cx, cy = p[1], p[2]
        k1 = p[3] if model != "SIMPLE_PINHOLE" else 0.0
        k2 = p[4] if model == "RADIAL" else 0.0
        p1 = p2 = 0.0
    else:
        f, fy, cx, cy = p[:4]
        k1, k2, p1, p2 = (list(p[4:8]) + [0.0] * 4)[:4]
    r2 = u * u + v * v
    radial = k1 * r2 + k2 * r2 * r2
    du = u * radial + 2 * p1 * u * v + p2 * (r2 + 2 * u * u)
    dv = v * radial + 2 * p2 * u * v + p1 * (r2 + 2 * v * v)
    return np.array([f * (u + du) + cx, fy * (v + dv) + cy])


# ----------------------------------------------------------------------------- reader

@pytest.mark.parametrize("model", list(PARAMS))
def test_camera_models_poses_and_projection(tmp_path, model):
    truth = make_scene(tmp_path / "bin", model=model, binary=True)
    make_scene(tmp_path / "txt", model=model, binary=False)
    assert detect_format(tmp_path / "bin") == "colmap" and detect_format(tmp_path / "txt") == "colmap"
    for split in ("train", "test"):
        a = load_scene(cfg(tmp_path / "bin", orient="none"), split)
        b = load_scene(cfg(tmp_path / "txt", orient="none"), split)
        assert a.files == [f.replace("/txt/", "/bin/") for f in b.files] or \
            [Path(f).name for f in a.files] == [Path(f).name for f in b.files]
        for x, y in ((a.K, b.K), (a.c2w, b.c2w), (a.images, b.images)):
            assert torch.equal(x, y)
        assert (a.distortion is None) == (b.distortion is None)
        if a.distortion is not None:
            assert torch.equal(a.distortion, b.distortion)
        assert (a.near, a.far) == (b.near, b.far)
    s = load_scene(cfg(tmp_path / "bin", orient="none"), "train")
    T = np.asarray(s.meta["transform"])
    assert np.allclose(T[:3, :3], s.meta["scale"] * np.eye(3))
    names = {n: i for i, n in truth["name"].items()}
    cam = truth["cameras"][1]
    fx, fy, cx, cy, *_ = (cam[3] if model not in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL")
                          else [cam[3][0], cam[3][0], cam[3][1], cam[3][2]])
    for k, f in enumerate(s.files):
        iid = names[Path(f).name]
        R, t = truth["R"][iid], truth["t"][iid]
        # the hand-built pose comes back: OpenGL axes = OpenCV's with y and z negated
        want = R.T @ np.diag([1.0, -1.0, -1.0])
        assert np.allclose(s.c2w[k, :, :3].numpy(), want, atol=1e-6)
        centre = (T @ np.append(-R.T @ t, 1.0))[:3]
        assert np.allclose(s.c2w[k, :, 3].numpy(), centre, atol=1e-6)
        assert np.allclose(s.K[k].numpy(), [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], atol=1e-6)
        # a 3D point projects where COLMAP measures it, and the ray through that pixel hits it
        for X in truth["points"][:5]:
            uv = colmap_project(cam, R, t, X)
            d = s.distortion[k] if s.distortion is not None else None
            r = make_rays(torch.tensor(uv[None], dtype=torch.float32), s.K[k], s.c2w[k], d)
            o, dirn = r["rays_o"][0].double().numpy(), r["rays_d"][0].double().numpy()
            Xs = (T @ np.append(X, 1.0))[:3]
            along = (Xs - o) @ dirn
            assert np.linalg.norm(o + along * dirn - Xs) < 1e-4 * max(1.0, along), (model, X)
    assert s.meta["camera_models"] == [model] and s.meta["bounds_from"] == "points"


@pytest.mark.parametrize("binary", [True, False])
def test_axis_angle_pose_comes_back(tmp_path, binary):
    """A world-to-camera pose written as the quaternion of an axis and angle comes back as the
    camera-to-world the axis and angle give (OpenGL axes), the centre at -R^T t."""
    (tmp_path / "images").mkdir()
    poses = {1: ([1.0, 2.0, 3.0], 0.7, [0.3, -0.2, 2.0]), 2: ([0.0, -1.0, 0.2], 2.9, [1.0, 0.5, -1.5])}
    images = []
    for iid, (axis, ang, t) in poses.items():
        images.append((iid, quat_of(axis, ang), t, 1, f"p{iid}.png"))
        iio.imwrite(tmp_path / "images" / f"p{iid}.png", np.zeros((H, W, 3), np.uint8))
    write_model(tmp_path / "sparse/0", {1: ("PINHOLE", W, H, PARAMS["PINHOLE"])}, images, [], binary)
    for split, iid in (("test", 1), ("train", 2)):
        s = load_scene(cfg(tmp_path, orient="none", llff_hold=2), split)
        axis, ang, t = poses[iid]
        R = axis_angle(axis, ang)
        T = np.asarray(s.meta["transform"])
        assert np.allclose(s.c2w[0, :, :3].numpy(), R.T @ np.diag([1.0, -1.0, -1.0]), atol=1e-6)
        centre = (T @ np.append(-R.T @ np.asarray(t), 1.0))[:3]
        assert np.allclose(s.c2w[0, :, 3].numpy(), centre, atol=1e-6)
        assert s.meta["bounds_from"] == "fallback"  # no points


def test_axis_angle_quaternion_helpers_agree():
    """The tests' two ways of building a rotation agree with the reader's quaternion maths."""
    for axis, ang in (([0, 0, 1], 0.3), ([1, 2, 3], 2.5), ([-1, 0.5, 0], math.pi - 1e-3)):
        R = axis_angle(axis, ang)
        assert np.allclose(qvec_to_rotmat(quat_of(axis, ang)), R, atol=1e-12)
        assert np.allclose(qvec_to_rotmat(rot_to_quat(R)), R, atol=1e-12)


def test_orientation_normalisation_and_bounds(tmp_path):
    truth = make_scene(tmp_path, n=8)
    s = load_scene(cfg(tmp_path), "train")
    t = load_scene(cfg(tmp_path), "test")
    assert s.meta["orient"] == "up"
    up = torch.cat([s.c2w, t.c2w])[:, :, 1].mean(0)
    assert up[2] > 0.99 * up.norm()  # the mean camera up is +z
    centres = torch.cat([s.c2w, t.c2w])[:, :, 3]
    assert torch.allclose(centres.mean(0), torch.zeros(3), atol=1e-5)
    assert float(centres.abs().max()) == pytest.approx(1.0, abs=1e-5)
    # the transform maps world points into the scene: camera distance to the cloud's points
    T = np.asarray(s.meta["transform"])
    pts = (T[:3, :3] @ truth["points"].T).T + T[:3, 3]
    d = np.linalg.norm(pts[None] - centres.numpy()[:, None].astype(float), axis=-1)
    assert s.near <= d.min() and s.far >= d.max()
    assert s.near == pytest.approx(0.5 * min(v[0] for v in {**s.meta["near_far"],
                                                             **t.meta["near_far"]}.values()))
    assert s.meta["aabb_scale"] == 1.0 and torch.equal(s.aabb[1], torch.ones(3))
    # pca: the ring of cameras lies in the xy plane (least spread along z), upright
    p = [load_scene(cfg(tmp_path, orient="pca"), sp) for sp in ("train", "test")]
    c = torch.cat([q.c2w for q in p])
    assert float(c[:, :, 3].abs().max()) == pytest.approx(1.0, abs=1e-5)
    assert float(c[:, 2, 3].std()) < float(c[:, 0, 3].std()) and c[:, :, 1].mean(0)[2] > 0


def test_splits_every_hold_th_of_name_sorted(tmp_path):
    make_scene(tmp_path, n=7)
    names = sorted(f"img_{(k * 5) % 7:03d}.png" for k in range(7))
    test = load_scene(cfg(tmp_path, llff_hold=3), "test")
    train = load_scene(cfg(tmp_path, llff_hold=3), "train")
    assert [Path(f).name for f in test.files] == names[0::3]
    assert [Path(f).name for f in train.files] == [n for i, n in enumerate(names) if i % 3]


def test_a_split_file_overrides_the_hold(tmp_path):
    make_scene(tmp_path, n=7)
    names = sorted(f"img_{(k * 5) % 7:03d}.png" for k in range(7))
    (tmp_path / "test_list.txt").write_text(f"# held out\n{names[1]}\n{names[4]}\n")
    test = open_scene(cfg(tmp_path, llff_hold=3), "test")
    train = open_scene(cfg(tmp_path, llff_hold=3), "train")
    assert [Path(f).name for f in test.files] == [names[1], names[4]]
    assert sorted(Path(f).name for f in train.files) == sorted(set(names) - {names[1], names[4]})
    # the split file is part of what the cache key covers
    assert str(tmp_path / "test_list.txt") in scene_sources(cfg(tmp_path), "train").meta
    (tmp_path / "test_list.txt").write_text("nope.png\n")
    with pytest.raises(SceneError, match=r"test_list.txt: 1 name\(s\) are not registered.*nope"):
        open_scene(cfg(tmp_path), "test")


def test_several_cameras_per_scene(tmp_path):
    truth = make_scene(tmp_path, model="PINHOLE", n=6, cams_per_image=True)
    s = load_scene(cfg(tmp_path), "train")
    byname = {n: i for i, n in truth["name"].items()}
    for k, f in enumerate(s.files):
        cid = dict((i, c) for i, _, _, c, _ in truth["images"])[byname[Path(f).name]]
        assert float(s.K[k, 0, 0]) == pytest.approx(truth["cameras"][cid][3][0])
    assert len(set(s.K[:, 0, 0].tolist())) == s.n


def test_sources_downscale_and_images_n(tmp_path):
    make_scene(tmp_path, size=(8, 6))
    c = cfg(tmp_path, downscale=2)
    s = load_scene(c, "train")
    assert (s.H, s.W) == (3, 4)
    assert torch.allclose(s.K[0, :2], torch.tensor([[3.5, 0, 4.1 / 2], [0, 3.75, 2.9 / 2]]))
    m = tmp_path / "sparse" / "0"
    assert s.sources.meta == tuple(str(m / f) for f in ("cameras.bin", "images.bin", "points3D.bin"))
    assert s.sources.data == tuple(s.files) and scene_sources(c, "train") == s.sources
    # images_2/ (as nerfstudio writes them) are used as they are, intrinsics from their size
    (tmp_path / "images_2").mkdir()
    for f in (tmp_path / "images").iterdir():
        iio.imwrite(tmp_path / "images_2" / f.name, np.zeros((3, 4, 3), np.uint8))
    s2 = load_scene(c, "train")
    assert all("/images_2/" in f for f in s2.files) and float(s2.images.max()) == 0.0
    assert torch.allclose(s2.K, s.K)


def test_missing_images_and_skip_missing(tmp_path):
    truth = make_scene(tmp_path, n=6)
    gone = sorted(truth["name"].values())[1]
    (tmp_path / "images" / gone).unlink()
    with pytest.raises(SceneError, match=f"images.bin: frame .*{gone}.*skip_missing"):
        load_scene(cfg(tmp_path), "train")
    with pytest.warns(UserWarning, match=gone):
        s = load_scene(cfg(tmp_path, skip_missing=True), "train")
    assert gone not in [Path(f).name for f in s.files] and s.n == 3


def test_fallback_bounds_without_points(tmp_path):
    make_scene(tmp_path, with_points=False)
    (tmp_path / "sparse/0/points3D.bin").unlink()
    s = load_scene(cfg(tmp_path), "train")
    assert s.meta["bounds_from"] == "fallback" and s.near == 0.05
    assert s.far == pytest.approx(2 * math.sqrt(3)) and len(s.sources.meta) == 2


def test_fisheye_and_unknown_models_refused(tmp_path):
    make_scene(tmp_path, model="OPENCV_FISHEYE")
    with pytest.raises(SceneError, match="OPENCV_FISHEYE.*PINHOLE.*OPENCV"):
        load_scene(cfg(tmp_path), "train")
    b = bytearray((tmp_path / "sparse/0/cameras.bin").read_bytes())
    b[12:16] = struct.pack("<i", 99)  # model id of the first camera
    (tmp_path / "sparse/0/cameras.bin").write_bytes(bytes(b))
    with pytest.raises(SceneError, match="cameras.bin: camera 1: unknown camera model id 99"):
        load_scene(cfg(tmp_path), "train")


@pytest.mark.parametrize("stem,what", [("cameras", "camera 1 params"),
                                       ("images", "2D points|name|image"),
                                       ("points3D", "track|3D point")])
def test_truncated_binary_names_file_and_field(tmp_path, stem, what):
    make_scene(tmp_path)
    p = tmp_path / "sparse/0" / f"{stem}.bin"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 5])
    with pytest.raises(SceneError, match=rf"{stem}\.bin: file ends early \(truncated\?\) while "
                                         rf"reading ({what})"):
        load_scene(cfg(tmp_path), "train")


def test_text_errors_name_file_and_line(tmp_path):
    make_scene(tmp_path, binary=False)
    p = tmp_path / "sparse/0/cameras.txt"
    p.write_text(p.read_text().replace("OPENCV 8 6 7.0", "OPENCV 8 6 seven"))
    with pytest.raises(SceneError, match=r"cameras.txt: line 2: bad camera 1 params"):
        load_scene(cfg(tmp_path), "train")


def test_image_size_must_match_camera(tmp_path):
    make_scene(tmp_path)
    for f in (tmp_path / "images").iterdir():
        iio.imwrite(f, np.zeros((5, 8, 3), np.uint8))
    with pytest.raises(SceneError, match=r"is 8x5 \(W x H\) but its camera .* is 8x6"):
        open_scene(cfg(tmp_path), "train")


def test_colmap_dir_bare_model_folder(tmp_path):
    make_scene(tmp_path)
    (tmp_path / "sparse/0").rename(tmp_path / "model")
    (tmp_path / "sparse").rmdir()
    with pytest.raises(SceneError, match="cannot detect"):
        detect_format(tmp_path)
    s = load_scene(cfg(tmp_path, colmap_dir="model"), "train")
    assert s.meta["format"] == "colmap" and s.sources.meta[0].endswith("model/cameras.bin")


def test_cache_key_covers_orient(tmp_path):
    from nerf_dist.ray_cache.key import cache_key
    make_scene(tmp_path)
    assert cache_key(cfg(tmp_path)) != cache_key(cfg(tmp_path, orient="pca"))


@pytest.mark.slow
def test_two_rank_training_on_a_colmap_scene(tmp_path):
    """Cache build and training on a COLMAP scene with 2 real gloo ranks."""
    make_scene(tmp_path / "scene", n=8, size=(16, 12))
    run = tmp_path / "run"
    train_tiny(tmp_path / "scene", run, "train.steps=10", "data.llff_hold=4", nproc=2)
    doc = read_status(str(run))
    assert doc["state"] == "finished", doc
    manifests = list(run.rglob("manifest.json"))
    assert manifests and '"colmap"' in manifests[0].read_text()


def test_capture_config_reads_a_colmap_scene(tmp_path):
    from nerf_dist.config import load_config
    make_scene(tmp_path)
    c = load_config(str(Path(__file__).resolve().parents[1] / "configs/capture.yaml"),
                    [f"data.root={tmp_path}"])
    s = load_scene(c.data, "train")
    assert s.meta["format"] == "colmap" and float(s.background.sum()) == 0.0


def test_sparse_points_come_in_the_scene_frame(tmp_path):
    """scenes.sparse_points maps COLMAP's points3D with the normalisation the reader applies to
    the cameras (what model.partitions cuts its boxes at); other formats have none."""
    truth = make_scene(tmp_path, n=8)
    pts = sparse_points(cfg(tmp_path))
    T = np.asarray(load_scene(cfg(tmp_path), "train").meta["transform"])
    want = truth["points"] @ T[:3, :3].T + T[:3, 3]
    assert pts.shape == (40, 3) and np.abs(pts - want).max() < 1e-9
    assert sparse_points(cfg(tmp_path)) is not None
    (tmp_path / "sparse/0/points3D.bin").unlink()
    assert sparse_points(cfg(tmp_path)) is None


def test_ids_past_2_31_are_read_unsigned(tmp_path):
    """COLMAP's ids are unsigned (uint32 camera and image ids, uint64 point ids): one past 2^31
    names the same image in images.bin and in a point's track, as in the text model."""
    from nerf_dist.scenes.colmap_model import read_cameras, read_images, read_points3D
    big_img, big_cam, big_pt = 2 ** 32 - 3, 2 ** 31 + 5, 2 ** 40 + 1
    for binary in (True, False):
        folder = tmp_path / ("bin" if binary else "txt")
        write_model(folder, {big_cam: ("PINHOLE", 8, 6, [7.0, 7.0, 4.0, 3.0])},
                    [(big_img, [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0], big_cam, "a.png")],
                    [(big_pt, [0.0, 0.0, 0.0], [1, 2, 3], 0.5, [(big_img, 2 ** 31 + 1)])], binary)
        ext = ".bin" if binary else ".txt"
        assert list(read_cameras(str(folder / f"cameras{ext}"))) == [big_cam]
        assert list(read_images(str(folder / f"images{ext}"))) == [big_img]
        pts = read_points3D(str(folder / f"points3D{ext}"))
        assert pts.ids.tolist() == [big_pt] and pts.track_image.tolist() == [big_img]
        assert pts.track_image.dtype == np.int64
