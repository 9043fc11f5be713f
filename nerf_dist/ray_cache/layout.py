"""The on-storage layout of a pixel cache (format 3) and :class:`RayCache`, which reads it.

See the package docstring (:mod:`nerf_dist.ray_cache`) for the layout itself.
"""
from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import torch

from .. import storage
from ..render_ops.rays import make_rays
from .colour import MODES, bytes_per_pixel, decode

CACHE_VERSION = 3  # 3: pixels (colours only) + cameras in the manifest; 2: rays + checksums
MANIFEST = "manifest.json"
PARTS = "parts"  # build-time folder of per-image-block part files (removed when committed)
_OLD = {1: "an older format without shard checksums",
        2: "an older format that stored rays, 54 bytes a pixel; this one stores colours"}


class RayCacheError(RuntimeError):
    """A ray cache is missing, incomplete, corrupt or of another version; the message names the URL."""


class ShardReadError(storage.StorageError, RayCacheError):
    """This rank could not read ray cache shard ``shard``: a storage error (retries spent), a
    missing file, or bytes that fail the manifest's size or sha256. ``url`` is the shard's
    (redacted) URL, also in the message.

    NOTE: a StorageError by type (this rank's own storage, never "a peer rank died"), and still
    a RayCacheError for callers that catch the cache's errors.
    """

    def __init__(self, message: str, shard: int | None = None, url: str | None = None):
        super().__init__(message)
        self.shard, self.url = shard, url

    def __reduce__(self):  # NOTE: keeps shard and url across pickling (spawned test workers)
        return type(self), (str(self), self.shard, self.url)


class _DamagedShard(ShardReadError):
    """A shard's bytes that fail the manifest's size or sha256 (read again when remote)."""


def shard_name(s: int) -> str:
    return f"shard-{s:05d}.bin"


