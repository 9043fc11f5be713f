"""Scene readers on tiny scenes written by the tests (Blender, LLFF, instant-ngp layouts)."""
from __future__ import annotations

import json
import math
import os
import struct
import warnings
import zlib
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from nerf_dist.config import DataConfig
from nerf_dist.scenes import Scene, SceneError, detect_format, load_scene
from nerf_dist.scenes import images as im
from nerf_dist.scenes.llff import average_pose, llff_to_opengl, recenter

W, H = 8, 6
ANGLE = 0.8
LEGO = Path(__file__).resolve().parents[2] / "shared/data/lego"


# ----------------------------------------------------------------------------- writers

def _rgba(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)


def _pose(k: int) -> list[list[float]]:
    a = 0.3 * k
    m = np.eye(4)
    m[:3, :3] = [[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]]
    m[:3, 3] = [1.0 + k, -2.0 * k, 0.5]
    return m.tolist()


def write_blender(root: Path, splits=("train", "val", "test"), n: int = 3, sizes=None) -> None:
    for s in splits:
        (root / s).mkdir(parents=True, exist_ok=True)
        frames = []
        for i in range(n):
            h, w = (sizes or {}).get((s, i), (H, W))
            iio.imwrite(root / s / f"r_{i}.png", _rgba(i, h, w))
            frames.append({"file_path": f"./{s}/r_{i}", "transform_matrix": _pose(i)})
        (root / f"transforms_{s}.json").write_text(json.dumps({"camera_angle_x": ANGLE, "frames": frames}))


def gl_to_llff_row(c2w_gl: np.ndarray, hwf, bounds) -> np.ndarray:
    """One poses_bounds row from an OpenGL c2w [3, 4]: LLFF columns are [down, right, back]."""
    x, y, z, t = c2w_gl[:, 0], c2w_gl[:, 1], c2w_gl[:, 2], c2w_gl[:, 3]
    m = np.stack([-y, x, z, t, np.asarray(hwf, float)], axis=1)  # [3, 5]
    return np.concatenate([m.reshape(-1), bounds])


def _gl_poses(n: int) -> np.ndarray:
    out = []
    for k in range(n):
        a = 0.05 * (k - n / 2)
        R = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
        out.append(np.concatenate([R, np.array([[0.2 * k], [0.1], [3.0]])], axis=1))
    return np.stack(out)


def write_llff(root: Path, n: int = 10, full=(12, 16), focal=20.0) -> np.ndarray:
    (root / "images").mkdir(parents=True, exist_ok=True)
    gl = _gl_poses(n)
    rows = [gl_to_llff_row(gl[k], (full[0], full[1], focal), [2.0 + 0.1 * k, 10.0 + k]) for k in range(n)]
    np.save(root / "poses_bounds.npy", np.stack(rows))
    for k in range(n):
        iio.imwrite(root / "images" / f"IMG_{k:03d}.png", _rgba(k, *full)[..., :3])
    return gl


def write_ngp(root: Path, frames_extra=None, glob_extra=None, n: int = 4) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    (root / "imgs").mkdir(exist_ok=True)
    frames = []
    for i in range(n):
        iio.imwrite(root / "imgs" / f"f{i}.png", _rgba(i))
        fr = {"file_path": f"imgs/f{i}" if i % 2 else f"imgs/f{i}.png", "transform_matrix": _pose(i)}
        fr.update((frames_extra or {}).get(i, {}))
        frames.append(fr)
    data = {"fl_x": 10.0, "fl_y": 11.0, "w": W, "h": H, "aabb_scale": 4, "frames": frames}
    data.update(glob_extra or {})
    (root / "transforms.json").write_text(json.dumps(data))
    return data


def cfg(root, **kw) -> DataConfig:
    return DataConfig(root=str(root), **kw)


# ----------------------------------------------------------------------------- images

def test_composite_values():
    img = np.array([[[1.0, 0.5, 0.0, 0.25], [0.2, 0.4, 0.6, 1.0]]], dtype=np.float32)
    white = im.composite(img, [1, 1, 1])
    np.testing.assert_allclose(white[0, 0], [1.0, 0.5 * 0.25 + 0.75, 0.75], atol=1e-6)
    np.testing.assert_allclose(white[0, 1], [0.2, 0.4, 0.6], atol=1e-6)
    black = im.composite(img, [0, 0, 0])
    np.testing.assert_allclose(black[0, 0], [0.25, 0.125, 0.0], atol=1e-6)


