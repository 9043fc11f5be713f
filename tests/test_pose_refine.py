"""Camera pose refinement (model.pose_refine): the rotation map against matrix_exp, corrected
rays equal rays of the corrected camera, the identity at zero, gradients only into the batch's
images, and a frozen field pulling a misplaced camera back."""
import math

import torch

from nerf_dist.config import load_config
from nerf_dist.models import build_model
from nerf_dist.models.unbounded.pose import POSE_SCALE
from nerf_dist.render_ops.pose import axis_angle_to_matrix, correct_rays
from nerf_dist.render_ops.rays import make_rays

SMALL = ["model.kind=unbounded", "model.hash_levels=4", "model.hash_log2_size=10",
         "model.hash_max_res=32", "model.hidden=16", "model.proposal_samples=16",
         "model.proposal_max_res=16", "model.proposal_log2_size=10", "model.field_samples=8"]


def _skew(w):
    z = torch.zeros_like(w[:, 0])
    return torch.stack([z, -w[:, 2], w[:, 1], w[:, 2], z, -w[:, 0], -w[:, 1], w[:, 0], z],
                       -1).view(-1, 3, 3)


def test_rotation_matches_matrix_exp_small_and_large():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 3, generator=g, dtype=torch.float64)
    w = w * torch.logspace(-9, 0.5, 64, dtype=torch.float64)[:, None]      # 1e-9 .. 3 rad
    R = axis_angle_to_matrix(w)
    assert torch.allclose(R, torch.linalg.matrix_exp(_skew(w)), atol=1e-12)
    eye = torch.eye(3, dtype=torch.float64).expand_as(R)
    assert torch.allclose(R @ R.transpose(1, 2), eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(64, dtype=torch.float64))


def test_gradient_at_zero_is_the_cross_product():
    """d(R(w) v)/dw at w = 0 is -[v]x (R v ~ v + w x v): finite and exact where every
    correction starts."""
    v = torch.tensor([0.3, -1.2, 0.7], dtype=torch.float64)
    w = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    jac = torch.autograd.functional.jacobian(lambda x: (axis_angle_to_matrix(x) @ v)[0], w)[:, 0]
    assert torch.allclose(jac, -_skew(v[None])[0], atol=1e-12)


def test_corrected_rays_are_the_rays_of_the_corrected_camera():
    g = torch.Generator().manual_seed(1)
    K = torch.tensor([[40.0, 0, 16], [0, 40.0, 12], [0, 0, 1]], dtype=torch.float64)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, :3] = axis_angle_to_matrix(torch.tensor([[0.2, -0.4, 0.1]], dtype=torch.float64))[0]
    c2w[:3, 3] = torch.tensor([0.5, 2.0, -1.0])
    uv = torch.rand(50, 2, generator=g, dtype=torch.float64) * torch.tensor([32.0, 24.0])
    delta = torch.tensor([0.05, -0.02, 0.03, 0.1, -0.2, 0.05], dtype=torch.float64)
    rays = make_rays(uv, K, c2w)
    o, d, v = correct_rays(rays["rays_o"], rays["rays_d"], rays["viewdirs"],
                           delta.expand(50, 6))
    moved = c2w.clone()
    moved[:3, :3] = axis_angle_to_matrix(delta[None, :3])[0] @ c2w[:3, :3]
    moved[:3, 3] += delta[3:]
    want = make_rays(uv, K, moved)
    for a, b in ((o, want["rays_o"]), (d, want["rays_d"]), (v, want["viewdirs"])):
        assert torch.allclose(a, b, atol=1e-12)


def _rays(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(n, 3, generator=g) * 0.2
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    return o, d


def test_zero_correction_is_the_identity_and_grads_reach_only_the_batch_images():
    cfg = load_config(None, [*SMALL, "model.pose_refine=true", "model.appearance_images=6"]).model
    torch.manual_seed(0)
    m = build_model(cfg, None)
    plain = build_model(load_config(None, [*SMALL, "model.appearance_images=6"]).model, None)
    missing = plain.load_state_dict(m.state_dict(), strict=False)
    assert list(missing.unexpected_keys) == ["pose.table"]
    o, d = _rays()
    image = torch.tensor([1, 3] * 48)
    a = m(o, d, d, 0.05, 10.0, image=image)
    b = plain(o, d, d, 0.05, 10.0, image=image)
    assert torch.equal(a["rgb"], b["rgb"]) and torch.equal(a["depth"], b["depth"])
    a["rgb"].sum().backward()
    grad = m.pose.table.grad
    assert grad is not None and bool(grad[[1, 3]].abs().sum(-1).gt(0).all())
    assert float(grad[[0, 2, 4, 5]].abs().sum()) == 0.0
    try:
        m(o, d, d, 0.05, 10.0, image=torch.full((96,), 6))
    except ValueError as e:
        assert "model.appearance_images" in str(e)
    else:
        raise AssertionError("an image index past the table must be an error")


def test_a_frozen_field_pulls_a_misplaced_camera_back():
    """Render targets from a random field along true rays; shift the camera of image 0 by a
    known translation; optimising only the pose table removes most of the error."""
    cfg = load_config(None, [*SMALL, "model.pose_refine=true", "model.appearance_images=2",
                             "model.field_samples=16"]).model
    torch.manual_seed(3)
    m = build_model(cfg, None)
    with torch.no_grad():   # NOTE: a field with detail everywhere, so every shift shows
        for name, p in m.named_parameters():
            if name.endswith("encoding.table"):
                p.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(5))
    m.requires_grad_(False)
    m.pose.table.requires_grad_(True)
    g = torch.Generator().manual_seed(4)
    o = torch.zeros(512, 3)
    d = torch.nn.functional.normalize(torch.randn(512, 3, generator=g), dim=-1)
    image = torch.zeros(512, dtype=torch.long)
    with torch.no_grad():
        target = m(o, d, d, 0.05, 10.0, image=image)["rgb"]
    shift = torch.tensor([0.03, -0.02, 0.02])
    opt = torch.optim.Adam([m.pose.table], lr=0.2)
    for _ in range(80):
        opt.zero_grad()
        rgb = m(o + shift, d, d, 0.05, 10.0, image=image)["rgb"]
        ((rgb - target) ** 2).mean().backward()
        opt.step()
    found = m.pose.deltas()[0, 3:].detach()
    left = float((found + shift).norm())
    assert math.isfinite(left) and left < 0.2 * float(shift.norm()), (found, shift)
    assert POSE_SCALE == 0.01
