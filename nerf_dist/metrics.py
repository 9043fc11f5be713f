"""Image metrics: PSNR and SSIM (Wang et al. 2004, 11x11 Gaussian window, sigma 1.5)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def mse_to_psnr(mse: float | torch.Tensor) -> float:
    mse = float(mse)
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """pred, target: [..., 3] in [0, 1]. Returns PSNR in dB (peak 1)."""
    return mse_to_psnr(torch.mean((pred.float() - target.float()) ** 2))


def ssim(pred: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """pred, target: [H, W, 3] in [0, 1]. Mean SSIM over channels and valid ('same'-free) pixels."""
    x = pred.float().permute(2, 0, 1)[:, None]                    # [3, 1, H, W]
    y = target.float().permute(2, 0, 1)[:, None]
    g = torch.arange(window, dtype=torch.float32) - (window - 1) / 2
    g = torch.exp(-(g ** 2) / (2 * sigma ** 2))
    g = (g / g.sum()).to(x.device)
    w = min(window, x.shape[-1], x.shape[-2])
    if w < window:  # tiny images: shrink the window rather than fail
        g = g[(window - w) // 2:(window - w) // 2 + w]
        g = g / g.sum()
    kx, ky = g.view(1, 1, 1, -1), g.view(1, 1, -1, 1)
    blur = lambda z: F.conv2d(F.conv2d(z, kx), ky)  # noqa: E731
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    return float((num / den).mean())
