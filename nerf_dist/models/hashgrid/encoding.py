"""The multiresolution hash-grid encoding (instant-ngp), in pure PyTorch."""
from __future__ import annotations

import math

import torch
from torch import nn

# NOTE: instant-ngp's spatial hash primes (the first is 1 so that x alone is not scrambled).
_HASH_PRIMES = (1, 2654435761, 805459861)


class HashGridEncoding(nn.Module):
    """Multiresolution hash encoding (Mueller et al. 2022, instant-ngp), vectorised pure PyTorch.

    x: [n, 3] in [0, 1]^3 -> features [n, n_levels * n_features] (level-major: level l occupies
    columns [l*F, (l+1)*F)). Inputs outside [0, 1] are clamped.

    Level l has resolution N_l = floor(base_res * b^l), b = exp((ln max_res - ln base_res)/(L-1)):
    the unit cube is cut into N_l^3 cells with (N_l + 1)^3 vertices at x = (i, j, k) / N_l. Each
    vertex owns an F-vector in table[l]: levels whose vertices fit in the table (dense levels) index
    it directly (i + j (N_l+1) + k (N_l+1)^2); finer levels use the spatial hash
    (i * 1 XOR j * 2654435761 XOR k * 805459861) mod 2^T. Features are trilinearly interpolated
    from the cell's 8 corners.

    Parameters: table [n_levels, 2^log2_size, n_features], init uniform(-1e-4, 1e-4).
    """

    def __init__(self, n_levels: int = 16, n_features: int = 2, log2_size: int = 19,
                 base_res: int = 16, max_res: int = 2048):
        super().__init__()
        self.n_levels, self.n_features, self.log2_size = n_levels, n_features, log2_size
        self.size = 2 ** log2_size
        b = math.exp((math.log(max_res) - math.log(base_res)) / (n_levels - 1)) if n_levels > 1 else 1.0
        self.growth = b
        # NOTE: a tiny epsilon keeps floor() from losing a level to rounding (e.g. 16 * 2^1 -> 31.99).
        self.resolutions = [int(math.floor(base_res * b ** lv + 1e-6)) for lv in range(n_levels)]
        self.dense = [(r + 1) ** 3 <= self.size for r in self.resolutions]
        # Levels grow, so the dense ones come first: levels [0, n_dense) dense, the rest hashed.
        self.n_dense = sum(self.dense)
        self.table = nn.Parameter(
            torch.empty(n_levels, self.size, n_features).uniform_(-1e-4, 1e-4))
        res = torch.tensor(self.resolutions, dtype=torch.float32)
        self.register_buffer("res_f", res, persistent=False)                       # [L]
        strides = torch.stack([torch.ones_like(res), res + 1, (res + 1) ** 2], -1)
        self.register_buffer("strides", strides.long(), persistent=False)         # [L, 3]
        # Row offset of each corner of a dense level, corner c = 4*ox + 2*oy + oz: [n_dense, 8].
        o = torch.tensor([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)])
        self.register_buffer("dense_off", (self.strides[:self.n_dense, None, :] * o).sum(-1),
                             persistent=False)
        self.register_buffer("level_offset", torch.arange(n_levels) * self.size, persistent=False)

    @property
    def out_dim(self) -> int:
        return self.n_levels * self.n_features

    def vertex_index(self, ijk: torch.Tensor) -> torch.Tensor:
        """Table row of integer vertices. ijk: [..., L, 3] int64 (one vertex per level) -> [..., L]."""
        d = self.n_dense
        dense = (ijk[..., :d, :] * self.strides[:d]).sum(-1)
        h = ijk[..., d:, :]
        hashed = (h[..., 0] * _HASH_PRIMES[0]) ^ (h[..., 1] * _HASH_PRIMES[1]) ^ (h[..., 2] * _HASH_PRIMES[2])
        return torch.cat([dense, hashed & (self.size - 1)], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx, wc = self.corners(x)
        L, Fdim = self.n_levels, self.n_features
        out = _InterpGather.apply(idx, wc, self.table.view(L * self.size, Fdim))  # [n, L, F]
        return out.reshape(x.shape[0], L * Fdim)

    def encode_detached(self, x: torch.Tensor):
        """No-grad encoding that can be re-attached to the table later (see :meth:`attach`).

        x: [n, 3] -> (features [n, L*F] without grad, idx [n, L, 8] table rows, wc [n, L, 8]
        corner weights). Lets a caller evaluate many points once and back-propagate through a
        subset of them without gathering from the table twice.
        """
        idx, wc = self.corners(x)
        L, Fdim = self.n_levels, self.n_features
        with torch.no_grad():
            out = _InterpGather.forward(None, idx, wc, self.table.view(L * self.size, Fdim))
        return out.reshape(x.shape[0], L * Fdim), idx, wc

    def attach(self, feats: torch.Tensor, idx: torch.Tensor, wc: torch.Tensor) -> torch.Tensor:
        """feats [m, L*F] from encode_detached (rows subset with their idx, wc) -> the same values,
        now differentiable with respect to the table."""
        return _Attach.apply(feats, idx, wc, self.table.view(self.n_levels * self.size,
                                                             self.n_features))

    def corners(self, x: torch.Tensor):
        """x: [n, 3] -> idx [n, L, 8] int64 rows of the flat [L * 2^T, F] table, wc [n, L, 8]
        trilinear weights of the 8 corners (corner c = 4 ox + 2 oy + oz)."""
        n, L, d = x.shape[0], self.n_levels, self.n_dense
        # NOTE: interpolation stays in fp32 under autocast (bf16 would quantise the cell fraction).
        pos = x.float().clamp(0.0, 1.0)[:, None, :] * self.res_f[:, None]         # [n, L, 3]
        i0 = torch.minimum(pos.floor(), (self.res_f - 1)[:, None])                 # keep x=1 in range
        w1 = pos - i0                                                              # [n, L, 3]
        i0 = i0.long()
        # NOTE: the [n, L, 8] tensors dominate memory traffic, so each is written once: corner
        # indices are built per axis on [n, L, 2] tensors and broadcast (corner c = 4 ox + 2 oy + oz)
        # straight into one preallocated tensor; the level offset l * 2^T shares no bits with a
        # masked hash, so it is folded into the x term before the XORs.
        idx = torch.empty(n, L, 8, dtype=torch.long, device=x.device)
        if d:
            base = (i0[:, :d] * self.strides[:d]).sum(-1) + self.level_offset[:d]    # [n, d]
            torch.add(base[..., None], self.dense_off, out=idx[:, :d])
        if d < L:
            h = i0[:, d:]                                                          # [n, L-d, 3]
            m = self.size - 1
            hx = ((torch.stack([h[..., 0], h[..., 0] + 1], -1) * _HASH_PRIMES[0]) & m) \
                + self.level_offset[d:, None]                                      # [n, L-d, 2]
            hy = (torch.stack([h[..., 1], h[..., 1] + 1], -1) * _HASH_PRIMES[1]) & m
            hz = (torch.stack([h[..., 2], h[..., 2] + 1], -1) * _HASH_PRIMES[2]) & m
            hxy = hx[..., :, None] ^ hy[..., None, :]                              # [n, L-d, 2, 2]
            torch.bitwise_xor(hxy[..., None], hz[..., None, None, :],
                              out=idx[:, d:].view(n, L - d, 2, 2, 2))
        w0 = 1.0 - w1
        wx = torch.stack([w0[..., 0], w1[..., 0]], -1)
        wy = torch.stack([w0[..., 1], w1[..., 1]], -1)
        wz = torch.stack([w0[..., 2], w1[..., 2]], -1)
        wc = ((wx[..., :, None] * wy[..., None, :])[..., None] * wz[..., None, None, :]).reshape(n, L, 8)
        return idx, wc


class _InterpGather(torch.autograd.Function):
    """out[n, l] = sum_c wc[n, l, c] * table[idx[n, l, c]]: gather 8 corners and interpolate.

    idx (int64), wc: [n, L, 8]; table: [rows, F] -> out [n, L, F]. Gradient flows to the table,
    and to wc (so to the sample positions) only when wc requires it (camera pose refinement).
    NOTE: on CPU this op dominates a training step. Gathering a 2-feature row as one int64 word is
    ~3x faster than index_select on [rows, 2], and one flat scatter_add_ per feature is ~5x faster
    than autograd's embedding/index_select backward.
    """

    @staticmethod
    def forward(ctx, idx, wc, table):
        rows, Fdim = table.shape
        flat = idx.reshape(-1)
        word = {1: torch.int32, 2: torch.int64}.get(Fdim * table.element_size() // 4)
        if word is not None and table.element_size() == 4 and table.is_contiguous():
            feats = table.view(-1).view(word).index_select(0, flat).view(table.dtype)
        else:
            feats = table.index_select(0, flat)
        feats = feats.view(*idx.shape, Fdim)                                       # [n, L, 8, F]
        if ctx is not None:
            # NOTE: the table is saved (no copy) only for wc's gradient, which re-gathers the rows.
            ctx.save_for_backward(idx, wc, table if ctx.needs_input_grad[1] else None)
            ctx.table_shape = (rows, Fdim)
            ctx.table_dtype = table.dtype
        # NOTE: a batch of [1, 8] x [8, F] products is ~4x faster than a broadcast multiply + sum.
        n, L = idx.shape[:2]
        with torch.autocast(device_type=idx.device.type, enabled=False):    # stay fp32
            return torch.bmm(wc.view(n * L, 1, 8), feats.view(n * L, 8, Fdim)).view(n, L, Fdim)

    @staticmethod
    def backward(ctx, grad_out):
        idx, wc, table = ctx.saved_tensors
        grad_wc = None
        if ctx.needs_input_grad[1]:
            rows = table.index_select(0, idx.reshape(-1)).view(*idx.shape, -1)     # [n, L, 8, F]
            grad_wc = (rows.float() * grad_out.float()[:, :, None, :]).sum(-1).to(wc.dtype)
        grad_table = (_scatter_grad(grad_out, idx, wc, ctx.table_shape, ctx.table_dtype)
                      if ctx.needs_input_grad[2] else None)
        return None, grad_wc, grad_table


def _scatter_grad(grad_out, idx, wc, table_shape, table_dtype):
    """Table gradient of out[n, l] = sum_c wc[n, l, c] table[idx[n, l, c]]; grad_out: [n, L, F]."""
    rows, Fdim = table_shape
    flat = idx.reshape(-1)
    grad_out = grad_out.float().reshape(idx.shape[0], idx.shape[1], Fdim)
    cols = []
    for f in range(Fdim):
        g = (grad_out[:, :, f, None] * wc).reshape(-1)                            # [n * L * 8]
        cols.append(torch.zeros(rows, dtype=g.dtype, device=g.device).scatter_add_(0, flat, g))
    return torch.stack(cols, 1).to(table_dtype)


class _Attach(torch.autograd.Function):
    """Identity on precomputed features [m, L*F] whose backward scatters into the table."""

    @staticmethod
    def forward(ctx, feats, idx, wc, table):
        ctx.save_for_backward(idx, wc)
        ctx.table_shape, ctx.table_dtype = tuple(table.shape), table.dtype
        return feats.clone()

    @staticmethod
    def backward(ctx, grad_out):
        idx, wc = ctx.saved_tensors
        return None, None, None, _scatter_grad(grad_out, idx, wc, ctx.table_shape, ctx.table_dtype)
