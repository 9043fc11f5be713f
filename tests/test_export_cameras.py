"""`nerf-dist export cameras`: the exported transforms.json and COLMAP model, read back by the
project's own readers, give the same cameras in the original frame; refined training poses."""
import os

import numpy as np
import pytest
import torch

from nerf_dist.config import DataConfig, load_config
from nerf_dist.export import cameras as ec
from nerf_dist.export.frame import move_poses, original_from_meta
from nerf_dist.scenes import demo, demo_unbounded, open_scene


def _by_file(data_cfg, splits=("train", "val", "test")) -> dict:
    """{abs image path: (c2w [4, 4] in the original frame, K [3, 3], W, H)} over splits."""
    out = {}
    for split in splits:
        try:
            sc = open_scene(data_cfg, split)
        except ValueError:
            continue
        back = move_poses(original_from_meta(sc.meta), sc.c2w.double().numpy())
        for k, f in enumerate(sc.files):
            out[os.path.realpath(f)] = (back[k], sc.K[k].double().numpy(), sc.W, sc.H)
    return out


def _same(a: dict, b: dict, atol=1e-5):
    assert sorted(a) == sorted(b)
    for f in a:
        np.testing.assert_allclose(a[f][0], b[f][0], atol=atol, err_msg=f)
        np.testing.assert_allclose(a[f][1], b[f][1], atol=1e-3, err_msg=f)
        assert a[f][2:] == b[f][2:]


def _colmap_root(tmp_path, out, scene_root):
    """A COLMAP scene folder from the export: its model, the scene folder as images/."""
    root = tmp_path / "colmap_scene"
    (root / "sparse").mkdir(parents=True)
    os.symlink(os.path.join(out, "colmap", "sparse", "0"), root / "sparse" / "0")
    os.symlink(scene_root, root / "images")
    return root


@pytest.mark.parametrize("variant", ["blender", "ngp"])
def test_round_trip_through_the_readers(tmp_path, variant):
    scene = tmp_path / "scene"
    if variant == "blender":
        demo.write_demo_scene(str(scene), resolution=8, views=5, supersample=1)
    else:  # instant-ngp layout, normalised by its reader (centred, scaled)
        demo_unbounded.write_unbounded_scene(str(scene), resolution=8, views=5, supersample=1)
    cfg = load_config(None, [f"data.root={scene}"])
    out = str(tmp_path / "out")
    s = ec.export_cameras(cfg, None, out)
    assert s["cameras"] == 5 + 4 + 8 and s["splits"] == {"train": 5, "val": 4, "test": 8}
    want = _by_file(cfg.data)
    # transforms.json, read by the ngp reader: same cameras, same splits
    ngp = DataConfig(root=out, format="ngp", allow_outside_root=True)
    _same(_by_file(ngp), want)
    for split in ("train", "val", "test"):
        a = {os.path.realpath(f) for f in open_scene(ngp, split).files}
        assert a == {os.path.realpath(f) for f in open_scene(cfg.data, split).files}
    # the COLMAP model, read by the COLMAP reader (its own split rule: compare every image)
    col = DataConfig(root=str(_colmap_root(tmp_path, out, scene)), format="colmap")
    _same(_by_file(col, ("train", "test")), want)
    # and a transforms.json exported from the COLMAP scene renders from its cameras
    from nerf_dist.config import with_section
    from nerf_dist.renderer.paths import in_scene_frame, load_camera_path
    ec.export_cameras(with_section(cfg, "data", root=col.root, format="colmap"), None,
                      str(tmp_path / "c"), split="train")
    raw = load_camera_path(str(tmp_path / "c" / "transforms.json"))
    train = open_scene(col, "train")
    assert raw.meta["coordinates"] == "world" and raw.n == train.n
    torch.testing.assert_close(in_scene_frame(raw, train.meta).c2w, train.c2w, atol=1e-5, rtol=0)
    # --frame scene: the trained frame itself
    s = ec.export_cameras(cfg, None, str(tmp_path / "sc"), frame="scene", split="train")
    assert s["splits"] == {"train": 5}
    back = _by_file(DataConfig(root=str(tmp_path / "sc"), format="ngp", allow_outside_root=True),
                    ("train",))
    sc = open_scene(cfg.data, "train")
    c2w_back = np.stack([back[os.path.realpath(f)][0] for f in sc.files])
    # the ngp reader normalises again: undo its map, then compare with the scene-frame poses
    np.testing.assert_allclose(c2w_back[:, :3], sc.c2w.double().numpy(), atol=1e-5)


