"""Evaluate a trained model on a scene split: render, compare, write images and a JSON report.

Every image here comes from the tiled renderer (:func:`render_views` over
:func:`nerf_dist.renderer.core.render_frames`), the same code as `nerf-dist render` and
in-training validation, so the three agree pixel for pixel. Drawing helpers (colourised depth,
contact sheets) live with the renderer's outputs, in :mod:`nerf_dist.renderer.images`.

A split can be a loaded :class:`~nerf_dist.scenes.base.Scene` or a
:class:`~nerf_dist.scenes.lazy.LazyScene` (what `nerf-dist eval` passes): the cameras are all
the renderer needs, and :func:`render_with_truth` decodes each view's ground truth on rank 0, the
rank that scores it, once its frame has arrived; the other ranks decode nothing.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from . import storage
from .config import RenderConfig
from .logger import Logger
from .metrics import psnr, ssim
from .renderer.core import RenderSetup, check_memory, render_frames
from .renderer.images import (colourise_depth, contact_sheet, depth_range, hit_depth, sheet_views,
                              to_uint8)
from .renderer.outputs import write_png
from .renderer.paths import split_path
from .scenes.lazy import LazyScene

FG_THRESHOLD = 0.02
"""A ground-truth pixel is foreground when some channel differs from the scene's background
colour by more than this (about 5 levels of 8 bits: above PNG/JPEG quantisation noise)."""


def render_views(setup: RenderSetup, scene, views: Iterable[int], rank: int = 0,
                 world_size: int = 1, tile: int = RenderConfig.tile,
                 watch=None) -> Iterator[tuple[int, dict]]:
    """Frames `views` of `scene` through the tiled renderer -> (index, out) on rank 0, in order.

    out: rgb [H, W, 3] clamped to [0, 1], depth [H, W], acc [H, W] (float32, CPU). The cameras are
    the split's own (:func:`split_path`: intrinsics, pose and lens distortion), so the pixels are
    those training fits. Every rank must iterate to the end (in-training validation, eval: every
    rank of the job); with world_size 1 no collective runs. watch: as in :func:`render_frames`.
    """
    for i, out in render_frames(setup, split_path(scene), list(views), rank, world_size, tile,
                                watch=watch):
        out["rgb"] = out["rgb"].clamp(0, 1)
        yield i, out


def ground_truth(scene, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """View i's ground truth: rgb [H, W, 3] float32 in [0, 1] and depth [H, W] (None when the
    scene has no depth). A loaded Scene indexes its arrays; a LazyScene decodes that one view now.
    """
    if isinstance(scene, LazyScene):
        return torch.from_numpy(scene.image(i)), scene.depth(i)
    return scene.images[i], (scene.depths[i] if scene.depths is not None else None)


def render_with_truth(setup: RenderSetup, scene, views: Iterable[int], rank: int = 0,
                      world_size: int = 1, tile: int = RenderConfig.tile
                      ) -> Iterator[tuple[int, dict, torch.Tensor, torch.Tensor | None]]:
    """:func:`render_views` plus each view's ground truth -> (index, out, gt_rgb [H, W, 3],
    gt_depth [H, W] | None) on rank 0, in order.

    The ground truth is decoded (:func:`ground_truth`) on rank 0 only, one view at a time, after
    that view's frame arrived: with a LazyScene no rank holds the split's images, and ranks other
    than 0 never decode one. Every rank must iterate to the end.
    """
    for i, out in render_views(setup, scene, views, rank, world_size, tile):
        gt, gt_depth = ground_truth(scene, i)
        yield i, out, gt, gt_depth


def foreground_mask(gt: torch.Tensor, background: torch.Tensor,
                    threshold: float = FG_THRESHOLD) -> torch.Tensor:
    """[H, W] bool: ground-truth pixels (gt [H, W, 3]) differing from background [3] by more than
    `threshold` in any channel."""
    return ((gt.float() - background.float().to(gt.device)).abs() > threshold).any(-1)


def psnr_fg(pred: torch.Tensor, gt: torch.Tensor, background: torch.Tensor,
            threshold: float = FG_THRESHOLD) -> float | None:
    """PSNR (dB, peak 1) over the foreground pixels of gt only (:func:`foreground_mask`); None
    when the view has no foreground. pred, gt: [H, W, 3] in [0, 1]; background: [3].

    NOTE: on object scenes over a plain background most pixels are background, which an untrained
    model gets right by predicting the background colour: full-image PSNR then flatters it.
    """
    mask = foreground_mask(gt, background, threshold)
    if not bool(mask.any()):
        return None
    return psnr(pred[mask], gt[mask])


def evaluate_split(model, scene, out_dir: str, chunk: int, device, extra: dict | None = None,
                   log=print, rank: int = 0, world_size: int = 1, tile: int = RenderConfig.tile,
                   tb_dir: str | None = None, step: int | None = None) -> dict | None:
    """Render every frame of `scene` (a Scene or a LazyScene) with the tiled renderer across
    ranks; rank 0 decodes each view's ground truth as it scores it (:func:`render_with_truth`)
    and writes.

    Every rank must call this (it holds collectives); ranks other than 0 return None. Rank 0
    writes rgb_NNN.png and depth_NNN.png per view, contact_sheet.png (ground truth | render |
    depth | error, up to 16 views) and report.json, and adds the contact-sheet rows to TensorBoard
    under tb_dir when given. Returns the report: mean and per-image PSNR and SSIM, `psnr_fg` (PSNR
    over foreground pixels only, :func:`psnr_fg`; the mean skips views without foreground, and is
    None when no view has any), depth error when the scene has ground-truth depth, plus `extra`
    (steps, training wall-clock, ...).
    """
    setup = RenderSetup.from_scene(model, scene, chunk, device)
    check_memory(setup, scene.W, scene.H, tile, rank, world_size, evaluate=True)
    setup.model = model.to(setup.device)
    if rank == 0:
        os.makedirs(out_dir, exist_ok=True)
    per_image = []
    keep = set(sheet_views(scene.n))
    rows = []
    t0 = time.time()
    background = torch.as_tensor(scene.background, dtype=torch.float32)
    for i, out, gt, gt_d in render_with_truth(setup, scene, range(scene.n), rank, world_size, tile):
        entry = {"index": i, "file": scene.files[i], "psnr": psnr(out["rgb"], gt),
                 "psnr_fg": psnr_fg(out["rgb"], gt, background),
                 "ssim": ssim(out["rgb"], gt)}
        depth = hit_depth(out["depth"], out["acc"])
        if gt_d is not None:
            mask = (gt_d > 0) & (depth > 0)
            if mask.any():
                entry["depth_abs_err"] = float((depth[mask] - gt_d[mask]).abs().mean())
        per_image.append(entry)
        write_png(os.path.join(out_dir, f"rgb_{i:03d}.png"), to_uint8(out["rgb"]))
        write_png(os.path.join(out_dir, f"depth_{i:03d}.png"),
                  to_uint8(colourise_depth(depth, *depth_range(depth, scene.near, scene.far))))
        if i in keep:  # NOTE: keep the shrunk row only, so memory stays small for big images
            rows.append((i, contact_sheet([(gt, out["rgb"], depth)], scene.near, scene.far)))
        fg_txt = "none" if entry["psnr_fg"] is None else f"{entry['psnr_fg']:.2f} dB"
        log(f"  view {i + 1}/{scene.n}: PSNR {entry['psnr']:.2f} dB (foreground {fg_txt}), "
            f"SSIM {entry['ssim']:.3f}")
    if rank != 0:
        return None
    # NOTE: NaN, not inf: rgb is clamped, so non-finite pixels show as NaN, while a view rendered
    # exactly (mse 0) has an infinite PSNR and is no sign of divergence.
    bad = [e["index"] for e in per_image if math.isnan(e["psnr"]) or math.isnan(e["ssim"])]
    if bad:
        raise RuntimeError(
            f"evaluation of {scene.split}: the model rendered non-finite pixels in view(s) {bad} "
            f"(PSNR/SSIM is NaN): the checkpoint diverged or is damaged; no report is written. "
            f"Evaluate an earlier checkpoint (nerf-dist render --checkpoint URL) or retrain with a "
            f"lower train.lr")
    fg = [e["psnr_fg"] for e in per_image if e["psnr_fg"] is not None]
    report = {
        "split": scene.split, "n_images": scene.n,
        "psnr": float(np.mean([e["psnr"] for e in per_image])),
        "psnr_fg": float(np.mean(fg)) if fg else None,
        "psnr_fg_views": len(fg),
        "fg_threshold": FG_THRESHOLD,
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
        tb = Logger(tb_dir, progress=False)
        for i, row in rows:
            tb.image(int(step or 0), f"eval_{scene.split}/view_{i:03d}", row)
        values = {f"eval_{scene.split}/psnr": report["psnr"],
                  f"eval_{scene.split}/ssim": report["ssim"]}
        if report["psnr_fg"] is not None:
            values[f"eval_{scene.split}/psnr_fg"] = report["psnr_fg"]
        tb.scalars(int(step or 0), values)
        tb.close()
    with storage.atomic_write(os.path.join(out_dir, "report.json")) as tmp, open(tmp, "w") as f:
        json.dump(report, f, indent=2)
    return report
