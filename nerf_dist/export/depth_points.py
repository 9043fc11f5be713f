"""Pure math of the point-cloud export: a rendered view -> surface points, colours, normals; a
uniform sample of bounded size over many views; statistical outlier removal.

Choices (documented in docs/export.md):
- point = rays_o + (depth / acc) rays_d: the expected depth of a ray is sum(w t), weighted by an
  opacity acc = sum(w) that can be below 1; divided by acc it is the mean depth of what the ray
  hit. Kinds whose samples reach far out (unbounded: model.far_bound) render the median depth
  instead (:func:`nerf_dist.render_ops.volrend.median_depth`): there a small weight tail far
  away pulls the mean off the surface. Forward-facing (NDC) scenes: that t is along the NDC
  ray, mapped back to the scene frame by the inverse of
  :func:`nerf_dist.render_ops.rays.to_ndc`.
- colour = (rgb - (1 - acc) background) / acc: the renderer composites over the background; the
  surface's own colour is what remains (clamped to [0, 1]).
- normal: the cross product of the point map's differences along the image rows and columns,
  each taken on the side (forward or backward neighbour) whose depth differs least, so a normal
  at an object's silhouette is not bent towards the background; turned to face the camera.
  Pixels with no valid neighbour on either side of an axis get the reversed viewing direction.
"""
from __future__ import annotations

import numpy as np
import torch


def ndc_to_scene(p: torch.Tensor, H: int, W: int, focal: float, near: float = 1.0) -> torch.Tensor:
    """NDC points p [n, 3] -> scene-frame points [n, 3] (inverse of render_ops.rays.to_ndc's
    point map: x' = -f x / (W/2 z), y' = -f y / (H/2 z), z' = 1 + 2 near / z)."""
    z = 2.0 * near / (p[:, 2] - 1.0).clamp(max=-1e-6)
    x = -p[:, 0] * z * W / (2.0 * focal)
    y = -p[:, 1] * z * H / (2.0 * focal)
    return torch.stack([x, y, z], -1)


def view_points(out: dict, rays: dict, background: torch.Tensor, min_opacity: float,
                ndc: tuple[int, int, float] | None = None) -> dict:
    """One rendered view -> its surface points (module docstring).

    out: rgb [H, W, 3], depth [H, W], acc [H, W] (the renderer's; with depth_median [H, W], that
    is the point's distance instead of depth / acc); rays: rays_o, rays_d, viewdirs
    [H * W, 3] of the same pixels, row-major (the renderer's own, NDC when ndc is given);
    background: [3]. Returns {points [H, W, 3] float64 (scene frame), colors [H, W, 3] float32,
    normals [H, W, 3] float32 (unit), valid [H, W] bool (acc >= min_opacity and a finite
    depth)}.
    """
    H, W = out["acc"].shape
    acc = out["acc"].double()
    t = (out["depth_median"].double() if "depth_median" in out
         else out["depth"].double() / acc.clamp(min=1e-6))
    o, d = rays["rays_o"].double(), rays["rays_d"].double()
    pts = o + d * t.reshape(-1, 1)
    if ndc is not None:
        pts = ndc_to_scene(pts, *ndc)
    pts = pts.reshape(H, W, 3)
    valid = (acc >= min_opacity) & torch.isfinite(pts).all(-1) & (t > 0)
    bg = background.double().reshape(1, 1, 3)
    col = ((out["rgb"].double() - (1.0 - acc[..., None]) * bg) / acc[..., None].clamp(min=1e-6))
    nrm = depth_normals(pts, valid, rays["viewdirs"].double().reshape(H, W, 3))
    return {"points": pts.numpy(), "colors": col.clamp(0, 1).float().numpy(),
            "normals": nrm.float().numpy(), "valid": valid.numpy()}


