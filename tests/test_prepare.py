"""`nerf-dist prepare` (pycolmap structure from motion) and the reader against pycolmap's own maths.

The end-to-end test renders its own scene with known cameras: a ground plane, a box and a sphere
inside a large enclosing sphere, all covered in multi-scale value noise (SIFT needs texture
everywhere), seen by 24 cameras on a wavy ring. pycolmap is in the test extra, so CI runs all.
"""
from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, run_cli
from nerf_dist.config import DataConfig
from nerf_dist.prepare import PrepareError, PrepareOptions, prepare
from nerf_dist.prepare.inputs import collect_images, extract_frames, sharpness
from nerf_dist.render_ops.rays import distort, make_rays
from nerf_dist.scenes import load_scene
from nerf_dist.scenes.colmap_model import read_cameras, read_images

pycolmap = pytest.importorskip("pycolmap")

VIEWS, W, H, FOCAL = 24, 200, 150, 180.0


# ----------------------------------------------------------------------------- a textured scene

@functools.cache
def _table(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((64, 64, 64, 3))


def _noise(p: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """Smooth value noise [n, 3] at points p [n, 3] (trilinear over a 64^3 random lattice)."""
    table = _table(seed)
    q = p * scale
    i0 = np.floor(q).astype(np.int64)
    f = q - i0
    f = f * f * (3 - 2 * f)
    out = 0.0
    for corner in np.ndindex(2, 2, 2):
        w = np.prod([f[:, a] if c else 1 - f[:, a] for a, c in enumerate(corner)], axis=0)
        idx = (i0 + corner) % 64
        out = out + w[:, None] * table[idx[:, 0], idx[:, 1], idx[:, 2]]
    return out


def _trace(o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Colour [n, 3] of rays o, d [n, 3] (unit d): nearest of plane, box, sphere, enclosure."""
    dd = np.where(np.abs(d) < 1e-12, 1e-12, d)
    tg = (-0.5 - o[:, 2]) / dd[:, 2]
    t = np.where(tg > 0, tg, np.inf)
    lo, hi = np.array([-0.4, -0.3, -0.5]), np.array([0.2, 0.3, 0.2])
    t1, t2 = (lo - o) / dd, (hi - o) / dd
    tn, tf = np.minimum(t1, t2).max(1), np.maximum(t1, t2).min(1)
    t = np.minimum(t, np.where((tf >= tn) & (tn > 0), tn, np.inf))
    oc = o - np.array([0.5, 0.3, -0.1])
    b = (oc * d).sum(1)
    disc = b * b - ((oc * oc).sum(1) - 0.35 ** 2)
    ts = -b - np.sqrt(np.maximum(disc, 0))
    t = np.minimum(t, np.where((disc >= 0) & (ts > 0), ts, np.inf))
    b = (o * d).sum(1)
    t = np.minimum(t, -b + np.sqrt(np.maximum(b * b - ((o * o).sum(1) - 64.0), 0)))
    p = o + d * t[:, None]
    c = 0.5 * _noise(p, 6.0, 1) + 0.3 * _noise(p, 17.0, 2) + 0.2 * _noise(p, 45.0, 3)
    return np.clip((c - 0.5) * 2.2 + 0.5, 0, 1)


def true_cameras(n: int = VIEWS) -> np.ndarray:
    """c2w [n, 4, 4] (OpenGL) on a wavy ring of radius 2.2 looking at (0, 0, -0.2), z up."""
    out = []
    for k in range(n):
        a = 2 * math.pi * k / n
        c = np.array([2.2 * math.cos(a), 2.2 * math.sin(a), 0.9 + 0.3 * math.sin(3 * a)])
        z = c - np.array([0.0, 0.0, -0.2])
        z /= np.linalg.norm(z)
        x = np.cross([0.0, 0.0, 1.0], z)
        x /= np.linalg.norm(x)
        m = np.eye(4)
        m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, np.cross(z, x), z, c
        out.append(m)
    return np.stack(out)


def render(c2w: np.ndarray, ss: int = 2) -> np.ndarray:
    """[H, W, 3] uint8 of one camera (pinhole, FOCAL, principal point at the centre)."""
    j, i = np.meshgrid((np.arange(H * ss) + 0.5) / ss, (np.arange(W * ss) + 0.5) / ss, indexing="ij")
    d = np.stack([(i - W / 2) / FOCAL, -(j - H / 2) / FOCAL, -np.ones_like(i)], -1).reshape(-1, 3)
    d = d @ c2w[:3, :3].T
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    col = _trace(np.broadcast_to(c2w[:3, 3], d.shape), d).reshape(H, ss, W, ss, 3).mean((1, 3))
    return (col * 255 + 0.5).astype(np.uint8)


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (s, R, t) minimising |s R src + t - dst|^2; src, dst: [n, 3]."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    U, S, Vt = np.linalg.svd(b.T @ a / len(src))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    R = U @ D @ Vt
    s = float(np.trace(np.diag(S) @ D) / (a * a).sum(1).mean())
    return s, R, md - s * R @ ms


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for k, c in enumerate(true_cameras()):
        iio.imwrite(root / f"view_{k:02d}.png", render(c))
    return root


@pytest.fixture(scope="module")
def prepared(photos, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("prep") / "scene"
    report = prepare(str(photos), str(out), PrepareOptions(threads=1), log=print)
    return out, report


# ----------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_prepare_recovers_the_cameras(prepared):
    out, report = prepared
    print(f"prepare: {report['registered']}/{report['images_in']} registered, timings "
          f"{report['timings_s']}, reprojection {report['mean_reprojection_error_px']:.3f} px")
    assert report["registered"] == VIEWS and report["not_registered"] == []
    assert sorted(os.listdir(out)) == ["database.db", "images", "prepare_report.json", "sparse"]
    assert json.loads((out / "prepare_report.json").read_text())["registered"] == VIEWS
    assert report["mean_reprojection_error_px"] < 1.0
    assert not [p for p in out.parent.iterdir() if ".prepare-" in p.name]  # staging removed
    # the reader's cameras, aligned to the truth by one similarity
    scenes = [load_scene(DataConfig(root=str(out), orient="none"), s) for s in ("train", "test")]
    names = [Path(f).name for s in scenes for f in s.files]
    c2w = torch.cat([s.c2w for s in scenes]).double().numpy()
    truth = true_cameras()[[int(n[5:7]) for n in names]]
    s, R, t = umeyama(c2w[:, :, 3], truth[:, :3, 3])
    pos_err = np.linalg.norm(s * c2w[:, :, 3] @ R.T + t - truth[:, :3, 3], axis=1)
    rot_err = [math.degrees(math.acos(np.clip((np.trace((R @ c[:, :3]).T @ g[:3, :3]) - 1) / 2,
                                              -1, 1))) for c, g in zip(c2w, truth)]
    print(f"pose error vs truth: position max {pos_err.max():.4f} (ring radius 2.2), rotation "
          f"max {max(rot_err):.3f} deg")
    # measured here (1 thread): position 0.0065, rotation 0.30 deg
    assert pos_err.max() < 0.01 * 2.2 and max(rot_err) < 1.0
    K = scenes[0].K[0].double().numpy()
    assert abs(K[0, 0] / FOCAL - 1) < 0.02 and abs(K[0, 2] - W / 2) < 2 and abs(K[1, 2] - H / 2) < 2


@pytest.mark.slow
def test_sfm_max_size_keeps_full_size_intrinsics(photos, tmp_path):
    """SIFT on images shrunk to 128 px; the model's cameras are still in full-size pixels."""
    out = tmp_path / "small"
    rep = prepare(str(photos), str(out), PrepareOptions(threads=1, sfm_max_size=128),
                  log=lambda *_: None)
    cam = read_cameras(str(out / "sparse/0/cameras.bin"))[1]
    print(f"sfm_max_size=128: {rep['registered']}/{rep['images_in']} registered, camera {cam}")
    assert (cam.width, cam.height) == (W, H) and rep["registered"] >= 0.9 * VIEWS
    assert abs(cam.params[0] / FOCAL - 1) < 0.05 and abs(cam.params[1] / FOCAL - 1) < 0.05


@pytest.mark.slow
def test_prepare_from_a_video(photos, tmp_path):
    """The 24 views as a 48-frame video (each view once blurred, once sharp): --frames 24 keeps
    the sharp one of each pair, matching is sequential, and the ring registers."""
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    path = str(tmp_path / "ring.mp4")
    w = imageio_ffmpeg.write_frames(path, (W, H), fps=12, quality=9, macro_block_size=1)
    w.send(None)
    for k in range(VIEWS):
        sharp = iio.imread(photos / f"view_{k:02d}.png")
        blurred = np.asarray(Image.fromarray(sharp).resize((W // 4, H // 4)).resize((W, H)))
        for f in (blurred, sharp):
            w.send(np.ascontiguousarray(f).tobytes())
    w.close()
    rep = prepare(path, str(tmp_path / "scene"), PrepareOptions(threads=1, frames=VIEWS),
                  log=print)
    assert rep["kind"] == "video" and rep["matching"] == "sequential"
    assert rep["images_in"] == VIEWS and rep["registered"] >= 0.9 * VIEWS


@pytest.mark.slow
def test_reader_projects_like_pycolmap(prepared):
    """Oracle: on the model pycolmap wrote, each 3D point projects with nerf_dist's camera
    (K, OpenCV distortion, normalised c2w) to pycolmap's own pixel within 1e-3 px, and the ray
    make_rays casts through that pixel passes through the point."""
    out, _ = prepared
    check_against_pycolmap(out, "scene")


def check_against_pycolmap(root: Path, what: str) -> None:
    rec = pycolmap.Reconstruction(str(root / "sparse" / "0"))
    scene = load_scene(DataConfig(root=str(root), llff_hold=2), "train")
    T = np.asarray(scene.meta["transform"])
    by_name = {rec.images[i].name: rec.images[i] for i in rec.reg_image_ids()}
    worst_px, worst_ray, n = 0.0, 0.0, 0
    for k, f in enumerate(scene.files):
        img = by_name[Path(f).name]
        ids = [p.point3D_id for p in img.points2D if p.has_point3D()][:40]
        for pid in ids:
            X = rec.points3D[pid].xyz
            want = np.asarray(img.project_point(X))
            Xs = T[:3, :3] @ X + T[:3, 3]
            c2w = scene.c2w[k].double().numpy()
            xc = c2w[:, :3].T @ (Xs - c2w[:, 3])  # OpenGL camera axes
            x, y = torch.tensor([xc[0] / -xc[2]]), torch.tensor([-xc[1] / -xc[2]])
            if scene.distortion is not None:
                x, y = distort(x.double(), y.double(), scene.distortion[k].double())
            Kk = scene.K[k].double().numpy()
            got = np.array([Kk[0, 0] * float(x) + Kk[0, 2], Kk[1, 1] * float(y) + Kk[1, 2]])
            worst_px = max(worst_px, float(np.abs(got - want).max()))
            r = make_rays(torch.tensor(want[None], dtype=torch.float64), scene.K[k].double(),
                          scene.c2w[k].double(),
                          scene.distortion[k].double() if scene.distortion is not None else None)
            o, d = r["rays_o"][0].numpy(), r["rays_d"][0].numpy()
            along = (Xs - o) @ d
            worst_ray = max(worst_ray, float(np.linalg.norm(o + along * d - Xs) / along))
            n += 1
    print(f"{what}: {n} projections, worst pixel difference {worst_px:.2e} px, worst ray miss "
          f"{worst_ray:.2e} (relative to depth)")
    assert n > 0 and worst_px < 1e-3 and worst_ray < 1e-5


def test_reader_projects_like_pycolmap_on_a_hand_made_model(tmp_path):
    """The same oracle on a model pycolmap writes from cameras and points we give it (OPENCV
    with strong distortion, two cameras of one size), no solve needed."""
    rng = np.random.default_rng(1)
    rec = pycolmap.Reconstruction()
    for cid, params in ((1, [60.0, 62.0, 40.3, 29.7, -0.12, 0.03, 0.004, -0.002]),
                        (2, [55.0, 55.0, 39.0, 31.0, 0.08, -0.01, -0.003, 0.001])):
        rec.add_camera_with_trivial_rig(pycolmap.Camera(model="OPENCV", width=80, height=60,
                                                        params=params, camera_id=cid))
    (tmp_path / "images").mkdir()
    pts = rng.uniform(-0.6, 0.6, (30, 3))
    for k in range(6):
        a = 2 * math.pi * k / 6
        c = np.array([3 * math.cos(a), 3 * math.sin(a), 0.8])
        z = -c / np.linalg.norm(c)
        x = np.cross(z, [0, 0, 1.0])
        x /= np.linalg.norm(x)
        Rw = np.stack([x, np.cross(z, x), z])
        q = Rw  # rows: camera axes (OpenCV) in world
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(q), -q @ c)
        name = f"im{k}.png"
        img = pycolmap.Image(name=name, camera_id=1 + k % 2, image_id=10 + k)
        pts2d = [pycolmap.Point2D(np.zeros(2)) for _ in pts]
        img.points2D = pycolmap.Point2DList(pts2d)
        rec.add_image_with_trivial_frame(img, pose)
        iio.imwrite(tmp_path / "images" / name, np.zeros((60, 80, 3), np.uint8))
    for j, p in enumerate(pts):
        track = pycolmap.Track()
        for k in range(6):
            track.add_element(10 + k, j)
        rec.add_point3D(p, track)
    (tmp_path / "sparse" / "0").mkdir(parents=True)
    rec.write(str(tmp_path / "sparse" / "0"))
    check_against_pycolmap(tmp_path, "hand-made model")
    # and the binary and text forms pycolmap writes read the same
    txt = tmp_path / "txt"
    (txt / "sparse" / "0").mkdir(parents=True)
    (txt / "images").symlink_to(tmp_path / "images")
    rec.write_text(str(txt / "sparse" / "0"))
    a = load_scene(DataConfig(root=str(tmp_path), llff_hold=2), "train")
    b = load_scene(DataConfig(root=str(txt), llff_hold=2), "train")
    assert torch.allclose(a.c2w, b.c2w, atol=1e-6) and torch.allclose(a.K, b.K)
    assert [i.name for i in read_images(str(tmp_path / "sparse/0/images.bin")).values()] == \
        [i.name for i in read_images(str(txt / "sparse/0/images.txt")).values()]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_training_on_the_prepared_scene(prepared, tmp_path):
    """configs/capture_cpu.yaml (model.kind=unbounded; format auto -> colmap) with a smaller
    batch, 150 steps at quarter resolution, then eval on the held-out views.

    NOTE: one rank (the 2-rank run on a COLMAP scene is tests/test_colmap.py's); the value-noise
    texture is far harder to fit than a photo, so the bar is modest: it says the recovered
    cameras agree with each other well enough that a short run fits held-out views at all.
    Every override is a key of the unbounded kind (a key of another kind is refused on the
    command line; until issue 24 this test passed the fast kind's keys, which were ignored).
    Measured: 13.02 dB after 150 steps (33 s of training on a shared 2-core machine).
    """
    out, _ = prepared
    run = tmp_path / "run"
    args = ["--config", str(REPO / "configs" / "capture_cpu.yaml"), f"data.root={out}",
            f"run.dir={run}", "log.progress=false", "eval.every=0", "train.threads=1",
            "model.hash_log2_size=15", "model.hash_max_res=512", "model.proposal_log2_size=14",
            "model.field_samples=24", "model.chunk=8192",
            "train.rays_per_batch=512", "train.lr_final=1.0e-3", "train.steps=150",
            "train.lr_decay_steps=150", "checkpoint.every=1000", "data.llff_hold=6",
            "data.downscale=4"]
    res = run_cli(["train", *args], timeout=1500)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    res = run_cli(["eval", "--run", str(run)], timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads((run / "eval_test" / "report.json").read_text())
    print(f"held-out PSNR after 150 steps on the prepared scene: {rep['psnr']:.2f} dB")
    assert rep["psnr"] > 12.0


# ----------------------------------------------------------------------------- bad input

def _fails(inp, out: Path, match: str, **kw):
    with pytest.raises(PrepareError, match=match):
        prepare(str(inp), str(out), PrepareOptions(threads=1, **kw), log=lambda *_: None)
    assert not out.exists(), "a failed prepare left an output folder behind"
    assert not [p for p in out.parent.iterdir() if ".prepare-" in p.name]


def test_empty_folder(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("hi")
    _fails(tmp_path / "in", tmp_path / "out", r"no images in .*notes.txt")


def test_one_image(tmp_path):
    (tmp_path / "in").mkdir()
    iio.imwrite(tmp_path / "in" / "a.png", np.zeros((20, 30, 3), np.uint8))
    _fails(tmp_path / "in", tmp_path / "out", r"only one image .*a.png")


def test_corrupt_image_is_named(tmp_path):
    (tmp_path / "in").mkdir()
    iio.imwrite(tmp_path / "in" / "a.png", np.zeros((20, 30, 3), np.uint8))
    (tmp_path / "in" / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    _fails(tmp_path / "in", tmp_path / "out", r"cannot read image .*b.jpg")


def test_mixed_sizes_are_named(tmp_path):
    (tmp_path / "in").mkdir()
    for n, s in (("a.png", (20, 30)), ("b.png", (20, 30)), ("c.png", (30, 20))):
        iio.imwrite(tmp_path / "in" / n, np.zeros((*s, 3), np.uint8))
    _fails(tmp_path / "in", tmp_path / "out", r"one size.*c.png is 20x30")


def test_one_image_file_is_not_a_video(tmp_path):
    iio.imwrite(tmp_path / "a.png", np.zeros((20, 30, 3), np.uint8))
    _fails(tmp_path / "a.png", tmp_path / "out", r"a.png is one image.*folder")


def test_undecodable_video(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 4096)
    _fails(tmp_path / "clip.mp4", tmp_path / "out", r"cannot decode video .*clip.mp4")


def test_images_with_nothing_in_common(tmp_path):
    """Random noise photos: nothing matches, so no model (or almost nothing) registers."""
    (tmp_path / "in").mkdir()
    rng = np.random.default_rng(0)
    for k in range(4):
        iio.imwrite(tmp_path / "in" / f"n{k}.png", rng.integers(0, 256, (60, 80, 3), np.uint8))
    _fails(tmp_path / "in", tmp_path / "out", r"(?s)(no model|images registered).*not registered: "
                                              r".*n\d.png.*what to try", )
    rep = json.loads((tmp_path / "out.failed_report.json").read_text())
    assert rep["images_in"] == 4 and rep["registered"] < 2


def test_existing_output_is_not_overwritten(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(PrepareError, match="exists and is not empty.*--overwrite"):
        prepare(str(tmp_path / "in"), str(tmp_path / "out"), PrepareOptions())
    assert (tmp_path / "out" / "keep.txt").read_text() == "x"


def test_missing_pycolmap_says_how_to_install(tmp_path, monkeypatch):
    import builtins
    real = builtins.__import__

    def no_pycolmap(name, *a, **kw):
        if name == "pycolmap":
            raise ImportError("No module named 'pycolmap'")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_pycolmap)
    with pytest.raises(PrepareError, match=r"pip install 'nerf_dist\[sfm\]'"):
        prepare(str(tmp_path), str(tmp_path / "out"), PrepareOptions())


def test_cli_prepare_errors_and_help(cli, tmp_path):
    r = cli("prepare", "--help")
    assert r.returncode == 0 and "--camera-model" in r.stdout and "sparse/0" in r.stdout
    r = cli("prepare", str(tmp_path / "nowhere"), str(tmp_path / "out"), "--no-progress")
    assert r.returncode == 1 and "input not found" in r.stderr
    r = cli("prepare", str(tmp_path), str(tmp_path / "out"), "--camera-model", "FOV")
    assert r.returncode == 1 and "--camera-model must be one of" in r.stderr


# ----------------------------------------------------------------------------- inputs

def test_exif_orientation_is_applied(tmp_path):
    (tmp_path / "in").mkdir()
    arr = np.zeros((20, 30, 3), np.uint8)
    arr[:, :5] = 255  # a white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees clockwise
    Image.fromarray(arr).save(tmp_path / "in" / "a.jpg", exif=exif, quality=95)
    Image.fromarray(arr).save(tmp_path / "in" / "b.jpg", exif=exif, quality=95)
    (tmp_path / "in" / "readme.md").write_text("x")
    col = collect_images(str(tmp_path / "in"), str(tmp_path / "out"))
    out = iio.imread(tmp_path / "out" / "a.jpg")
    assert out.shape[:2] == (30, 20) and out[:5].mean() > 200  # the band is now on top
    assert col.size == (20, 30) and col.skipped == [("readme.md", "not a png/jpg image")]


def test_video_frames_prefer_the_sharpest(tmp_path):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 256, (64, 64, 3), np.uint8)
    blurred = np.full_like(sharp, 128)
    frames = [sharp if k % 5 == 2 else blurred for k in range(20)]  # one sharp frame per 5
    path = str(tmp_path / "clip.mp4")
    w = imageio_ffmpeg.write_frames(path, (64, 64), fps=10, quality=10, macro_block_size=1)
    w.send(None)
    for f in frames:
        w.send(np.ascontiguousarray(f).tobytes())
    w.close()
    col = extract_frames(path, str(tmp_path / "out"), 4)
    assert col.names == [f"frame_{k:05d}.jpg" for k in range(1, 5)] and col.kind == "video"
    for n in col.names:
        assert sharpness(iio.imread(tmp_path / "out" / n)) > 100 * (sharpness(blurred) + 1)
