"""Scene contraction and the sample spacing of unbounded scenes (mip-NeRF 360, nerfacto).

contract(x) = x inside the unit ball, (2 - 1/|x|) x/|x| outside: all of space maps into the ball
of radius 2, the far field at ever coarser resolution. With ``order="inf"`` |x| is the L-infinity
norm (nerfacto's variant for hash grids): space maps into the cube [-2, 2]^3, which a grid fills
without wasting its corners.

Spacing (mip-NeRF 360's s-space, nerfacto's piecewise spacing function): g(t) = t / 2 for t < 1,
1 - 1 / (2 t) beyond, so samples uniform in s = (g(t) - g(near)) / (g(far) - g(near)) are linear
in t near the cameras and uniform in disparity (1 / t) far away.
"""
from __future__ import annotations

import torch

ORDERS = ("2", "inf")


def _norm(x: torch.Tensor, order: str) -> torch.Tensor:
    """x: [..., 3] -> [..., 1] its L2 or L-infinity norm."""
    if order == "inf":
        return x.abs().amax(-1, keepdim=True)
    if order == "2":
        return x.norm(dim=-1, keepdim=True)
    raise ValueError(f"contraction order must be {'|'.join(ORDERS)}, got {order!r}")


def contract(x: torch.Tensor, order: str = "inf") -> torch.Tensor:
    """x: [..., 3] points -> [..., 3] contracted points, |y| < 2 (in the chosen norm).

    Identity where |x| <= 1; continuous, with a continuous first derivative along rays through
    the origin, at |x| = 1.
    """
    n = _norm(x, order)
    # NOTE: clamp before dividing, so the branch not taken never makes a NaN (it would poison the
    # gradient of torch.where).
    nc = n.clamp(min=1.0)
    return torch.where(n <= 1.0, x, (2.0 - 1.0 / nc) * (x / nc))


def uncontract(y: torch.Tensor, order: str = "inf") -> torch.Tensor:
    """The inverse of :func:`contract`: y [..., 3] with |y| < 2 -> x [..., 3]."""
    m = _norm(y, order)
    mc = m.clamp(1.0, 2.0 - 1e-6)
    return torch.where(m <= 1.0, y, y / mc / (2.0 - mc))


def spacing(t: torch.Tensor) -> torch.Tensor:
    """g(t): t [...] >= 0 distances -> [...] in [0, 1): t / 2 below 1, 1 - 1 / (2 t) beyond."""
    return torch.where(t < 1.0, 0.5 * t, 1.0 - 0.5 / t.clamp(min=1.0))


def spacing_inv(g: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`spacing`: g [...] in [0, 1) -> t [...]."""
    return torch.where(g < 0.5, 2.0 * g, 0.5 / (1.0 - g.clamp(0.5, 1.0 - 1e-7)))


def s_to_t(s: torch.Tensor, near: torch.Tensor, far: torch.Tensor) -> torch.Tensor:
    """Normalised spacing s [n_rays, k] in [0, 1] -> distances t [n_rays, k] in [near, far].

    near, far: [n_rays, 1] (or broadcastable) distances along unit rays.
    """
    g0, g1 = spacing(near), spacing(far)
    return spacing_inv(g0 + s * (g1 - g0))


def t_to_s(t: torch.Tensor, near: torch.Tensor, far: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`s_to_t`: t [n_rays, k] -> s [n_rays, k]."""
    g0, g1 = spacing(near), spacing(far)
    return (spacing(t) - g0) / (g1 - g0)


__all__ = ["ORDERS", "contract", "uncontract", "spacing", "spacing_inv", "s_to_t", "t_to_s"]