def shard_sizes(n_pixels: int, n_shards: int) -> list[int]:
    """Pixels in each shard: shard s holds {i < n_pixels : i % n_shards == s}."""
    return [max(0, (n_pixels - s + n_shards - 1) // n_shards) for s in range(n_shards)]


def count_in(lo: int, hi: int, s: int, n_shards: int) -> int:
    """How many global indices i in [lo, hi) have i % n_shards == s."""
    def below(x):  # indices < x in shard s
        return max(0, (x - s + n_shards - 1) // n_shards)
    return below(hi) - below(lo)


def even_indices(n: int, count: int) -> torch.Tensor:
    """count [min(count, n)] int64 indices spread evenly over 0 .. n-1, first and last included,
    increasing, exact at any n (integer arithmetic: a float32 linspace rounds past 2^24)."""
    n, count = int(n), min(int(count), int(n))
    if count <= 0:
        return torch.zeros(0, dtype=torch.int64)
    if count == 1:
        return torch.zeros(1, dtype=torch.int64)
    k = torch.arange(count, dtype=torch.int64)
    # NOTE: floor(k (n-1) / (count-1)) without the product k (n-1) (it overflows int64 past
    # n ~ 2^63 / count): quotient and remainder of (n-1) / (count-1) taken apart.
    q, r = divmod(n - 1, count - 1)
    return k * q + torch.div(k * r, count - 1, rounding_mode="floor")


def rebuild_hint(url: str) -> str:
    """What to do about a damaged cache folder (ends every such error)."""
    return (f"delete the cache folder {storage.redact(url)} or run `nerf-dist cache --rebuild` "
            f"with the same config and overrides")


def pixel_crop(row: torch.Tensor, col: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """crop: [n] float16 = max(|u/W - 0.5|, |v/H - 0.5|) * 2 at pixel centres (u, v) = (col, row) + 0.5;
    a pixel lies in the centre crop of side fraction f iff crop < f."""
    u, v = col.float() + 0.5, row.float() + 0.5
    return (torch.maximum((u / W - 0.5).abs(), (v / H - 0.5).abs()) * 2).to(torch.float16)


class RayCache:
    """A complete pixel cache on storage (opened from its manifest).

    Attributes: url, key, n_shards, n_pixels (one training ray each), shard_sizes,
    checksums (per shard {"bytes", "sha256"}), H, W, n_images, mode (colour mode, see
    :mod:`.colour`), channels, K [n_images, 3, 3], c2w [n_images, 3, 4], distortion
    [n_images, 4] | None (float32 tensors), ndc ((H, W, focal) | None) and meta (near, far, aabb,
    background, ndc, ndc_focal, ndc_size, split, files).
    """

    def __init__(self, url: str, manifest: dict):
        self.url = url
        self.manifest = manifest
        self.key: str = manifest["key"]
        self.n_shards: int = int(manifest["n_shards"])
        self.n_pixels: int = int(manifest["n_rays"])  # NOTE: the manifest's name (format 3)
        self.shard_sizes: list[int] = [int(x) for x in manifest["shard_sizes"]]
        self.checksums: list[dict] = [dict(c) for c in manifest["shards"]]
        self.H: int = int(manifest["H"])
        self.W: int = int(manifest["W"])
        self.n_images: int = int(manifest["n_images"])
        self.meta: dict = dict(manifest["meta"])
        self.mode: str = manifest["colour"]["mode"]
        self.dtype, self.channels = MODES[self.mode]
        cams = manifest["cameras"]
        self.K = torch.tensor(cams["K"], dtype=torch.float32).reshape(-1, 3, 3)
        self.c2w = torch.tensor(cams["c2w"], dtype=torch.float32).reshape(-1, 3, 4)
        dist = cams.get("distortion")
        self.distortion = None if dist is None else torch.tensor(dist, dtype=torch.float32).reshape(-1, 4)
        self.ndc = ((int(self.meta["ndc_size"][0]), int(self.meta["ndc_size"][1]),
                     float(self.meta["ndc_focal"])) if self.meta["ndc"] else None)
        self.background = torch.tensor(self.meta["background"], dtype=torch.float32)
        self._on: dict = {}  # device -> (K, c2w, distortion) there

    @property
    def n_rays(self) -> int:
        """Deprecated alias of :attr:`n_pixels` (the cache stores pixels since format 3)."""
        warnings.warn("RayCache.n_rays is deprecated: use RayCache.n_pixels", DeprecationWarning,
                      stacklevel=2)
        return self.n_pixels

    @property
    def bytes_per_pixel(self) -> int:
        return bytes_per_pixel(self.mode)

    @property
    def total_bytes(self) -> int:
        return sum(int(c["bytes"]) for c in self.checksums)

    @classmethod
    def open(cls, url: str) -> RayCache:
        """Open the cache folder at url; RayCacheError naming the URL if it is not a complete,
        valid cache of this version (shards are verified when read, not here)."""
        path = storage.join(url, MANIFEST)
        where = storage.redact(path)
        try:
            text = storage.read_text(path)
        except FileNotFoundError as e:
            raise RayCacheError(f"ray cache manifest not found: {where} (cache not built or "
                                f"build interrupted)") from e
        except Exception as e:  # noqa: BLE001 - any backend error: name the URL
            raise RayCacheError(f"cannot read ray cache manifest {where}: {type(e).__name__}: {e}") from e
        try:
            manifest = json.loads(text)
        except json.JSONDecodeError as e:
            raise RayCacheError(f"corrupt ray cache manifest {where}: {e}; {rebuild_hint(url)}") from e
        problem = manifest_problem(manifest)
        if problem:
            raise RayCacheError(f"invalid ray cache manifest {where}: {problem}; {rebuild_hint(url)}")
        return cls(url, manifest)

    def shard_url(self, s: int) -> str:
        return storage.join(self.url, shard_name(s))

    def check_bytes(self, s: int, raw: bytes) -> None:
        """ShardReadError naming the shard unless raw has the size and sha256 the manifest records."""
        want = self.checksums[s]
        where = storage.redact(self.shard_url(s))
        if len(raw) != int(want["bytes"]):
            raise _DamagedShard(f"ray cache shard {where} is damaged: {len(raw)} bytes, the "
                                 f"manifest records {want['bytes']} (truncated or overwritten); "
                                 f"{rebuild_hint(self.url)}", s, where)
        got = hashlib.sha256(raw).hexdigest()
        if got != want["sha256"]:
            raise _DamagedShard(f"ray cache shard {where} is damaged: sha256 {got[:16]}... differs "
                                 f"from the manifest's {str(want['sha256'])[:16]}...; "
                                 f"{rebuild_hint(self.url)}", s, where)

    def read_bytes(self, s: int, verify: bool = True) -> bytearray:
        """Shard s's bytes, checked against the manifest's size and sha256 (verify).

        Transient storage errors are retried inside :func:`storage.read_bytes`. A remote read that
        arrives short or with another checksum (a connection cut mid-body, a proxy's truncated
        answer) is read again by :func:`storage.retry` (storage.retries more times, storage.backoff_s
        doubling); then ShardReadError names the URL. Local files are read once: their damage is
        not transient. Never returns bytes that failed the check.
        """
        if not 0 <= s < self.n_shards:
            raise IndexError(f"shard {s} out of range [0, {self.n_shards}) in {storage.redact(self.url)}")
        url = self.shard_url(s)
        where = storage.redact(url)

        def once():
            try:
                raw = storage.read_bytes(url, writable=True)
            except FileNotFoundError as e:
                raise ShardReadError(f"ray cache shard not found: {where} (the cache is "
                                     f"incomplete); {rebuild_hint(self.url)}", s, where) from e
            except Exception as e:  # noqa: BLE001 - storage error (retries spent): name the URL
                raise ShardReadError(f"cannot read ray cache shard {where}: {type(e).__name__}: "
                                     f"{e}", s, where) from e
            if verify:
                self.check_bytes(s, raw)
            return raw

        def gave_up(e, what, url, attempts):
            more = f" (read {attempts} times)" if attempts > 1 else ""
            return ShardReadError(f"{e}{more}", s, where)

        def waiting(e, what, url, delay, attempt, attempts):
            return (f"{e.args[0].split('; ')[0]}; reading it again in {delay:.1f} s (attempt "
                    f"{attempt} of {attempts})")
        return storage.retry("read ray cache shard", url, once,
                             retry_if=lambda e: isinstance(e, _DamagedShard),
                             attempts=None if storage.is_url(url) and verify else 1,
                             gave_up=gave_up, waiting=waiting)

    def read_shard(self, s: int, verify: bool = True) -> torch.Tensor:
        """Shard s's colours: [shard_sizes[s], channels] uint8, or int16 holding the bits of
        uint16 (rgb16; see :mod:`.colour`), verified (see :meth:`read_bytes`). The tensor shares
        the bytes read (no copy). :meth:`rgb` turns them into colours."""
        raw = self.read_bytes(s, verify)
        n = self.shard_sizes[s]
        if len(raw) != n * self.bytes_per_pixel:
            where = storage.redact(self.shard_url(s))
            raise ShardReadError(f"corrupt ray cache shard {where}: {len(raw)} bytes for {n} "
                                 f"pixels of {self.bytes_per_pixel} bytes; "
                                 f"{rebuild_hint(self.url)}", s, where)
        # NOTE: little-endian on disk ("<u2"); astype is a no-op on little-endian machines, and
        # torch then shares the bytearray's memory. uint16 travels as int16 bits (torch's uint16
        # lacks most kernels, e.g. index_put): :func:`.colour.decode` masks them back.
        arr = np.frombuffer(raw, dtype=self.dtype.newbyteorder("<")).astype(self.dtype, copy=False)
        if arr.dtype == np.uint16:
            arr = arr.view(np.int16)
        return torch.from_numpy(arr.reshape(n, self.channels))

    def shard_bytes(self, s: int) -> int:
        """Bytes of shard s's colours in memory (= on disk)."""
        return self.shard_sizes[s] * self.bytes_per_pixel

    # ------------------------------------------------------------------ pixels -> training data
    def rgb(self, q: torch.Tensor) -> torch.Tensor:
        """Stored colours q [n, channels] -> rgb [n, 3] float32 (CPU), as the scene reader gave them."""
        return decode(q, self.mode, self.background)

    def alpha(self, q: torch.Tensor) -> torch.Tensor:
        """Stored colours q [n, channels] -> alpha [n] float32 (CPU): q's alpha channel / 255 for
        rgba8, else ones."""
        if self.mode == "rgba8":
            return q[:, 3].to(torch.float32) / 255.0
        return torch.ones(q.shape[0], dtype=torch.float32)

    def rays(self, index: torch.Tensor) -> dict:
        """Rays of global pixel indices index [n] int64 (i = image*H*W + row*W + col), on
        index's device: rays_o, rays_d, viewdirs [n, 3] by :func:`nerf_dist.render_ops.rays.make_rays`."""
        dev = index.device
        if dev not in self._on:
            self._on[dev] = (self.K.to(dev), self.c2w.to(dev),
                             None if self.distortion is None else self.distortion.to(dev))
        K, c2w, dist = self._on[dev]
        HW = self.H * self.W
        img = torch.div(index, HW, rounding_mode="floor")
        pix = index - img * HW
        row = torch.div(pix, self.W, rounding_mode="floor")
        col = pix - row * self.W
        uv = torch.stack([col.float() + 0.5, row.float() + 0.5], -1)
        return make_rays(uv, K[img], c2w[img], None if dist is None else dist[img], self.ndc)

    def crop(self, index: torch.Tensor) -> torch.Tensor:
        """crop [n] float16 of global pixel indices (see :func:`pixel_crop`)."""
        pix = index % (self.H * self.W)
        return pixel_crop(pix // self.W, pix % self.W, self.H, self.W)

    def __repr__(self) -> str:
        return (f"RayCache({storage.redact(self.url)!r}, n_shards={self.n_shards}, "
                f"n_pixels={self.n_pixels}, images={self.n_images}x{self.H}x{self.W}, {self.mode})")


def manifest_problem(m) -> str:
    """Why a parsed manifest is unusable ('' when it is fine)."""
    if not isinstance(m, dict):
        return "not a JSON object"
    if m.get("version") != CACHE_VERSION:
        old = f" ({_OLD[m.get('version')]})" if m.get("version") in _OLD else ""
        return (f"format version {m.get('version')!r}{old}, this code reads version "
                f"{CACHE_VERSION}")
    for k in ("key", "n_shards", "n_rays", "shard_sizes", "shards", "H", "W", "n_images", "meta",
              "colour", "cameras"):
        if k not in m:
            return f"missing field '{k}'"
    try:
        if list(m["shard_sizes"]) != shard_sizes(int(m["n_rays"]), int(m["n_shards"])):
            return "shard_sizes do not match n_rays and n_shards"
        if int(m["n_rays"]) != int(m["n_images"]) * int(m["H"]) * int(m["W"]):
            return "n_rays is not n_images * H * W"
        sums = m["shards"]
        if len(sums) != int(m["n_shards"]) or not all(
                isinstance(c, dict) and isinstance(c.get("bytes"), int)
                and isinstance(c.get("sha256"), str) and len(c["sha256"]) == 64 for c in sums):
            return "'shards' must hold one {bytes, sha256} entry per shard"
        if m["colour"].get("mode") not in MODES:
            return f"unknown colour mode {m['colour'].get('mode')!r}"
        n = int(m["n_images"])
        cams = m["cameras"]
        if np.shape(cams["K"]) != (n, 3, 3) or np.shape(cams["c2w"]) != (n, 3, 4) or (
                cams.get("distortion") is not None and np.shape(cams["distortion"]) != (n, 4)):
            return "cameras must hold K [n, 3, 3], c2w [n, 3, 4] and distortion [n, 4] or null"
    except (TypeError, ValueError, KeyError, AttributeError):
        return "bad n_rays / n_shards / shard_sizes / shards / colour / cameras"
    return ""
