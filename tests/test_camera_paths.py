"""Camera paths: orbit/spiral geometry, split poses, camera-path JSON (ours and nerfstudio's)."""
import json
import math

import numpy as np
import pytest
import torch

from nerf_dist.renderer.paths import (CameraPath, CameraPathError, load_camera_path, orbit_params,
                                      orbit_path, parse_resolution, spiral_path, write_camera_path)
from nerf_dist.scenes.demo import look_at as demo_look_at

K = torch.tensor([[40.0, 0.0, 16.0], [0.0, 40.0, 16.0], [0.0, 0.0, 1.0]])


def _rig(radius=3.0, elev_deg=30.0, n=12, shift=(0.0, 0.0, 0.0)):
    c2w = np.stack([demo_look_at(math.radians(elev_deg), 0.3 + 2 * math.pi * i / n, radius)
                    for i in range(n)])
    c2w[:, :3, 3] += np.asarray(shift)
    return torch.from_numpy(c2w.astype(np.float32))


def _check_rotations(c2w):
    R = c2w[:, :3, :3].double()
    eye = torch.eye(3, dtype=torch.float64).expand_as(R)
    assert torch.allclose(R.transpose(1, 2) @ R, eye, atol=1e-5)
    assert torch.all(torch.det(R) > 0)


@pytest.mark.parametrize("text,expect", [("64x48", (64, 48)), ("32", (32, 32)), ("8X4", (8, 4))])
def test_parse_resolution(text, expect):
    assert parse_resolution(text) == expect


@pytest.mark.parametrize("text", ["0x10", "10x0", "0", "axb", "10x10x3", "-4x4", ""])
def test_parse_resolution_rejects(text):
    with pytest.raises(ValueError, match="resolution"):
        parse_resolution(text)


def test_orbit_params_from_cameras():
    p = orbit_params(_rig(radius=3.0, elev_deg=30.0, shift=(0.5, -0.2, 0.1)))
    assert p["radius"] == pytest.approx(3.0, abs=1e-4)
    assert math.degrees(p["elevation"]) == pytest.approx(30.0, abs=1e-3)
    np.testing.assert_allclose(p["centre"], [0.5, -0.2, 0.1], atol=1e-4)
    np.testing.assert_allclose(p["up"], [0, 0, 1], atol=1e-4)


def test_orbit_path_geometry():
    rig = _rig(radius=4.0, elev_deg=40.0)
    path = orbit_path(rig, K, 32, 32, 8)
    assert path.n == 8 and path.c2w.shape == (8, 3, 4) and path.K.shape == (8, 3, 3)
    _check_rotations(path.c2w)
    pos = path.c2w[:, :, 3].double()
    assert torch.allclose(pos.norm(dim=1), torch.full((8,), 4.0, dtype=torch.float64), atol=1e-4)
    elev = torch.rad2deg(torch.asin(pos[:, 2] / pos.norm(dim=1)))
    assert torch.allclose(elev, torch.full((8,), 40.0, dtype=torch.float64), atol=1e-3)
    # every camera looks at the centre: -z axis points from the camera to the origin
    fwd = -path.c2w[:, :, 2].double()
    assert torch.allclose(fwd, -pos / pos.norm(dim=1, keepdim=True), atol=1e-5)
    # starts at the first training camera's azimuth and turns a full circle in equal steps
    az = torch.atan2(pos[:, 1], pos[:, 0])
    first = math.atan2(float(rig[0, 1, 3]), float(rig[0, 0, 3]))
    assert float(az[0]) == pytest.approx(first, abs=1e-4)
    steps = torch.remainder(az[1:] - az[:-1], 2 * math.pi)
    assert torch.allclose(steps, torch.full((7,), 2 * math.pi / 8, dtype=torch.float64), atol=1e-4)
    assert path.meta["radius"] == pytest.approx(4.0, abs=1e-4)


def test_orbit_overrides_and_bad_frames():
    path = orbit_path(_rig(), K, 32, 32, 4, radius=2.0, elevation_deg=10.0)
    assert float(path.c2w[0, :, 3].norm()) == pytest.approx(2.0, abs=1e-4)
    with pytest.raises(ValueError, match="frames"):
        orbit_path(_rig(), K, 32, 32, 0)


def test_spiral_path_faces_forward():
    # a forward-facing rig: cameras on a small grid in the z=0 plane looking down -z
    c2w = torch.zeros(9, 3, 4)
    c2w[:, :3, :3] = torch.eye(3)
    c2w[:, 0, 3] = torch.tensor([-1, 0, 1] * 3, dtype=torch.float32) * 0.1
    c2w[:, 1, 3] = torch.tensor([-1] * 3 + [0] * 3 + [1] * 3, dtype=torch.float32) * 0.1
    c2w[:, 2, 3] = torch.tensor([-1, 1, 0] * 3, dtype=torch.float32) * 0.05
    path = spiral_path(c2w, K, 32, 32, 20, bounds=(1.0, 10.0))
    assert path.n == 20
    _check_rotations(path.c2w)
    assert torch.all(path.c2w[:, 2, 2] > 0.95)               # still looking down -z
    assert float(path.c2w[:, :2, 3].abs().max()) <= 0.1 + 1e-6  # within the rig's spread
    assert len({tuple(np.round(p.numpy(), 5)) for p in path.c2w[:, :, 3]}) >= 15