def test_downscale_area_average_and_crop():
    x = np.arange(5 * 5, dtype=np.float32).reshape(5, 5, 1)
    y = im.downscale(x, 2)
    assert y.shape == (2, 2, 1)  # remainder row/column cropped
    np.testing.assert_allclose(y[..., 0], [[(0 + 1 + 5 + 6) / 4, (2 + 3 + 7 + 8) / 4],
                                           [(10 + 11 + 15 + 16) / 4, (12 + 13 + 17 + 18) / 4]])
    d = np.array([[0, 4, 2, 2], [0, 0, 2, 2]], dtype=np.float32)
    np.testing.assert_allclose(im.downscale_depth(d, 2), [[4.0, 2.0]])  # hits only


def test_read_8_and_16_bit(tmp_path):
    a8 = _rgba(0)
    iio.imwrite(tmp_path / "a.png", a8)
    np.testing.assert_allclose(im.read_image(str(tmp_path / "a.png")), a8 / 255.0, atol=1e-6)
    g16 = (np.arange(H * W).reshape(H, W) * 1000).astype(np.uint16)
    iio.imwrite(tmp_path / "g.png", g16)
    g = im.read_image(str(tmp_path / "g.png"))
    assert g.shape == (H, W, 3) and g.dtype == np.float32
    np.testing.assert_allclose(g[..., 1], g16 / 65535.0, atol=1e-6)
    # 16-bit RGBA written by hand (Pillow cannot write it); read back at >= 8-bit precision.
    a16 = (np.arange(H * W * 4).reshape(H, W, 4) * 300).astype(np.uint16)
    raw = b"".join(b"\x00" + a16[y].astype(">u2").tobytes() for y in range(H))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    (tmp_path / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 16, 6, 0, 0, 0))
                                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    c = im.read_image(str(tmp_path / "c.png"))
    np.testing.assert_allclose(c, a16 / 65535.0, atol=1.0 / 255)


def test_read_errors_name_file(tmp_path):
    with pytest.raises(SceneError, match="nope.png"):
        im.read_image(str(tmp_path / "nope.png"))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(SceneError, match="bad.png"):
        im.read_image(str(tmp_path / "bad.png"))


# ----------------------------------------------------------------------------- detection

def test_detect_format(tmp_path):
    write_blender(tmp_path / "b", splits=("train",), n=1)
    write_llff(tmp_path / "l", n=2)
    write_ngp(tmp_path / "n", n=1)
    assert detect_format(tmp_path / "b") == "blender"
    assert detect_format(str(tmp_path / "l")) == "llff"
    assert detect_format(str(tmp_path / "n")) == "ngp"
    (tmp_path / "e").mkdir()
    with pytest.raises(SceneError, match=r"e.*transforms_train\.json.*poses_bounds\.npy"):
        detect_format(str(tmp_path / "e"))
    with pytest.raises(SceneError, match="unknown split"):
        load_scene(cfg(tmp_path / "b"), "training")


# ----------------------------------------------------------------------------- blender

def test_blender_intrinsics_poses_images(tmp_path):
    write_blender(tmp_path)
    s = load_scene(cfg(tmp_path, white_background=False), "train")
    assert isinstance(s, Scene) and s.n == 3 and (s.H, s.W) == (H, W)
    f = 0.5 * W / math.tan(0.5 * ANGLE)
    torch.testing.assert_close(s.K[1], torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]]))
    torch.testing.assert_close(s.c2w[2], torch.tensor(_pose(2), dtype=torch.float32)[:3])
    a = _rgba(1) / 255.0
    np.testing.assert_allclose(s.images[1].numpy(), a[..., :3] * a[..., 3:], atol=1e-6)
    assert s.near == 2.0 and s.far == 6.0 and s.depths is None and s.distortion is None
    torch.testing.assert_close(s.aabb, torch.tensor([[-1.5] * 3, [1.5] * 3]))
    torch.testing.assert_close(s.background, torch.zeros(3))
    assert s.files[0].endswith("r_0.png") and s.split == "train"

    s2 = load_scene(cfg(tmp_path, downscale=2), "val")
    assert (s2.H, s2.W) == (3, 4)
    torch.testing.assert_close(s2.K[0], torch.tensor([[f / 2, 0, 2.0], [0, f / 2, 1.5], [0, 0, 1]]))
    comp = im.composite(_rgba(0) / 255.0, [1, 1, 1])
    np.testing.assert_allclose(s2.images[0].numpy(), comp.reshape(3, 2, 4, 2, 3).mean((1, 3)), atol=1e-6)


