"""The field at mesh samples: density of grid blocks, normals from the density gradient, colours
from the radiance field.

Choices (documented in docs/export.md):
- normal = -grad(sigma) / |grad(sigma)| by central differences of half a cell (density falls
  towards empty space, so the normal points out); where the gradient vanishes, the normal of the
  faces around the vertex is used instead.
- colour: the radiance seen looking straight at the surface from outside, i.e. along the view
  direction -normal. This is the direction a camera in front of the surface would see it from;
  a mean of training-camera directions would mix in views from behind the surface.
"""
from __future__ import annotations

import numpy as np
import torch

from .grid import Grid
from .march import Piece


@torch.no_grad()
def field(model, pts: torch.Tensor, viewdirs: torch.Tensor | None, chunk: int, device
          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """model.field_at over pts [n, 3] in chunks of `chunk` points on `device` -> (sigma [n],
    rgb [n, 3] or None) on the CPU (fp32). The chunking is fixed by `chunk` alone, so the same
    points give the same values on any rank."""
    sig, rgb = [], []
    for s in range(0, pts.shape[0], chunk):
        d = None if viewdirs is None else viewdirs[s:s + chunk].to(device)
        a, b = model.field_at(pts[s:s + chunk].to(device), d)
        sig.append(a.float().cpu())
        if b is not None:
            rgb.append(b.float().cpu())
    sigma = torch.cat(sig) if sig else torch.zeros(0)
    return sigma, (torch.cat(rgb) if viewdirs is not None and rgb else
                   (torch.zeros(0, 3) if viewdirs is not None else None))


def block_density(model, grid: Grid, start, stop, chunk: int, device) -> np.ndarray:
    """Density of the samples of block [start, stop) -> [bx, by, bz] float32."""
    shape = tuple(b - a for a, b in zip(start, stop))
    sigma, _ = field(model, grid.points(start, stop), None, chunk, device)
    return sigma.numpy().reshape(shape)


def face_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted normals of the faces around each vertex: [v, 3] (unnormalised)."""
    fn = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    out = np.zeros_like(verts)
    for c in range(3):
        np.add.at(out, faces[:, c], fn)
    return out


def add_attributes(model, piece: Piece, grid: Grid, chunk: int, device,
                   colors: bool = True) -> Piece:
    """Fill piece.normals [v, 3] float32 and piece.colors [v, 3] uint8 (None when colors is
    False) from the field at the piece's vertices."""
    if piece.empty:
        piece.normals = np.zeros((0, 3), np.float32)
        piece.colors = np.zeros((0, 3), np.uint8) if colors else None
        return piece
    x = grid.to_scene(torch.from_numpy(piece.verts))                        # [v, 3] float64
    h = 0.5 * grid.cell
    eye = torch.eye(3, dtype=torch.float64) * h
    offs = torch.cat([eye, -eye])                                           # [6, 3]
    probe = (x[:, None, :] + offs[None]).reshape(-1, 3).float()
    s, _ = field(model, probe, None, chunk, device)
    s = s.double().view(-1, 6)
    grad = (s[:, :3] - s[:, 3:]) / (2 * h)                                  # [v, 3]
    n = -grad
    norm = n.norm(dim=-1, keepdim=True)
    flat = norm[:, 0] <= 1e-12
    if bool(flat.any()):
        local = {int(e): i for i, e in enumerate(piece.ids)}
        faces = np.vectorize(local.get)(piece.faces) if len(piece.faces) else piece.faces
        fallback = torch.from_numpy(face_normals(piece.verts, faces))
        n[flat] = fallback[flat]
        norm = n.norm(dim=-1, keepdim=True)
    n = (n / norm.clamp_min(1e-30)).float()
    piece.normals = n.numpy()
    if colors:
        _, rgb = field(model, x.float(), -n, chunk, device)
        piece.colors = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return piece


__all__ = ["add_attributes", "block_density", "face_normals", "field"]