def test_resized_scales_intrinsics():
    p = CameraPath(K[None].clone(), _rig(n=1), 32, 32, "x").resized(64, 16)
    assert p.W == 64 and p.H == 16
    assert p.K[0].tolist() == [[80.0, 0.0, 32.0], [0.0, 20.0, 8.0], [0.0, 0.0, 1.0]]


def test_our_json_round_trip(tmp_path):
    path = orbit_path(_rig(), K, 24, 32, 5)  # H=24, W=32
    f = tmp_path / "path.json"
    write_camera_path(path, str(f))
    back = load_camera_path(str(f))
    assert (back.W, back.H, back.n) == (32, 24, 5)
    assert torch.allclose(back.c2w, path.c2w, atol=1e-6) and torch.allclose(back.K, path.K)


def test_distortion_survives_resize_first_and_json(tmp_path):
    dist = torch.tensor([[-0.3, 0.05, 0.01, -0.005], [-0.1, 0.0, 0.0, 0.002], [0.2, -0.01, 0.0, 0.0]])
    path = CameraPath(K[None].repeat(3, 1, 1), _rig(n=3)[:, :3, :4], 32, 32, "d", {}, dist)
    assert torch.equal(path.resized(64, 16).distortion, dist)  # normalised coords: size-free
    assert torch.equal(path.first(2).distortion, dist[:2])
    f = tmp_path / "d.json"
    write_camera_path(path, str(f))
    data = json.loads(f.read_text())
    assert data["camera_model"] == "opencv" and data["frames"][1]["p2"] == pytest.approx(0.002)
    back = load_camera_path(str(f))
    assert torch.allclose(back.distortion, dist) and torch.allclose(back.K, path.K)
    # pinhole paths stay pinhole, and their JSON says so
    plain = orbit_path(_rig(), K, 24, 32, 2)
    assert plain.distortion is None and plain.resized(8, 8).distortion is None
    write_camera_path(plain, str(f))
    assert json.loads(f.read_text())["camera_model"] == "pinhole"
    assert load_camera_path(str(f)).distortion is None
    with pytest.raises(CameraPathError, match="distortion"):
        CameraPath(K[None], _rig(n=1)[:, :3, :4], 32, 32, "bad", {}, torch.zeros(2, 4))


def test_transforms_json_distortion_keys(tmp_path):
    """instant-ngp keys: top-level k1 k2 p1 p2, a frame's own value wins, absent = 0."""
    f = tmp_path / "transforms.json"
    pose = np.eye(4).tolist()
    f.write_text(json.dumps({"camera_model": "OPENCV", "w": 32, "h": 24, "fl_x": 30.0,
                             "k1": -0.3, "k2": 0.05, "p1": 0.01,
                             "frames": [{"transform_matrix": pose},
                                        {"transform_matrix": pose, "k1": -0.1, "p2": 0.003}]}))
    p = load_camera_path(str(f))
    assert torch.allclose(p.distortion, torch.tensor([[-0.3, 0.05, 0.01, 0.0],
                                                      [-0.1, 0.05, 0.01, 0.003]]))
    f.write_text(json.dumps({"w": 32, "h": 24, "fl_x": 30.0, "k3": 0.1,
                             "frames": [{"transform_matrix": pose, "k1": "x"}]}))
    with pytest.raises(CameraPathError, match="frame 0: field .k1."):
        load_camera_path(str(f))


def test_split_path_carries_scene_distortion():
    from types import SimpleNamespace

    from nerf_dist.renderer.paths import split_path
    dist = torch.tensor([[-0.3, 0.05, 0.01, -0.005], [0.0, 0.0, 0.0, 0.0]])
    scene = SimpleNamespace(K=K[None].repeat(2, 1, 1), c2w=_rig(n=2), H=32, W=32, split="test",
                            files=["a", "b"], distortion=dist)
    assert torch.equal(split_path(scene).distortion, dist)
    scene.distortion = None
    assert split_path(scene).distortion is None