def test_blender_test_falls_back_to_val(tmp_path):
    write_blender(tmp_path, splits=("train", "val"), n=2)
    with pytest.warns(UserWarning, match="transforms_test.json"):
        s = load_scene(cfg(tmp_path), "test")
    assert s.n == 2 and s.split == "test"


def test_blender_missing_image(tmp_path):
    write_blender(tmp_path, splits=("train",), n=4)
    os.remove(tmp_path / "train" / "r_1.png")
    os.remove(tmp_path / "train" / "r_3.png")
    with pytest.raises(SceneError, match=r"transforms_train\.json: frame 1: .*r_1\.png"):
        load_scene(cfg(tmp_path), "train")
    with pytest.warns(UserWarning, match=r"2 frame.*r_1\.png.*r_3\.png") as rec:
        s = load_scene(cfg(tmp_path, skip_missing=True), "train")
    assert len([w for w in rec if "missing" in str(w.message)]) == 1
    assert s.n == 2 and [Path(f).name for f in s.files] == ["r_0.png", "r_2.png"]
    torch.testing.assert_close(s.c2w[1], torch.tensor(_pose(2), dtype=torch.float32)[:3])


def test_blender_size_mismatch(tmp_path):
    write_blender(tmp_path, splits=("train",), n=3, sizes={("train", 2): (H, W + 2)})
    with pytest.raises(SceneError, match=r"frame 2: image .*r_2\.png is 10x6"):
        load_scene(cfg(tmp_path), "train")


def test_blender_bad_json_and_fields(tmp_path):
    write_blender(tmp_path, splits=("train",), n=3)
    p = tmp_path / "transforms_train.json"
    good = json.loads(p.read_text())
    p.write_text('{\n  "camera_angle_x": 0.5,\n  "frames": [,]\n}')
    with pytest.raises(SceneError, match=r"transforms_train\.json is not valid JSON \(line 3"):
        load_scene(cfg(tmp_path), "train")

    bad = dict(good)
    del bad["camera_angle_x"]
    p.write_text(json.dumps(bad))
    with pytest.raises(SceneError, match=r"transforms_train\.json: missing field 'camera_angle_x'"):
        load_scene(cfg(tmp_path), "train")

    bad = json.loads(json.dumps(good))
    del bad["frames"][1]["transform_matrix"]
    p.write_text(json.dumps(bad))
    with pytest.raises(SceneError, match=r"transforms_train\.json: frame 1: missing field 'transform_matrix'"):
        load_scene(cfg(tmp_path), "train")

    bad = json.loads(json.dumps(good))
    bad["frames"][2]["transform_matrix"][0][3] = float("nan")
    p.write_text(json.dumps(bad))  # json.dumps writes NaN, which json.load accepts
    with pytest.raises(SceneError, match=r"transforms_train\.json: frame 2: .*non-finite"):
        load_scene(cfg(tmp_path), "train")

    p.write_text(json.dumps({"camera_angle_x": 0.5, "frames": []}))
    with pytest.raises(SceneError, match=r"transforms_train\.json: split 'train' has no frames"):
        load_scene(cfg(tmp_path), "train")
    with pytest.raises(SceneError, match=r"transforms_val\.json"):
        load_scene(cfg(tmp_path), "val")


@pytest.mark.skipif(not os.path.exists(LEGO / "transforms_train.json"), reason="lego data not present")
def test_blender_lego_downscale_8():
    s = load_scene(cfg(LEGO, downscale=8), "train")
    assert s.images.shape == (70, 100, 100, 3)
    assert abs(float(s.K[0, 0, 0]) - 138.89) < 0.05
    assert float(s.images.min()) >= 0 and float(s.images.max()) <= 1
    assert torch.isfinite(s.c2w).all()


# ----------------------------------------------------------------------------- llff

def test_llff_axis_conversion_and_recenter():
    R = np.eye(3)  # LLFF camera [down, right, back] = world axes
    np.testing.assert_allclose(llff_to_opengl(R), [[0, -1, 0], [1, 0, 0], [0, 0, 1]])
    c2w = _gl_poses(6)
    c2w[:, :, 3] += [5.0, -1.0, 2.0]
    out = recenter(c2w)
    np.testing.assert_allclose(average_pose(out), np.eye(4)[:3], atol=1e-9)