def test_refined_training_poses(tmp_path):
    scene = tmp_path / "scene"
    demo.write_demo_scene(str(scene), resolution=8, views=4, supersample=1)
    cfg = load_config(None, [f"data.root={scene}", "model.kind=unbounded", "model.pose_refine=true",
                             "model.appearance_images=8"])
    from nerf_dist.models import build_model
    model = build_model(cfg.model, torch.tensor([[-1.5] * 3, [1.5] * 3]))
    with torch.no_grad():
        model.pose.table.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    sc = open_scene(cfg.data, "train")
    got, largest = ec.refined_c2w(model, sc.c2w, "train")
    delta = model.pose.deltas().detach().double()[:4]
    assert largest == pytest.approx(float(delta.abs().max()))
    # the corrected camera's rays are the rays the model corrects in training
    from nerf_dist.render_ops.pose import correct_rays
    from nerf_dist.render_ops.rays import make_rays
    uv = torch.tensor([[1.5, 2.5], [6.5, 0.5]])
    for k in range(4):
        r = make_rays(uv, sc.K[k], sc.c2w[k])
        o, d, _ = correct_rays(r["rays_o"], r["rays_d"], r["viewdirs"],
                               delta[k].float().expand(2, 6))
        r2 = make_rays(uv, sc.K[k], got[k])
        torch.testing.assert_close(r2["rays_o"], o, atol=1e-5, rtol=0)
        torch.testing.assert_close(r2["rays_d"], d, atol=1e-5, rtol=0)
    assert ec.refined_c2w(model, sc.c2w, "val")[1] is None
    s = ec.export_cameras(cfg, model, str(tmp_path / "out"), split="train,val")
    assert s["refined_train_poses"] and s["splits"] == {"train": 4, "val": 4}
    back = _by_file(DataConfig(root=str(tmp_path / "out"), format="ngp", allow_outside_root=True))
    for k, f in enumerate(sc.files):
        np.testing.assert_allclose(back[os.path.realpath(f)][0][:3], got[k].double().numpy(),
                                   atol=1e-5)


def test_qvec_round_trip_and_errors(tmp_path):
    from nerf_dist.scenes.colmap_model import qvec_to_rotmat
    from nerf_dist.render_ops.pose import axis_angle_to_matrix
    w = torch.randn(200, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    w[0] = torch.tensor([np.pi, 0, 0])  # half turns: the trace is -1
    w[1] = torch.tensor([0, np.pi, 0])
    for R in axis_angle_to_matrix(w).numpy():
        q = ec.rotmat_to_qvec(R)
        assert q[0] >= 0
        np.testing.assert_allclose(qvec_to_rotmat(q), R, atol=1e-12)
    with pytest.raises(ValueError, match="--split"):
        ec.parse_splits("train,bogus")
    cfg = load_config(None, [f"data.root={tmp_path}"])
    with pytest.raises(ValueError, match="--frame"):
        ec.export_cameras(cfg, None, str(tmp_path / "o"), frame="world")


def test_cli(tmp_path, tiny_run, demo_scene, cli):
    r = cli("export", "cameras", tiny_run, "--out", tmp_path / "a", "--split", "train,val")
    assert r.returncode == 0, r.stderr
    assert "cameras: 24 (20 train, 4 val) in the original frame" in r.stdout
    assert (tmp_path / "a" / "transforms.json").is_file()
    assert (tmp_path / "a" / "colmap" / "sparse" / "0" / "images.txt").is_file()
    # no checkpoint: the cameras come from the config, unless the kind refines them
    from nerf_dist.config import load_config
    from nerf_dist.run_dir import write_config
    for refine, code in (("false", 0), ("true", 1)):
        run = tmp_path / f"run_{refine}"
        write_config(load_config(None, [f"data.root={demo_scene}", f"run.dir={run}",
                                        "model.kind=unbounded", f"model.pose_refine={refine}"]))
        r = cli("export", "cameras", run)
        assert r.returncode == code, r.stderr
    assert "no complete checkpoint" in r.stderr and "pose_refine" in r.stderr