def test_our_json_global_intrinsics_and_fov(tmp_path):
    f = tmp_path / "p.json"
    pose = np.eye(4).tolist()
    f.write_text(json.dumps({"width": 40, "height": 20, "camera_angle_x": math.pi / 2,
                             "frames": [{"transform_matrix": pose},
                                        {"transform_matrix": pose, "fl_x": 10.0, "cx": 5.0}]}))
    p = load_camera_path(str(f))
    assert p.K[0, 0, 0] == pytest.approx(20.0) and p.K[0, 1, 1] == pytest.approx(20.0)
    assert p.K[0, 0, 2] == 20.0 and p.K[0, 1, 2] == 10.0
    assert p.K[1, 0, 0] == 10.0 and p.K[1, 1, 1] == 10.0 and p.K[1, 0, 2] == 5.0


def test_nerfstudio_camera_path(tmp_path):
    c2w = _rig(n=3)[:, :3, :4]
    frames = [{"camera_to_world": [*m.tolist(), [0, 0, 0, 1]], "fov": 60.0, "aspect": 1.5}
              for m in c2w]
    for fr in frames:
        fr["camera_to_world"] = [v for row in fr["camera_to_world"] for v in row]  # flat 16
    f = tmp_path / "camera_path.json"
    f.write_text(json.dumps({"camera_type": "perspective", "render_height": 20,
                             "render_width": 30, "camera_path": frames, "seconds": 1, "fps": 3}))
    p = load_camera_path(str(f))
    assert (p.W, p.H, p.n) == (30, 20, 3)
    assert torch.allclose(p.c2w, c2w, atol=1e-6)
    focal = 10.0 / math.tan(math.radians(30.0))
    assert p.K[0, 0, 0] == pytest.approx(focal, rel=1e-5) and p.K[0, 1, 1] == pytest.approx(focal, rel=1e-5)
    assert p.K[0, 0, 2] == 15.0 and p.K[0, 1, 2] == 10.0
    # width from the aspect when render_width is absent
    f.write_text(json.dumps({"render_height": 20, "camera_path": frames}))
    assert load_camera_path(str(f)).W == 30


POSE = np.eye(4).tolist()


@pytest.mark.parametrize("content,needle", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "top level"),
    (json.dumps({"width": 8, "height": 8, "fl_x": 8}), "'frames'"),
    (json.dumps({"width": 8, "height": 8, "fl_x": 8, "frames": []}), "'frames'"),
    (json.dumps({"width": 0, "height": 8, "fl_x": 8, "frames": [{"transform_matrix": POSE}]}),
     "width"),
    (json.dumps({"height": 8, "fl_x": 8, "frames": [{"transform_matrix": POSE}]}), "width"),
    (json.dumps({"width": 8, "height": 8, "frames": [{"transform_matrix": POSE}]}), "focal"),
    (json.dumps({"width": 8, "height": 8, "fl_x": 8,
                 "frames": [{"transform_matrix": POSE}, {"transform_matrix": POSE}, {}]}),
     "frame 2: missing 'transform_matrix'"),
    (json.dumps({"width": 8, "height": 8, "fl_x": 8,
                 "frames": [{"transform_matrix": [[1, 0, 0], [0, 1, 0]]}]}), "frame 0"),
    (json.dumps({"width": 8, "height": 8, "fl_x": 8,
                 "frames": [{"transform_matrix": (np.eye(4) * 2).tolist()}]}), "not a rotation"),
    (json.dumps({"width": 8, "height": 8, "fl_x": "wide", "frames": [{"transform_matrix": POSE}]}),
     "fl_x"),
    (json.dumps({"width": 8, "height": 8, "fl_x": 8, "camera_model": "fisheye",
                 "frames": [{"transform_matrix": POSE}]}), "fisheye"),
    (json.dumps({"render_height": 8, "render_width": 8,
                 "camera_path": [{"camera_to_world": [0] * 16, "fov": 50}]}), "camera_path[0]"),
    (json.dumps({"render_height": 8, "render_width": 8,
                 "camera_path": [{"camera_to_world": sum(POSE, []), "fov": 190}]}), "fov"),
    (json.dumps({"render_height": 8, "render_width": 8, "camera_type": "equirectangular",
                 "camera_path": [{"camera_to_world": sum(POSE, []), "fov": 50}]}), "equirect"),
    (json.dumps({"render_width": 8, "camera_path": [{"camera_to_world": sum(POSE, []),
                                                     "fov": 50}]}), "render_height"),
])
def test_malformed_camera_path_is_named(tmp_path, content, needle):
    f = tmp_path / "bad_path.json"
    f.write_text(content)
    with pytest.raises(CameraPathError) as e:
        load_camera_path(str(f))
    assert str(f) in str(e.value) and needle in str(e.value)


def test_missing_camera_path_file(tmp_path):
    with pytest.raises(CameraPathError, match="not found"):
        load_camera_path(str(tmp_path / "nope.json"))


# ------------------------------------------------------------------------------ paths in the scene's frame