def test_llff_reader(tmp_path):
    gl = write_llff(tmp_path, n=10)
    tr = load_scene(cfg(tmp_path, llff_hold=4, downscale=2), "train")
    te = load_scene(cfg(tmp_path, llff_hold=4, downscale=2), "test")
    va = load_scene(cfg(tmp_path, llff_hold=4, downscale=2), "val")
    assert te.meta["indices"] == [0, 4, 8] == va.meta["indices"]
    assert tr.meta["indices"] == [1, 2, 3, 5, 6, 7, 9] and tr.n == 7
    assert (tr.H, tr.W) == (6, 8)
    torch.testing.assert_close(tr.K[0], torch.tensor([[10.0, 0, 4.0], [0, 10.0, 3.0], [0, 0, 1]]))
    # Rescale: 0.75 * min bound == 1.
    assert abs(tr.meta["bounds"][0] * 0.75 - 1.0) < 1e-9
    sc = 1.0 / (2.0 * 0.75)
    assert abs(tr.meta["scale"] - sc) < 1e-9
    # All views together are centred on the identity pose.
    allc = torch.zeros(10, 3, 4, dtype=torch.float64)
    allc[tr.meta["indices"]] = tr.c2w.double()
    allc[te.meta["indices"]] = te.c2w.double()
    np.testing.assert_allclose(average_pose(allc.numpy()), np.eye(4)[:3], atol=1e-5)
    # The loaded poses are one rigid motion of the (scaled) OpenGL truth: relative poses agree.
    A = allc.numpy()
    for a, b in ((0, 3), (2, 9)):
        rel_true = gl[a, :, :3].T @ gl[b, :, :3]
        np.testing.assert_allclose(A[a, :, :3].T @ A[b, :, :3], rel_true, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(A[a, :, 3] - A[b, :, 3]),
                                   sc * np.linalg.norm(gl[a, :, 3] - gl[b, :, 3]), rtol=1e-5)
    assert tr.ndc and tr.near == 0.0 and tr.far == 1.0 and tr.ndc_size == (6, 8) and tr.ndc_focal == 10.0
    torch.testing.assert_close(tr.aabb, torch.tensor([[-1.0] * 3, [1.0] * 3]))

    s = load_scene(cfg(tmp_path, llff_hold=4, ndc="false"), "train")
    assert not s.ndc and abs(s.near - 0.9 / 0.75) < 1e-6
    assert abs(s.far - 19.0 * sc) < 1e-5 and (s.H, s.W) == (12, 16)


def test_llff_prefers_downscaled_folder(tmp_path):
    write_llff(tmp_path, n=3)
    (tmp_path / "images_4").mkdir()
    for k in range(3):
        iio.imwrite(tmp_path / "images_4" / f"IMG_{k:03d}.png", np.full((3, 4, 3), 7, np.uint8))
    s = load_scene(cfg(tmp_path, downscale=4, llff_hold=2), "train")
    assert (s.H, s.W) == (3, 4) and "images_4" in s.files[0]
    np.testing.assert_allclose(s.images.numpy(), 7 / 255.0, atol=1e-6)
    assert abs(float(s.K[0, 0, 0]) - 5.0) < 1e-5


def test_llff_bad_inputs(tmp_path):
    with pytest.raises(SceneError, match=r"poses_bounds\.npy"):
        load_scene(cfg(tmp_path, format="llff"), "train")
    write_llff(tmp_path, n=4)
    p = tmp_path / "poses_bounds.npy"
    good = np.load(p)
    np.save(p, good[:, :15])
    with pytest.raises(SceneError, match=r"poses_bounds\.npy: expected an \[N, 17\].*\(4, 15\)"):
        load_scene(cfg(tmp_path), "train")
    bad = good.copy()
    bad[2, 3] = np.inf
    np.save(p, bad)
    with pytest.raises(SceneError, match=r"poses_bounds\.npy: frame 2: .*non-finite"):
        load_scene(cfg(tmp_path), "train")
    np.save(p, good)
    os.remove(tmp_path / "images" / "IMG_001.png")
    with pytest.raises(SceneError, match=r"poses_bounds\.npy has 4 poses but .*images holds 3"):
        load_scene(cfg(tmp_path), "train")


# ----------------------------------------------------------------------------- ngp