def _side_diff(p: torch.Tensor, ok: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel of p [H, W, 3], its difference to the next pixel along dim (0: the next row,
    1: the next column) or from the previous one, whichever is shorter with both pixels valid
    (ok [H, W]) -> (diff [H, W, 3], found [H, W])."""
    fwd = torch.zeros_like(p)
    bwd = torch.zeros_like(p)
    okf = torch.zeros_like(ok)
    okb = torch.zeros_like(ok)
    n = p.shape[dim]
    a, b = [slice(None)] * 3, [slice(None)] * 3
    a[dim], b[dim] = slice(0, n - 1), slice(1, n)
    diff = p[tuple(b)] - p[tuple(a)]
    both = ok[tuple(b[:2])] & ok[tuple(a[:2])]
    fwd[tuple(a)], okf[tuple(a[:2])] = diff, both
    bwd[tuple(b)], okb[tuple(b[:2])] = diff, both
    big = torch.full(ok.shape, float("inf"), dtype=p.dtype)
    lf = torch.where(okf, fwd.norm(dim=-1), big)
    lb = torch.where(okb, bwd.norm(dim=-1), big)
    use_f = lf <= lb
    return torch.where(use_f[..., None], fwd, bwd), okf | okb


def depth_normals(pts: torch.Tensor, valid: torch.Tensor, viewdirs: torch.Tensor) -> torch.Tensor:
    """Unit normals [H, W, 3] of a point map pts [H, W, 3] (valid [H, W]) from its differences
    (module docstring), facing against viewdirs [H, W, 3]; -viewdirs where none is found."""
    du, oku = _side_diff(pts, valid, 1)
    dv, okv = _side_diff(pts, valid, 0)
    n = torch.cross(du, dv, dim=-1)
    length = n.norm(dim=-1, keepdim=True)
    good = (oku & okv)[..., None] & (length > 1e-12)
    n = torch.where(good, n / length.clamp(min=1e-30), -viewdirs)
    flip = (n * viewdirs).sum(-1, keepdim=True) > 0
    return torch.where(flip, -n, n)


def frame_keys(seed: int, frame: int, n: int) -> np.ndarray:
    """[n] uniform keys in [0, 1) of a view's pixels, from (seed, frame) alone: the same pixel
    gets the same key on any number of ranks (the sample is decided on rank 0 either way)."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(frame))
    return torch.rand(n, generator=g, dtype=torch.float64).numpy()


class Reservoir:
    """The `size` points of smallest key seen so far (size 0: all of them): a uniform random
    sample without replacement of every point added, in O(size + one view) memory.

    Arrays: keys [n] float64 and, per name, [n, ...]; :meth:`take` returns them sorted by key."""

    def __init__(self, size: int):
        self.size = int(size)
        self.parts: dict[str, list[np.ndarray]] = {}
        self.n_seen = 0

    def add(self, keys: np.ndarray, **arrays: np.ndarray) -> None:
        self.n_seen += len(keys)
        self.parts.setdefault("keys", []).append(keys)
        for k, v in arrays.items():
            self.parts.setdefault(k, []).append(v)
        held = sum(len(k) for k in self.parts["keys"])
        if self.size and held > 2 * self.size:
            self._shrink()

    def _shrink(self) -> None:
        cat = {k: np.concatenate(v) for k, v in self.parts.items()}
        if self.size and len(cat["keys"]) > self.size:
            keep = np.argpartition(cat["keys"], self.size - 1)[:self.size]
            cat = {k: v[keep] for k, v in cat.items()}
        self.parts = {k: [v] for k, v in cat.items()}

    def take(self) -> dict[str, np.ndarray]:
        if not self.parts:
            return {}
        self._shrink()
        cat = {k: v[0] for k, v in self.parts.items()}
        order = np.argsort(cat["keys"], kind="stable")
        return {k: v[order] for k, v in cat.items()}


def statistical_outliers(points: np.ndarray, k: int, std_ratio: float, chunk: int = 65536,
                         progress=None) -> np.ndarray:
    """[n] bool, True for an outlier of points [n, 3]: its mean distance to its k nearest
    neighbours exceeds the mean of that over all points by more than std_ratio standard
    deviations (as Open3D's remove_statistical_outlier). progress(n_done) after each chunk."""
    from scipy.spatial import cKDTree  # NOTE: lazy: scipy is only needed here
    n = len(points)
    if k < 1 or n <= k:
        return np.zeros(n, bool)
    tree = cKDTree(points)
    mean_d = np.empty(n)
    for s in range(0, n, chunk):
        d, _ = tree.query(points[s:s + chunk], k=k + 1)
        mean_d[s:s + chunk] = d[:, 1:].mean(1)  # NOTE: column 0 is the point itself
        if progress is not None:
            progress(min(chunk, n - s))
    return mean_d > mean_d.mean() + std_ratio * mean_d.std()


__all__ = ["Reservoir", "depth_normals", "frame_keys", "ndc_to_scene", "statistical_outliers",
           "view_points"]