def _ngp_scene(root, n=6, centre=(10.0, -5.0, 3.0), radius=4.0, W=8, H=6):
    """An instant-ngp scene whose cameras ring a point far from the origin: its normalisation
    (offset ~ centre, scale ~ 1 / radius) is far from the identity."""
    import imageio.v3 as iio
    (root / "imgs").mkdir(parents=True)
    frames = []
    for i in range(n):
        c2w = demo_look_at(math.radians(20.0 + 5 * i), 2 * math.pi * i / n, radius)
        c2w[:3, 3] += np.asarray(centre)
        iio.imwrite(root / "imgs" / f"{i}.png", np.full((H, W, 3), 40 * i, dtype=np.uint8))
        fr = {"file_path": f"imgs/{i}.png", "transform_matrix": c2w.tolist()}
        if i == 1:
            fr.update({"fl_x": 9.0, "cx": 3.5, "k1": -0.05})   # a frame's own intrinsics win
        frames.append(fr)
    (root / "transforms.json").write_text(json.dumps({
        "camera_model": "OPENCV", "w": W, "h": H, "fl_x": 7.0, "fl_y": 7.5, "k2": 0.01,
        "aabb_scale": 2, "frames": frames}))


def test_ngp_transforms_json_path_renders_from_the_scene_cameras(tmp_path):
    from types import SimpleNamespace

    from nerf_dist.config import load_config
    from nerf_dist.renderer.core import tile_rays
    from nerf_dist.renderer.job import build_path
    from nerf_dist.renderer.paths import in_scene_frame, split_path
    from nerf_dist.renderer.tiles import Tile
    from nerf_dist.scenes import open_scene
    root = tmp_path / "ngp"
    _ngp_scene(root)
    cfg = load_config(None, [f"data.root={root}", "data.llff_hold=2", "render.path=orbit"])
    train, test = open_scene(cfg.data, "train"), open_scene(cfg.data, "test")   # odd / even frames
    w2s = train.meta["world_to_scene"]
    assert w2s["scale"] < 0.5 and np.linalg.norm(w2s["offset"]) > 5     # far from the identity

    raw = load_camera_path(str(root / "transforms.json"))
    assert raw.meta["coordinates"] == "world" and raw.n == 6
    # before: the file's own positions are nowhere near the scene's cameras
    assert float((raw.c2w[1::2, :, 3] - train.c2w[:, :, 3]).abs().max()) > 5

    loaded = SimpleNamespace(cfg=cfg, model=torch.nn.Linear(1, 1),
                             scene={"near": train.near, "far": train.far, "background": [1, 1, 1]})
    cams, setup = build_path(loaded, str(root / "transforms.json"))
    assert cams.meta["coordinates"] == "scene"
    for scene, frames in ((train, slice(1, None, 2)), (test, slice(0, None, 2))):
        ref = split_path(scene)
        print(f"{scene.split}: max |position difference| "
              f"{float((cams.c2w[frames] - ref.c2w).abs().max()):.2e} (unnormalised: "
              f"{float((raw.c2w[frames] - ref.c2w).abs().max()):.2f})")
        torch.testing.assert_close(cams.c2w[frames], ref.c2w, atol=1e-6, rtol=0)
        torch.testing.assert_close(cams.K[frames], ref.K)              # one intrinsics parser
        torch.testing.assert_close(cams.distortion[frames], ref.distortion)
        # ... so the path's rays are the scene's rays, pixel for pixel
        mine = CameraPath(cams.K[frames], cams.c2w[frames], cams.H, cams.W, "p", {},
                          cams.distortion[frames])
        for k in range(ref.n):
            a, b = (tile_rays(setup, c, Tile(k, 0, 0, scene.H, scene.W)) for c in (mine, ref))
            for key in ("rays_o", "rays_d"):
                torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)
    assert cams.K[1].tolist()[0] == [9.0, 0.0, 3.5] and cams.K[0, 1, 1] == 7.5

    # downscaled scene: the path keeps the file's size; resized to the scene's, the same cameras
    half = open_scene(load_config(None, [f"data.root={root}", "data.llff_hold=2",
                                         "data.downscale=2"]).data, "train")
    torch.testing.assert_close(cams.resized(half.W, half.H).K[1::2], half.K)
    # our own format (what render.json and write_camera_path hold) is already in the scene's frame
    ours = tmp_path / "ours.json"
    write_camera_path(cams, str(ours))
    back = load_camera_path(str(ours))
    assert back.meta["coordinates"] == "scene" and in_scene_frame(back, train.meta) is back
    torch.testing.assert_close(back.c2w, cams.c2w)
    # a "world" path over a reader that records no map is refused, not rendered from elsewhere
    with pytest.raises(CameraPathError, match="records no map"):
        in_scene_frame(raw, {"format": "llff"})
    assert torch.equal(in_scene_frame(raw, {"format": "blender"}).c2w, raw.c2w)