def test_ngp_intrinsics_distortion_and_normalisation(tmp_path):
    write_ngp(tmp_path, n=4, glob_extra={"k1": 0.1, "p2": 0.01},
              frames_extra={1: {"fl_x": 20.0, "cx": 3.5, "k2": -0.2}, 2: {"camera_angle_x": 1.0}})
    s = load_scene(cfg(tmp_path, llff_hold=3, downscale=2), "train")  # frames 1, 2
    assert s.n == 2 and s.meta["format"] == "ngp" and (s.H, s.W) == (3, 4)
    torch.testing.assert_close(s.K[0], torch.tensor([[10.0, 0, 1.75], [0, 5.5, 1.5], [0, 0, 1]]))
    fx2 = 0.5 * W / math.tan(0.5) / 2
    torch.testing.assert_close(s.K[1], torch.tensor([[fx2, 0, 2.0], [0, 5.5, 1.5], [0, 0, 1]]))
    torch.testing.assert_close(s.distortion, torch.tensor([[0.1, -0.2, 0, 0.01], [0.1, 0, 0, 0.01]]))
    assert s.far == pytest.approx(2 * math.sqrt(3) * 4) and s.near == 0.05
    torch.testing.assert_close(s.aabb, torch.tensor([[-4.0] * 3, [4.0] * 3]))
    assert s.files[0].endswith("f1.png")
    # Normalisation uses all frames: recompute it by hand.
    centres = np.array([np.array(_pose(i))[:3, 3] for i in range(4)])
    off = centres.mean(0)
    sc = 1 / np.abs(centres - off).max()
    np.testing.assert_allclose(s.c2w[:, :, 3].numpy(), (centres[1:3] - off) * sc, atol=1e-6)
    torch.testing.assert_close(s.c2w[:, :, :3], torch.tensor([_pose(i) for i in (1, 2)])[:, :3, :3].float())
    assert s.meta["scale"] == pytest.approx(sc)
    te = load_scene(cfg(tmp_path, llff_hold=3), "test")
    assert [Path(f).name for f in te.files] == ["f0.png", "f3.png"]
    allpos = torch.cat([s.c2w[:, :, 3], te.c2w[:, :, 3]])
    assert float(allpos.abs().max()) == pytest.approx(1.0, abs=1e-6)


def test_ngp_no_distortion_and_split_lists(tmp_path):
    write_ngp(tmp_path, n=4, glob_extra={"train_filenames": ["imgs/f0.png", "imgs/f2.png", "imgs/f3.png"],
                                          "test_filenames": ["imgs/f1.png"]})
    s = load_scene(cfg(tmp_path), "train")
    assert [Path(f).name for f in s.files] == ["f0.png", "f2.png", "f3.png"] and s.distortion is None
    assert [Path(f).name for f in load_scene(cfg(tmp_path), "val").files] == ["f1.png"]  # val <- test


def test_ngp_sibling_split_files(tmp_path):
    write_ngp(tmp_path, n=2)
    data = json.loads((tmp_path / "transforms.json").read_text())
    (tmp_path / "transforms_train.json").write_text(json.dumps(data))
    data["frames"] = data["frames"][:1]
    (tmp_path / "transforms_val.json").write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="transforms_test.json"):
        s = load_scene(cfg(tmp_path, format="ngp"), "test")
    assert s.n == 1


def test_ngp_bad_inputs(tmp_path):
    write_ngp(tmp_path, n=3, glob_extra={"fl_x": None})
    data = json.loads((tmp_path / "transforms.json").read_text())
    del data["fl_x"], data["fl_y"]
    (tmp_path / "transforms.json").write_text(json.dumps(data))
    with pytest.raises(SceneError, match=r"transforms\.json: frame \d: missing field 'fl_x'"):
        load_scene(cfg(tmp_path), "train")
    data["fl_x"] = 10.0
    data["w"] = W + 1
    (tmp_path / "transforms.json").write_text(json.dumps(data))
    with pytest.raises(SceneError, match=r"transforms\.json: frame \d: fields 'w', 'h'"):
        load_scene(cfg(tmp_path), "train")
    data["w"] = W
    data["frames"][1]["file_path"] = "imgs/gone"
    (tmp_path / "transforms.json").write_text(json.dumps(data))
    with pytest.raises(SceneError, match=r"transforms\.json: frame 1: .*gone\.png"):
        load_scene(cfg(tmp_path, llff_hold=8), "train")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        s = load_scene(cfg(tmp_path, llff_hold=8, skip_missing=True), "train")
    assert s.n == 1 and any("gone" in str(w.message) for w in rec)


# ----------------------------------------------------------------------------- files read

