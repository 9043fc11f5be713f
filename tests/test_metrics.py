"""nerf_dist.metrics: PSNR and SSIM against known and hand-derived values."""
import math

import numpy as np
import pytest
import torch

from nerf_dist.metrics import mse_to_psnr, psnr, ssim

C1, C2 = 0.01 ** 2, 0.03 ** 2   # SSIM's stabilisers for a peak of 1 (K1 = 0.01, K2 = 0.03)


# ----------------------------------------------------------------------------- PSNR

def test_psnr_of_identical_images_is_infinite():
    img = torch.rand(8, 8, 3, generator=torch.Generator().manual_seed(0))
    assert psnr(img, img) == math.inf
    assert mse_to_psnr(0.0) == math.inf


@pytest.mark.parametrize("offset,expected", [(0.1, 20.0), (0.01, 40.0), (0.05, 26.0205999)])
def test_psnr_of_a_constant_offset(offset, expected):
    # every pixel off by `offset`: MSE = offset^2, PSNR = -10 log10(offset^2) = -20 log10(offset)
    a = torch.full((6, 5, 3), 0.3)
    assert psnr(a + offset, a) == pytest.approx(expected, abs=1e-4)
    assert psnr(a, a + offset) == pytest.approx(expected, abs=1e-4)


def test_psnr_of_half_the_pixels_wrong():
    # half the pixels off by 0.2 -> MSE = 0.5 * 0.04 = 0.02 -> PSNR = 10 log10(50) = 16.9897 dB
    a = torch.zeros(4, 4, 3)
    b = a.clone()
    b[:2] = 0.2
    assert psnr(a, b) == pytest.approx(10 * math.log10(50), abs=1e-4)
    assert mse_to_psnr(torch.tensor(0.02)) == pytest.approx(16.9897, abs=1e-4)


# ----------------------------------------------------------------------------- SSIM

def test_ssim_of_identical_images_is_one():
    img = torch.rand(32, 24, 3, generator=torch.Generator().manual_seed(1))
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-6)


def test_ssim_of_two_flat_images():
    # no variance anywhere: SSIM = (2 a b + C1) / (a^2 + b^2 + C1) * (0 + C2) / (0 + C2)
    a, b = 0.5, 0.6
    expected = (2 * a * b + C1) / (a * a + b * b + C1)            # 0.98361
    got = ssim(torch.full((16, 16, 3), a), torch.full((16, 16, 3), b))
    # NOTE: 1e-4, not 1e-6: ssim() works in float32, where var = E[x^2] - E[x]^2 of a flat
    # image is ~1e-8 instead of 0, against C2 = 9e-4.
    assert expected == pytest.approx(0.983609, abs=1e-6)
    assert got == pytest.approx(expected, abs=1e-4)


def test_ssim_hand_derived_3x3_case():
    """A 3x3 image shrinks the window to 3x3 (one valid position). x is flat 0.5 with the centre
    at 1.0; y is flat 0.5. With the window's centre weight c (the middle of a normalised
    3-tap Gaussian of sigma 1.5, squared):
        mu_x = 0.5 + 0.5 c,  mu_y = 0.5,  var_x = 0.25 c (1 - c),  var_y = cov = 0
        SSIM = (2 mu_x mu_y + C1) C2 / ((mu_x^2 + mu_y^2 + C1) (var_x + C2))
    """
    g = [math.exp(-1 / (2 * 1.5 ** 2)), 1.0, math.exp(-1 / (2 * 1.5 ** 2))]
    c = (g[1] / sum(g)) ** 2                                       # 0.147761
    mx, my, vx = 0.5 + 0.5 * c, 0.5, 0.25 * c * (1 - c)
    expected = (2 * mx * my + C1) * C2 / ((mx * mx + my * my + C1) * (vx + C2))
    x = torch.full((3, 3, 3), 0.5)
    x[1, 1] = 1.0
    y = torch.full((3, 3, 3), 0.5)
    assert c == pytest.approx(0.147761, abs=1e-6)
    assert expected == pytest.approx(0.027531, abs=1e-6)
    assert ssim(x, y) == pytest.approx(expected, abs=1e-5)


def _ssim_reference(x: np.ndarray, y: np.ndarray, window=11, sigma=1.5) -> float:
    """Wang et al. 2004 written out: for every valid window position and channel, Gaussian-
    weighted means, variances and covariance over the window (2-D weights, no separable
    convolution), the SSIM map, then its mean."""
    k = np.arange(window) - (window - 1) / 2
    g = np.exp(-k ** 2 / (2 * sigma ** 2))
    w2 = np.outer(g, g) / np.outer(g, g).sum()
    H, W, C = x.shape
    vals = []
    for ch in range(C):
        for i in range(H - window + 1):
            for j in range(W - window + 1):
                px, py = x[i:i + window, j:j + window, ch], y[i:i + window, j:j + window, ch]
                mx, my = (w2 * px).sum(), (w2 * py).sum()
                vx, vy = (w2 * (px - mx) ** 2).sum(), (w2 * (py - my) ** 2).sum()
                cxy = (w2 * (px - mx) * (py - my)).sum()
                vals.append((2 * mx * my + C1) * (2 * cxy + C2) /
                            ((mx * mx + my * my + C1) * (vx + vy + C2)))
    return float(np.mean(vals))


def test_ssim_matches_a_direct_computation():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(14, 13, 3, generator=g)
    y = (x + 0.15 * torch.randn(14, 13, 3, generator=g)).clamp(0, 1)
    ref = _ssim_reference(x.double().numpy(), y.double().numpy())
    assert 0.2 < ref < 0.95                   # a case between "same" and "unrelated"
    assert ssim(x, y) == pytest.approx(ref, abs=1e-5)
    assert ssim(y, x) == pytest.approx(ref, abs=1e-5)        # symmetric


def test_ssim_falls_as_noise_grows():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(32, 32, 3, generator=g)
    noise = torch.randn(32, 32, 3, generator=g)
    scores = [ssim(x, (x + s * noise).clamp(0, 1)) for s in (0.0, 0.02, 0.1, 0.3)]
    assert scores[0] == pytest.approx(1.0, abs=1e-6)
    assert all(a > b for a, b in zip(scores, scores[1:])), scores
