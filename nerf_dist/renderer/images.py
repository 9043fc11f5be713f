"""Drawing helpers for rendered frames: colourised depth, side-by-side and contact-sheet images.

Pure tensor -> tensor functions (CPU, float in [0, 1]); the renderer's outputs, `nerf-dist eval`
and in-training validation all draw with these.
"""
from __future__ import annotations

import numpy as np
import torch


def to_uint8(img) -> np.ndarray:
    """[..., C] float image (tensor or array) in [0, 1] -> uint8 array (rounded, clipped; NaN,
    from a diverged model, is drawn black)."""
    a = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    return (np.clip(np.nan_to_num(a, nan=0.0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def hit_depth(depth: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """Depth of what a ray hits: [H, W] expected depth over opacity where acc > 0.5, else 0."""
    return torch.where(acc > 0.5, depth / acc.clamp(min=1e-6), torch.zeros_like(depth))


def depth_range(depth: torch.Tensor, near: float, far: float) -> tuple[float, float]:
    """Display range of a depth map: 2nd-98th percentile of its non-zero values (else near-far)."""
    v = depth[depth > 0].float()
    if v.numel() < 2:
        return near, far
    lo, hi = torch.quantile(v, torch.tensor([0.02, 0.98])).tolist()
    return (lo, hi) if hi > lo else (near, far)


def colourise_depth(depth: torch.Tensor, near: float, far: float,
                    acc: torch.Tensor | None = None) -> torch.Tensor:
    """depth [H, W] -> [H, W, 3] in [0, 1] (near = bright yellow, far = dark purple, 0 = black).

    With acc [H, W] the depth is normalised by the opacity (the depth of what the ray hits) and
    pixels with acc < 0.5 are black, so soft silhouette edges do not read as 'very near'.
    """
    if acc is not None:
        depth = hit_depth(depth, acc)
    d = ((depth - near) / max(far - near, 1e-9)).clamp(0, 1)
    x = 1.0 - d
    # NOTE: a compact viridis-like ramp; avoids a matplotlib dependency.
    r = (0.27 + x * (0.99 - 0.27) * x).clamp(0, 1)
    g = (0.0 + 0.9 * x).clamp(0, 1)
    b = (0.33 + 0.4 * torch.sin(3.14159 * x) - 0.2 * x).clamp(0, 1)
    img = torch.stack([r, g, b], -1)
    return torch.where((depth > 0)[..., None], img, torch.zeros_like(img))


def colourise_inverse_depth(depth: torch.Tensor, acc: torch.Tensor | None = None) -> torch.Tensor:
    """depth [H, W] -> [H, W, 3] coloured by inverse depth (disparity) between its 2nd and 98th
    percentiles (near = bright, far = dark, 0 = black): for unbounded scenes, where depths span
    from the cameras to a far bound hundreds of times further and a linear ramp is one colour."""
    if acc is not None:
        depth = hit_depth(depth, acc)
    disp = torch.where(depth > 0, 1.0 / depth.clamp(min=1e-9), torch.zeros_like(depth))
    lo, hi = depth_range(disp, 0.0, 1.0)
    # NOTE: colourise_depth maps its `near` to bright; in disparity the near end is the high one.
    img = colourise_depth(hi + lo - disp.clamp(lo, hi), lo, hi)
    return torch.where((depth > 0)[..., None], img, torch.zeros_like(img))


def side_by_side(gt: torch.Tensor, rgb: torch.Tensor, depth: torch.Tensor, near: float,
                 far: float) -> torch.Tensor:
    """[H, 3W, 3]: ground truth | render | colourised depth."""
    return torch.cat([gt.cpu(), rgb.cpu(),
                      colourise_depth(depth.cpu(), *depth_range(depth.cpu(), near, far))], 1)


def error_map(rgb: torch.Tensor, gt: torch.Tensor, gain: float = 4.0) -> torch.Tensor:
    """[H, W, 3] grey image of the mean absolute colour error, amplified by `gain` (0 = black)."""
    e = ((rgb.cpu() - gt.cpu()).abs().mean(-1) * gain).clamp(0, 1)
    return e[..., None].expand(*e.shape, 3)


def _shrink(img: torch.Tensor, max_side: int) -> torch.Tensor:
    """Integer-factor area downscale of [H, W, C] so its longer side is <= max_side."""
    f = max(1, -(-max(img.shape[0], img.shape[1]) // max_side))
    if f == 1:
        return img
    x = img.permute(2, 0, 1)[None]
    return torch.nn.functional.avg_pool2d(x, f, ceil_mode=True)[0].permute(1, 2, 0)


def contact_sheet(rows: list[tuple], near: float, far: float, max_side: int = 256) -> torch.Tensor:
    """rows of (gt, rgb, depth) -> [sum H, 4W, 3]: ground truth | render | depth | error per row."""
    out = []
    for gt, rgb, depth in rows:
        d = depth.cpu()
        cells = [gt.cpu(), rgb.cpu(), colourise_depth(d, *depth_range(d, near, far)),
                 error_map(rgb, gt)]
        out.append(torch.cat([_shrink(c, max_side) for c in cells], 1))
    return torch.cat(out, 0)


def sheet_views(n: int, max_views: int = 16) -> list[int]:
    """Up to max_views view indices spread evenly over n views."""
    if n <= max_views:
        return list(range(n))
    return sorted({round(i * (n - 1) / (max_views - 1)) for i in range(max_views)})