def test_sources_are_exactly_the_files_read(tmp_path, monkeypatch):
    from nerf_dist.scenes import scene_sources
    from nerf_dist.scenes.demo import write_demo_scene
    opened = []
    real_read, real_load = im.read_image, np.load
    monkeypatch.setattr(im, "read_image", lambda p: opened.append(p) or real_read(p))
    monkeypatch.setattr(np, "load", lambda p, *a, **k: opened.append(str(p)) or real_load(p, *a, **k))

    write_demo_scene(str(tmp_path / "demo"), resolution=8, views=3)  # blender + depth files
    write_llff(tmp_path / "llff", n=4)
    write_ngp(tmp_path / "ngp", n=4)
    for root, split in ((tmp_path / "demo", "train"), (tmp_path / "llff", "test"),
                        (tmp_path / "ngp", "val")):
        opened.clear()
        listed = scene_sources(cfg(root), split)  # parses metadata only
        assert not [p for p in opened if not p.endswith(".npy") or "poses_bounds" not in p]
        opened.clear()
        s = load_scene(cfg(root), split)
        assert s.sources == listed
        assert s.sources.data == tuple(s.files) + s.sources.data[s.n:]
        json_or_npy_meta = [p for p in s.sources.meta if p.endswith((".json", ".npy"))]
        assert json_or_npy_meta == list(s.sources.meta) and s.sources.meta
        # every image and .npy the reader opened is listed (transforms JSON is read with open())
        assert sorted(opened) == sorted(p for p in s.sources.all if not p.endswith(".json")), root
    assert len(load_scene(cfg(tmp_path / "demo"), "train").sources.data) == 2 * 3  # images + depths


def test_file_path_outside_root_is_refused(tmp_path):
    write_blender(tmp_path / "scene", splits=("train",), n=2)
    (tmp_path / "outside.png").write_bytes((tmp_path / "scene" / "train" / "r_1.png").read_bytes())
    p = tmp_path / "scene" / "transforms_train.json"
    data = json.loads(p.read_text())
    for bad in ("../outside", str(tmp_path / "outside.png"), "train/../../outside"):
        data["frames"][1]["file_path"] = bad
        p.write_text(json.dumps(data))
        with pytest.raises(SceneError, match=r"transforms_train\.json: frame 1: field 'file_path' "
                                             r"\(.*\) points outside the scene folder") as e:
            load_scene(cfg(tmp_path / "scene"), "train")
        msg = str(e.value)
        assert f"({bad!r})" in msg and "data.allow_outside_root=true" in msg
        assert "hostile transforms file" in msg and "cache key" in msg
        s = load_scene(cfg(tmp_path / "scene", allow_outside_root=True), "train")
        assert s.files[1] == str(tmp_path / "outside.png") and s.n == 2
    # a depth_file too
    data["frames"][1]["file_path"] = "./train/r_1"
    for i in range(2):
        np.save(tmp_path / "scene" / f"d{i}.npy", np.ones((H, W), np.float32))
        data["frames"][i]["depth_file"] = f"./d{i}.npy"
    data["frames"][1]["depth_file"] = "../d1.npy"
    p.write_text(json.dumps(data))
    with pytest.raises(SceneError, match=r"frame 1: field 'depth_file' \('\.\./d1\.npy'\) points outside"):
        load_scene(cfg(tmp_path / "scene"), "train")
    # ngp: file_path is relative to the transforms file, which lives in data.root
    write_ngp(tmp_path / "ngp", n=2)
    q = tmp_path / "ngp" / "transforms.json"
    nd = json.loads(q.read_text())
    nd["frames"][0]["file_path"] = "../outside.png"
    q.write_text(json.dumps(nd))
    with pytest.raises(SceneError, match=r"transforms\.json: frame 0: field 'file_path' .* points outside"):
        load_scene(cfg(tmp_path / "ngp", llff_hold=2), "test")


def test_symlink_inside_root_is_followed_without_the_flag(tmp_path):
    write_blender(tmp_path / "store", splits=("train",), n=2)
    (tmp_path / "scene").mkdir()
    os.symlink(tmp_path / "store" / "train", tmp_path / "scene" / "train")
    (tmp_path / "scene" / "transforms_train.json").write_bytes(
        (tmp_path / "store" / "transforms_train.json").read_bytes())
    s = load_scene(cfg(tmp_path / "scene"), "train")
    assert s.n == 2 and s.files[0] == str(tmp_path / "scene" / "train" / "r_0.png")
