"""Evaluate a trained model on a scene split: render, compare, write images and a JSON report."""
from __future__ import annotations

import json
import math
import os
import time

import numpy as np
import torch

from .metrics import psnr, ssim
from .model import render_chunked
from .rays import scene_rays


def render_view(model, scene, index: int, chunk: int, device) -> dict:
    """Render frame `index` of scene. Returns rgb [H, W, 3], depth [H, W], acc [H, W] on CPU."""
    rays = {k: v.to(device) for k, v in scene_rays(scene, index).items()}
    bg = scene.background.to(device)
    out = render_chunked(model, rays, scene.near, scene.far, chunk, background=bg)
    H, W = scene.H, scene.W
    return {"rgb": out["rgb"].reshape(H, W, 3).clamp(0, 1).cpu(),
            "depth": out["depth"].reshape(H, W).cpu(), "acc": out["acc"].reshape(H, W).cpu()}


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
        depth = torch.where(acc > 0.5, depth / acc.clamp(min=1e-6), torch.zeros_like(depth))
    d = ((depth - near) / max(far - near, 1e-9)).clamp(0, 1)
    x = 1.0 - d
    # NOTE: a compact viridis-like ramp; avoids a matplotlib dependency.
    r = (0.27 + x * (0.99 - 0.27) * x).clamp(0, 1)
    g = (0.0 + 0.9 * x).clamp(0, 1)
    b = (0.33 + 0.4 * torch.sin(3.14159 * x) - 0.2 * x).clamp(0, 1)
    img = torch.stack([r, g, b], -1)
    return torch.where((depth > 0)[..., None], img, torch.zeros_like(img))


def side_by_side(gt: torch.Tensor, rgb: torch.Tensor, depth: torch.Tensor, near: float,
                 far: float) -> torch.Tensor:
    """[H, 3W, 3]: ground truth | render | colourised depth."""
    return torch.cat([gt.cpu(), rgb.cpu(),
                      colourise_depth(depth.cpu(), *depth_range(depth.cpu(), near, far))], 1)


def to_uint8(img: torch.Tensor) -> np.ndarray:
    return (img.clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)


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


def evaluate_split(model, scene, out_dir: str, chunk: int, device, extra: dict | None = None,
                   log=print, rank: int = 0, world_size: int = 1, tile: int = 64,
                   tb_dir: str | None = None, step: int | None = None) -> dict | None:
    """Render every frame of `scene` with the tiled renderer across ranks; rank 0 writes.

    Every rank must call this (it holds collectives); ranks other than 0 return None. Rank 0
    writes rgb_NNN.png and depth_NNN.png per view, contact_sheet.png (ground truth | render |
    depth | error, up to 16 views) and report.json, and adds the contact-sheet rows to TensorBoard
    under tb_dir when given. Returns the report: mean and per-image PSNR and SSIM (and depth error
    when the scene has ground-truth depth), plus `extra` (steps, training wall-clock, ...).
    """
    from .renderer.core import RenderSetup, check_memory, render_frames
    from .renderer.outputs import write_png
    from .renderer.paths import split_path
    setup = RenderSetup.from_scene(model, scene, chunk, device)
    check_memory(setup, scene.W, scene.H, tile, rank, world_size, evaluate=True)
    setup.model = model.to(setup.device)
    cams = split_path(scene)
    if rank == 0:
        os.makedirs(out_dir, exist_ok=True)
    per_image = []
    keep = set(sheet_views(scene.n))
    rows = []
    t0 = time.time()
    for i, out in render_frames(setup, cams, list(range(scene.n)), rank, world_size, tile):
        out["rgb"] = out["rgb"].clamp(0, 1)
        gt = scene.images[i]
        entry = {"index": i, "file": scene.files[i], "psnr": psnr(out["rgb"], gt),
                 "ssim": ssim(out["rgb"], gt)}
        # NOTE: the depth of what a ray hits is the expected depth over its opacity.
        hit_depth = torch.where(out["acc"] > 0.5, out["depth"] / out["acc"].clamp(min=1e-6),
                                torch.zeros_like(out["depth"]))
        if scene.depths is not None:
            gt_d = scene.depths[i]
            mask = (gt_d > 0) & (hit_depth > 0)
            if mask.any():
                entry["depth_abs_err"] = float((hit_depth[mask] - gt_d[mask]).abs().mean())
        per_image.append(entry)
        write_png(os.path.join(out_dir, f"rgb_{i:03d}.png"), to_uint8(out["rgb"]))
        write_png(os.path.join(out_dir, f"depth_{i:03d}.png"),
                  to_uint8(colourise_depth(hit_depth, *depth_range(hit_depth, scene.near,
                                                                   scene.far))))
        if i in keep:  # NOTE: keep the shrunk row only, so memory stays small for big images
            rows.append((i, contact_sheet([(gt, out["rgb"], hit_depth)], scene.near, scene.far)))
        log(f"  view {i + 1}/{scene.n}: PSNR {entry['psnr']:.2f} dB, SSIM {entry['ssim']:.3f}")
    if rank != 0:
        return None
    bad = [e["index"] for e in per_image if not (math.isfinite(e["psnr"]) and math.isfinite(e["ssim"]))]
    if bad:
        raise RuntimeError(
            f"evaluation of {scene.split}: the model rendered non-finite pixels in view(s) {bad} "
            f"(PSNR/SSIM is NaN): the checkpoint diverged or is damaged; no report is written. "
            f"Evaluate an earlier checkpoint (nerf-dist render --checkpoint URL) or retrain with a "
            f"lower train.lr")
    report = {
        "split": scene.split, "n_images": scene.n,
        "psnr": float(np.mean([e["psnr"] for e in per_image])),
        "ssim": float(np.mean([e["ssim"] for e in per_image])),
        "render_seconds": time.time() - t0,
        "world_size": world_size,
        **(extra or {}),
        "contact_sheet": "contact_sheet.png (rows: views "
                         f"{[i for i, _ in rows]}; columns: ground truth | render | depth | "
                         "error x4)",
        "per_image": per_image,
    }
    errs = [e["depth_abs_err"] for e in per_image if "depth_abs_err" in e]
    if errs:
        report["depth_abs_err"] = float(np.mean(errs))
    write_png(os.path.join(out_dir, "contact_sheet.png"), to_uint8(torch.cat([r for _, r in rows])))
    if tb_dir:
        from .logger import Logger
        tb = Logger(tb_dir, progress=False)
        for i, row in rows:
            tb.image(int(step or 0), f"eval_{scene.split}/view_{i:03d}", row)
        tb.scalars(int(step or 0), {f"eval_{scene.split}/psnr": report["psnr"],
                                    f"eval_{scene.split}/ssim": report["ssim"]})
        tb.close()
    tmp = os.path.join(out_dir, ".report.json.tmp")
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, os.path.join(out_dir, "report.json"))
    return report
