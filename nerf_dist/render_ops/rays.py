"""Pure ray math: pixels + intrinsics + camera-to-world -> rays.

Conventions:
- Pixel (i, j) = (column, row) has its centre at (i + 0.5, j + 0.5) in pixel units, so the ray of
  the top-left pixel passes through (0.5, 0.5) and an image's optical centre (cx, cy) = (W/2, H/2)
  lies on the corner shared by the four central pixels of an even-sized image.
- Cameras use the OpenGL / Blender convention: x right, y up, looking down -z.
- Directions are unit length (``rays_d`` and ``viewdirs``), so distances along a ray are metric.
"""
from __future__ import annotations

import torch


def pixel_centres(H: int, W: int, device=None) -> torch.Tensor:
    """uv: [H*W, 2] pixel-centre coordinates (u = column + 0.5, v = row + 0.5), row-major."""
    j, i = torch.meshgrid(torch.arange(H, device=device, dtype=torch.float32),
                          torch.arange(W, device=device, dtype=torch.float32), indexing="ij")
    return torch.stack([i + 0.5, j + 0.5], -1).reshape(-1, 2)


def undistort(xd: torch.Tensor, yd: torch.Tensor, dist: torch.Tensor, tol: float | None = None,
              max_iters: int = 50):
    """Invert the OpenCV radial-tangential model (k1 k2 p1 p2) on normalised image coordinates.

    xd, yd: [n] distorted normalised coordinates (OpenCV axes, y down). dist: [4] or [n, 4].
    Returns undistorted (x, y), each [n]: Newton's method on distort(x, y) = (xd, yd) from
    (xd, yd), iterated until every point's residual max(|dx|, |dy|) is below tol (default 1e-6
    in float32, about a thousandth of a pixel at a 1000-pixel focal length; 1e-12 in float64) or
    max_iters steps. A point where the Newton step would raise the residual (far out, where a
    strong barrel distortion folds over) takes the fixed-point step x = (xd - tangential) /
    radial instead.

    NOTE: a fixed number of fixed-point steps (10, before issue 24) left residuals of several
    pixels at the corners of strongly distorted wide-angle images.
    """
    k1, k2, p1, p2 = (dist[..., i] for i in range(4))
    if tol is None:
        tol = 1e-12 if xd.dtype == torch.float64 else 1e-6

    def residual(x, y):
        ex, ey = distort(x, y, dist)
        return ex - xd, ey - yd

    x, y = xd.clone(), yd.clone()
    rx, ry = residual(x, y)
    for _ in range(max_iters):
        err = torch.maximum(rx.abs(), ry.abs())
        # NOTE: a converged point stops moving, so each point's result depends on it alone, not
        # on the others it is computed with (a tile's pixels render alike in any tiling).
        active = err > tol
        if not bool(active.any()):
            break
        r2 = x * x + y * y
        radial = 1 + k1 * r2 + k2 * r2 * r2
        dr = 2 * (k1 + 2 * k2 * r2)                       # d radial / d(x, y) = dr * (x, y)
        jxx = radial + dr * x * x + 2 * p1 * y + 6 * p2 * x
        jxy = dr * x * y + 2 * p1 * x + 2 * p2 * y
        jyx = dr * x * y + 2 * p1 * x + 2 * p2 * y
        jyy = radial + dr * y * y + 6 * p1 * y + 2 * p2 * x
        det = jxx * jyy - jxy * jyx
        ok = det.abs() > 1e-12
        det = torch.where(ok, det, torch.ones_like(det))
        nx = x - (jyy * rx - jxy * ry) / det
        ny = y - (jxx * ry - jyx * rx) / det
        nrx, nry = residual(nx, ny)
        better = ok & (torch.maximum(nrx.abs(), nry.abs()) < err)
        dx = 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        dy = p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        x = torch.where(active, torch.where(better, nx, (xd - dx) / radial), x)
        y = torch.where(active, torch.where(better, ny, (yd - dy) / radial), y)
        rx, ry = residual(x, y)
    return x, y


def distort(x: torch.Tensor, y: torch.Tensor, dist: torch.Tensor):
    """Forward OpenCV model (k1 k2 p1 p2): undistorted -> distorted normalised coordinates."""
    k1, k2, p1, p2 = (dist[..., i] for i in range(4))
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 * r2
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return xd, yd


