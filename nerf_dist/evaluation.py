"""Evaluate a trained model on a scene split: render, compare, write images and a JSON report."""
from __future__ import annotations

import json
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


def colourise_depth(depth: torch.Tensor, near: float, far: float) -> torch.Tensor:
    """depth [H, W] -> [H, W, 3] in [0, 1] (near = bright yellow, far = dark purple, 0 = black)."""
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
    return torch.cat([gt.cpu(), rgb.cpu(), colourise_depth(depth.cpu(), near, far)], 1)


def to_uint8(img: torch.Tensor) -> np.ndarray:
    return (img.clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)


def evaluate_split(model, scene, out_dir: str, chunk: int, device, extra: dict | None = None,
                   log=print) -> dict:
    """Render every frame of `scene`, write rgb/depth PNGs and report.json into out_dir.

    Returns the report: mean and per-image PSNR and SSIM (and depth error when the scene has
    ground-truth depth), plus `extra` (steps, training wall-clock, ...).
    """
    import imageio.v3 as iio
    os.makedirs(out_dir, exist_ok=True)
    model.eval()
    per_image = []
    t0 = time.time()
    for i in range(scene.n):
        out = render_view(model, scene, i, chunk, device)
        gt = scene.images[i]
        entry = {"index": i, "file": scene.files[i], "psnr": psnr(out["rgb"], gt),
                 "ssim": ssim(out["rgb"], gt)}
        if scene.depths is not None:
            gt_d = scene.depths[i]
            mask = (gt_d > 0) & (out["acc"] > 0.5)
            if mask.any():
                entry["depth_abs_err"] = float((out["depth"][mask] - gt_d[mask]).abs().mean())
        per_image.append(entry)
        iio.imwrite(os.path.join(out_dir, f"rgb_{i:03d}.png"), to_uint8(out["rgb"]))
        iio.imwrite(os.path.join(out_dir, f"depth_{i:03d}.png"),
                    to_uint8(colourise_depth(out["depth"], scene.near, scene.far)))
        log(f"  view {i + 1}/{scene.n}: PSNR {entry['psnr']:.2f} dB, SSIM {entry['ssim']:.3f}")
    report = {
        "split": scene.split, "n_images": scene.n,
        "psnr": float(np.mean([e["psnr"] for e in per_image])),
        "ssim": float(np.mean([e["ssim"] for e in per_image])),
        "render_seconds": time.time() - t0,
        **(extra or {}),
        "per_image": per_image,
    }
    errs = [e["depth_abs_err"] for e in per_image if "depth_abs_err" in e]
    if errs:
        report["depth_abs_err"] = float(np.mean(errs))
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report
