import math

import pytest
import torch

from nerf_dist.render_ops import rays


def test_pixel_centres_row_major():
    uv = rays.pixel_centres(2, 3)
    assert uv.shape == (6, 2)
    assert torch.equal(uv[0], torch.tensor([0.5, 0.5]))
    assert torch.equal(uv[2], torch.tensor([2.5, 0.5]))
    assert torch.equal(uv[3], torch.tensor([0.5, 1.5]))


def test_camera_rays_hand_computed():
    # camera at (1, 2, 3), identity rotation: looks down -z, y up.
    K = torch.tensor([[2.0, 0, 2.0], [0, 2.0, 1.0], [0, 0, 1]])
    c2w = torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 2], [0, 0, 1, 3]])
    o, d = rays.camera_rays(K, c2w, H=2, W=4)
    assert torch.allclose(o, torch.tensor([1.0, 2.0, 3.0]).expand(8, 3))
    # top-left pixel centre (0.5, 0.5): x = (0.5-2)/2 = -0.75, y = -(0.5-1)/2 = 0.25, z = -1
    exp = torch.tensor([-0.75, 0.25, -1.0])
    assert torch.allclose(d[0], exp / exp.norm())
    # bottom-right (3.5, 1.5): x = 0.75, y = -0.25
    exp = torch.tensor([0.75, -0.25, -1.0])
    assert torch.allclose(d[7], exp / exp.norm())
    assert torch.allclose(d.norm(dim=-1), torch.ones(8))


def test_camera_rays_rotation():
    # camera rotated 90 degrees about y: its -z axis points to world -x.
    a = math.pi / 2
    R = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    c2w = torch.cat([R, torch.zeros(3, 1)], 1)
    K = torch.tensor([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]])
    _, d = rays.camera_rays(K, c2w, 1, 1)
    assert torch.allclose(d[0], torch.tensor([-1.0, 0.0, 0.0]), atol=1e-6)


def test_undistort_inverts_distort():
    dist = torch.tensor([0.1, -0.05, 0.01, 0.005])
    x = torch.linspace(-0.5, 0.5, 11)
    y = torch.linspace(0.4, -0.4, 11)
    xd, yd = rays.distort(x, y, dist)
    xu, yu = rays.undistort(xd, yd, dist)
    assert torch.allclose(xu, x, atol=1e-5) and torch.allclose(yu, y, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_undistort_strong_distortion_stops_on_a_residual(dtype):
    # A strong wide-angle lens (barrel k1 = -0.45, k2 = 0.2, tangential terms; still one-to-one
    # over the image) out to the corners of a 90-degree image: 10 fixed-point steps left errors
    # of 0.024 in normalised coordinates (24 pixels at a 1000-pixel focal length) here.
    dist = torch.tensor([-0.45, 0.2, 0.004, -0.003], dtype=dtype)
    g = torch.linspace(-1.0, 1.0, 41, dtype=dtype)
    x, y = (v.reshape(-1) for v in torch.meshgrid(g, 0.8 * g, indexing="ij"))
    xd, yd = rays.distort(x, y, dist)
    xu, yu = rays.undistort(xd, yd, dist)
    rx, ry = rays.distort(xu, yu, dist)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert float(torch.maximum((rx - xd).abs(), (ry - yd).abs()).max()) <= tol
    assert torch.allclose(xu, x, atol=10 * tol) and torch.allclose(yu, y, atol=10 * tol)
    # the old fixed 10 iterations do not get there (so this test tells the two apart)
    fx, fy = xd.clone(), yd.clone()
    for _ in range(10):
        r2 = fx * fx + fy * fy
        radial = 1 + dist[0] * r2 + dist[1] * r2 * r2
        fx = (xd - (2 * dist[2] * fx * fy + dist[3] * (r2 + 2 * fx * fx))) / radial
        fy = (yd - (dist[2] * (r2 + 2 * fy * fy) + 2 * dist[3] * fx * fy)) / radial
    assert float((fx - x).abs().max()) > 1e-2


def test_distorted_pixel_ray_matches_undistorted_point():
    K = torch.tensor([[100.0, 0, 50], [0, 100.0, 40], [0, 0, 1]])
    c2w = torch.eye(4)[:3]
    dist = torch.tensor([0.2, 0.0, 0.0, 0.0])
    # the ideal point (x, y) = (0.3, -0.2) (OpenCV axes) appears at its distorted pixel position
    xd, yd = rays.distort(torch.tensor([0.3]), torch.tensor([-0.2]), dist)
    uv = torch.stack([xd * 100 + 50, yd * 100 + 40], -1)
    _, d = rays.rays_from_pixels(uv, K, c2w, dist)
    exp = torch.tensor([0.3, 0.2, -1.0])
    assert torch.allclose(d[0], exp / exp.norm(), atol=1e-5)


def test_ndc_maps_near_plane_and_infinity():
    H, W, f = 40, 60, 50.0
    o = torch.tensor([[0.1, -0.2, 0.0]])
    d = torch.nn.functional.normalize(torch.tensor([[0.05, 0.02, -1.0]]), dim=-1)
    on, dn = rays.to_ndc(o, d, H, W, f, near=1.0)
    assert torch.allclose(on[0, 2], torch.tensor(-1.0))  # the near plane maps to z_ndc = -1
    end = on + dn  # t = 1 is infinitely far away: z_ndc = +1
    assert torch.allclose(end[0, 2], torch.tensor(1.0), atol=1e-6)
    # projection of the far point is the direction's vanishing point
    assert torch.allclose(end[0, 0], -(2 * f / W) * d[0, 0] / d[0, 2], atol=1e-6)
