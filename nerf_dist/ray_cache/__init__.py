"""Training pixels -> fixed-size shard files + a manifest, on any storage URL (format 3).

The cache stores pixels, not rays: each pixel's colour, and each image's camera once. Rays are
made for each batch by :func:`nerf_dist.render_ops.rays.make_rays` (the ray function rendering uses too) on
the training device (:meth:`RayCache.rays`).

Layout of one cache (``{base_url}/{key[:16]}/``)::

    shard-00000.bin ... shard-{S-1:05d}.bin   raw colours, [n_s, C] little-endian uint8/uint16
    manifest.json                             written last: its presence marks the cache complete

Global pixel index ``i = image * H*W + row*W + col``. Shard ``s`` of ``S`` holds the pixels
``{i : i % S == s}`` in increasing ``i`` (position ``p`` of shard ``s`` is pixel ``s + p*S``), so a
pixel's index is implicit, every shard covers every image evenly, and shard sizes differ by at
most one. Colours are stored in the cache's colour mode (:mod:`.colour`): rgb8 (3 bytes a pixel,
bit-exact for 8-bit images), rgba8 (4 bytes, bit-exact for 8-bit images with alpha, composited
when batches are made) or rgb16 (6 bytes: 16-bit sources exactly, downscaled images within
1/131070). The centre-crop measure of a pixel follows from its index (:func:`pixel_crop`).

manifest.json holds: version (3), key, n_shards, n_rays (pixels), shard_sizes, per shard
{bytes, sha256} (computed before writing, checked on every read), H, W, n_images, colour {mode,
dtype, channels, bytes_per_pixel}, cameras {K [n, 3, 3], c2w [n, 3, 4], distortion [n, 4] | null}
(float32 values, exact in JSON), meta {near, far, aabb, background, ndc, ndc_focal, ndc_size,
split, files} and the key's inputs. While a build runs, ``parts/`` holds its part files
(:mod:`.build`).

Older formats (1: no checksums; 2: 54-byte rays) have other keys, hence other folders: they are
never read, a new cache is built beside them and the build names them so they can be deleted.
A manifest of another version inside this folder is reported and rebuilt.
"""
from .build import (InMemory, build_shards, ensure_cache, image_block, verify_shards, write_manifest,
                    write_parts, write_shards)
from .colour import MODES, bytes_per_pixel
from .key import cache_key, key_inputs
from .layout import (CACHE_VERSION, MANIFEST, PARTS, RayCache, RayCacheError, ShardReadError,
                     count_in, even_indices, pixel_crop, rebuild_hint, shard_name, shard_sizes)

__all__ = ["CACHE_VERSION", "MANIFEST", "PARTS", "MODES", "RayCache", "RayCacheError",
           "ShardReadError", "InMemory", "build_shards", "bytes_per_pixel", "cache_key",
           "count_in", "ensure_cache", "even_indices", "image_block", "key_inputs", "pixel_crop", "rebuild_hint",
           "shard_name", "shard_sizes", "verify_shards", "write_manifest", "write_parts",
           "write_shards"]
