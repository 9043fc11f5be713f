"""The density level of the surface, when --level is not given: chosen from the field itself.

Rule: Otsu's threshold of log(sigma) over the coarse grid's samples (the split of the samples
into two classes, empty and solid, with the largest variance between them), computed over samples
whose density is above SIGMA_FLOOR. A trained radiance field's densities are bimodal in log scale
(near zero in free space, large inside matter), and the threshold between the modes does not
depend on the resolution or the scene's scale. The rule is documented in docs/export.md.
"""
from __future__ import annotations

import numpy as np

SIGMA_FLOOR = 1e-3
"""Densities below this count as empty space (they would drown the log histogram's low end)."""
BINS = 256


def otsu_log_level(sigma: np.ndarray) -> float | None:
    """sigma: [n] densities -> the Otsu level (a density), or None when the field is flat."""
    s = np.asarray(sigma, dtype=np.float64).ravel()
    s = s[np.isfinite(s)]
    if not len(s):
        return None
    x = np.log(np.maximum(s, SIGMA_FLOOR))
    lo, hi = float(x.min()), float(x.max())
    if hi - lo < 1e-6:
        return None
    hist, edges = np.histogram(x, bins=BINS, range=(lo, hi))
    mids = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * mids)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    k = int(np.argmax(between[:-1]))
    return float(np.exp(edges[k + 1]))


def suggest_level(sigma: np.ndarray) -> str:
    """For an empty result: the coarse grid's density range and a level inside it."""
    s = np.asarray(sigma, dtype=np.float64).ravel()
    if not len(s):
        return "the box holds no samples"
    lo, hi = float(s.min()), float(s.max())
    if hi <= lo:
        return f"the density is {lo:.4g} everywhere in the box (an untrained or empty field)"
    mid = float(np.exp(0.5 * (np.log(max(lo, SIGMA_FLOOR)) + np.log(max(hi, SIGMA_FLOOR)))))
    mid = min(max(mid, lo + 1e-6 * (hi - lo)), hi - 1e-6 * (hi - lo))
    return (f"the density in the box spans {lo:.4g} .. {hi:.4g} (coarse grid): a level in "
            f"between gives a surface, e.g. --level {mid:.4g}")


__all__ = ["BINS", "SIGMA_FLOOR", "otsu_log_level", "suggest_level"]