def rays_from_pixels(uv: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor,
                     distortion: torch.Tensor | None = None):
    """Rays through given pixel positions, of one camera or of one camera per ray.

    uv: [n, 2] pixel coordinates (use pixel centres, +0.5).
    K: [3, 3] or [n, 3, 3]. c2w: [3, 4] / [4, 4] or [n, 3, 4] / [n, 4, 4].
    distortion: OpenCV k1 k2 p1 p2, [4] or [n, 4], or None.
    Returns rays_o: [n, 3] (the camera centre), rays_d: [n, 3] unit directions in world space.
    """
    K = K.to(uv)
    c2w = c2w.to(uv)
    x = (uv[:, 0] - K[..., 0, 2]) / K[..., 0, 0]
    y = (uv[:, 1] - K[..., 1, 2]) / K[..., 1, 1]
    if distortion is not None and bool(torch.any(distortion != 0)):
        x, y = undistort(x, y, distortion.to(uv))
    # NOTE: OpenCV image axes (y down, z forward) -> OpenGL camera axes (y up, z backward).
    dirs = torch.stack([x, -y, -torch.ones_like(x)], -1)
    if c2w.dim() == 2:
        rays_d = dirs @ c2w[:3, :3].T
        rays_o = c2w[:3, 3].expand_as(rays_d)
    else:
        rays_d = (c2w[:, :3, :3] @ dirs[:, :, None])[:, :, 0]
        rays_o = c2w[:, :3, 3]
    rays_d = rays_d / rays_d.norm(dim=-1, keepdim=True)
    return rays_o.contiguous(), rays_d


def make_rays(uv: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor,
              distortion: torch.Tensor | None = None,
              ndc: tuple[int, int, float] | None = None) -> dict:
    """THE ray function: pixels -> rays as the model consumes them (training, cache, renderer).

    uv: [n, 2] pixel positions (centres at +0.5). K, c2w, distortion: one camera ([3, 3],
    [3|4, 4], [4]) or one per ray ([n, 3, 3], [n, 3|4, 4], [n, 4]); distortion may be None.
    ndc: (H, W, focal) of the training cameras for forward-facing scenes, else None.
    Returns dict rays_o, rays_d (sampling space: NDC when ndc is given) and viewdirs (unit world
    directions), each [n, 3], on uv's device.
    """
    rays_o, rays_d = rays_from_pixels(uv, K, c2w, distortion)
    viewdirs = rays_d
    if ndc is not None:
        H, W, focal = ndc
        rays_o, rays_d = to_ndc(rays_o, rays_d, H, W, focal, 1.0)
    return {"rays_o": rays_o, "rays_d": rays_d, "viewdirs": viewdirs}


def scene_ndc(scene) -> tuple[int, int, float] | None:
    """(H, W, focal) for :func:`make_rays` if the scene is forward-facing (NDC), else None."""
    if not scene.ndc:
        return None
    H, W = scene.ndc_size
    return int(H), int(W), float(scene.ndc_focal)


def camera_rays(K: torch.Tensor, c2w: torch.Tensor, H: int, W: int,
                distortion: torch.Tensor | None = None):
    """All pixel rays of one image, row-major. Returns rays_o, rays_d: [H*W, 3]."""
    return rays_from_pixels(pixel_centres(H, W, device=c2w.device), K, c2w, distortion)


def to_ndc(rays_o: torch.Tensor, rays_d: torch.Tensor, H: int, W: int, focal: float,
           near: float = 1.0):
    """Forward-facing rays -> normalised device coordinates (NeRF paper, appendix C).

    rays_o, rays_d: [n, 3] world rays (camera looking down -z). The origin is first moved to the
    plane z = -near. Returns NDC rays_o, rays_d: [n, 3]; t in [0, 1] spans z from -near to -inf.
    rays_d is not unit length in NDC.
    """
    t = -(near + rays_o[:, 2]) / rays_d[:, 2]
    rays_o = rays_o + t[:, None] * rays_d
    ox, oy, oz = rays_o.unbind(-1)
    dx, dy, dz = rays_d.unbind(-1)
    o0 = -1.0 / (W / (2.0 * focal)) * ox / oz
    o1 = -1.0 / (H / (2.0 * focal)) * oy / oz
    o2 = 1.0 + 2.0 * near / oz
    d0 = -1.0 / (W / (2.0 * focal)) * (dx / dz - ox / oz)
    d1 = -1.0 / (H / (2.0 * focal)) * (dy / dz - oy / oz)
    d2 = -2.0 * near / oz
    return torch.stack([o0, o1, o2], -1), torch.stack([d0, d1, d2], -1)


def scene_rays(scene, index: int, uv: torch.Tensor | None = None):
    """Rays of frame `index` of a Scene as the model consumes them (:func:`make_rays`).

    uv: [n, 2] pixel positions, or None for every pixel (row-major).
    Returns dict with rays_o, rays_d (sampling space: NDC for forward-facing scenes) and
    viewdirs (unit world directions), each [n, 3].
    """
    if uv is None:
        uv = pixel_centres(scene.H, scene.W)
    dist = scene.distortion[index] if scene.distortion is not None else None
    return make_rays(uv, scene.K[index], scene.c2w[index], dist, scene_ndc(scene))
