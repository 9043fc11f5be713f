"""An exported mesh seen from a split's camera, beside the radiance field rendered from it.

    python bench/mesh_view.py RUN_DIR MESH.ply OUT.png [--split val] [--view 0] [--size 256]
                              [--frame original|scene]

Writes OUT.png: three panels side by side, the longer side of each --size pixels (the camera's
aspect kept): the field's rgb (the tiled renderer, :func:`nerf_dist.renderer.core.render_frames`),
the mesh in its vertex colours and the mesh in grey, both shaded |n . view| from a headlight
(:func:`rasterize`, a numpy z-buffer: no OpenGL). MESH.ply is what `nerf-dist export mesh`
writes, in the scene's original frame (--frame original, moved back to the scene frame with the
inverse of :func:`nerf_dist.export.frame.scene_to_original`) or in the scene frame (--frame
scene). Prints the camera, the counts, how well the two line up (silhouette IoU of the mesh
against field acc > 0.5, median |depth difference| where both cover a pixel) and the seconds.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

BUDGET = 1 << 20
"""Candidate pixels (bounding boxes) tested per batch of triangles (~15 arrays of this size)."""


def project(verts: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """verts [n, 3] world -> (uv [n, 2] pixel coordinates, d [n] depth in front of the camera).

    The camera is the renderer's (:mod:`nerf_dist.render_ops.rays`): OpenGL axes (x right, y up,
    looking down -z), K in OpenCV image axes (y down), pixel centres at +0.5.
    """
    R, t = np.asarray(c2w, np.float64)[:3, :3], np.asarray(c2w, np.float64)[:3, 3]
    pc = (np.asarray(verts, np.float64) - t) @ R            # world -> camera: R^T (p - t)
    d = -pc[:, 2]
    # NOTE: camera (x, y, -d) is image (x / d, -y / d, 1): the ray function's y flip undone.
    img = np.stack([pc[:, 0], -pc[:, 1], d], 1) / np.where(np.abs(d) > 1e-12, d, 1e-12)[:, None]
    uv = img @ np.asarray(K, np.float64)[:2].T
    return uv, d


def rasterize(verts: np.ndarray, faces: np.ndarray, colors: np.ndarray | None,
              normals: np.ndarray | None, K: np.ndarray, c2w: np.ndarray, H: int, W: int,
              near: float = 1e-3, shade: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Triangles -> (rgb [H, W, 3] float in [0, 1], depth [H, W], mask [H, W] bool).

    verts [n, 3], faces [f, 3] int, colors [n, 3] uint8 (None: grey), normals [n, 3] (None:
    area-weighted face normals), K [3, 3], c2w [3, 4] camera-to-world. A pixel is covered when
    its centre lies in a triangle; the nearest one wins. rgb is the perspective-correct vertex
    colour times 0.35 + 0.65 |n . view| (a headlight), 1 (white) where uncovered; depth is the
    distance along the pixel's ray (as the field's depth), inf where uncovered. shade=False:
    the vertex colour alone (to compare with the field's colours).
    """
    verts = np.asarray(verts, np.float64)
    faces = np.asarray(faces, np.int64).reshape(-1, 3)
    if normals is None:
        from nerf_dist.export.mesh.surface import face_normals  # NOTE: lazy: imports torch
        normals = face_normals(verts, faces)
    uv, d = project(verts, K, c2w)
    # NOTE: a triangle reaching behind the near plane is dropped, not clipped (a viewer's
    # shortcut: the split's cameras sit outside the object).
    tri_uv, tri_d = uv[faces], d[faces]                     # [f, 3, 2], [f, 3]
    (u0, v0), (u1, v1), (u2, v2) = (tri_uv[:, k].T for k in range(3))
    area = (u1 - u0) * (v2 - v0) - (u2 - u0) * (v1 - v0)
    lo = np.ceil(tri_uv.min(1) - 0.5).astype(np.int64)      # first pixel whose centre >= min
    hi = np.floor(tri_uv.max(1) - 0.5).astype(np.int64)
    lo, hi = np.maximum(lo, 0), np.minimum(hi, [W - 1, H - 1])
    ok = (tri_d > near).all(1) & (np.abs(area) > 1e-12) & (hi >= lo).all(1)
    idx = np.nonzero(ok)[0]
    bw, bh = (hi[idx] - lo[idx] + 1).T
    counts = bw * bh
    ends = np.cumsum(counts)
    frags = []                                              # (pixel, 1/d, face, w0, w1, w2)
    start = 0
    while start < len(idx):
        base = ends[start - 1] if start else 0
        stop = max(int(np.searchsorted(ends, base + BUDGET, side="right")), start + 1)
        f, c = idx[start:stop], counts[start:stop]
        rep = np.repeat(np.arange(len(f)), c)
        off = np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)
        px = lo[f, 0][rep] + off % bw[start:stop][rep]
        py = lo[f, 1][rep] + off // bw[start:stop][rep]
        fr = f[rep]
        x, y = px + 0.5, py + 0.5
        w0 = ((u1[fr] - x) * (v2[fr] - y) - (u2[fr] - x) * (v1[fr] - y)) / area[fr]
        w1 = ((u2[fr] - x) * (v0[fr] - y) - (u0[fr] - x) * (v2[fr] - y)) / area[fr]
        w2 = 1.0 - w0 - w1
        # NOTE: a small tolerance, so a centre on an edge shared by two triangles is never lost.
        inside = (w0 >= -1e-9) & (w1 >= -1e-9) & (w2 >= -1e-9)
        fr, w = fr[inside], np.stack([w0, w1, w2], 1)[inside]
        inv_d = (w / tri_d[fr]).sum(1)                      # 1/d is linear in screen space
        frags.append((py[inside] * W + px[inside], inv_d, fr, w))
        start = stop
    rgb, depth = np.ones((H * W, 3)), np.full(H * W, np.inf)
    mask = np.zeros(H * W, bool)
    if frags:
        pix, inv_d, fr, w = (np.concatenate(a) for a in zip(*frags))
        order = np.lexsort((-inv_d, pix))                   # per pixel, the nearest first
        first = order[np.r_[True, pix[order][1:] != pix[order][:-1]]]
        pix, fr = pix[first], fr[first]
        b = w[first] / tri_d[fr] / inv_d[first][:, None]    # perspective-correct barycentrics
        tri = faces[fr]
        p = (b[:, :, None] * verts[tri]).sum(1)
        n = (b[:, :, None] * np.asarray(normals, np.float64)[tri]).sum(1)
        eye = np.asarray(c2w, np.float64)[:3, 3]
        to_eye = eye - p
        dist = np.linalg.norm(to_eye, axis=1)
        cos = np.abs((n * to_eye).sum(1)) / np.maximum(np.linalg.norm(n, axis=1) * dist, 1e-30)
        col = (np.full((len(pix), 3), 0.8) if colors is None else
               (b[:, :, None] * (np.asarray(colors, np.float64)[tri] / 255.0)).sum(1))
        rgb[pix] = col * (0.35 + 0.65 * cos)[:, None] if shade else col
        depth[pix], mask[pix] = dist, True
    return rgb.reshape(H, W, 3), depth.reshape(H, W), mask.reshape(H, W)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("mesh")
    ap.add_argument("out")
    ap.add_argument("--split", default="val", choices=("train", "val", "test"))
    ap.add_argument("--view", type=int, default=0)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frame", default="original", choices=("original", "scene"))
    a = ap.parse_args(argv)
    import imageio.v2 as imageio  # NOTE: lazy: rasterize (and its test) needs numpy only
    from nerf_dist.export.cameras import refined_c2w  # NOTE: lazy: torch, as above
    from nerf_dist.export.frame import move_points, scene_to_original  # NOTE: lazy: as above
    from nerf_dist.export.ply import read_ply  # NOTE: lazy: as above
    from nerf_dist.renderer.core import RenderSetup, render_frames  # NOTE: lazy: torch
    from nerf_dist.renderer.paths import split_path  # NOTE: lazy: as above
    from nerf_dist.run_dir import load_model  # NOTE: lazy: torch and the model kinds
    from nerf_dist.scenes import open_scene  # NOTE: lazy: the scene readers

    t0 = time.perf_counter()
    loaded = load_model(a.run_dir)
    cfg, model = loaded.cfg, loaded.model.eval()
    scene = open_scene(cfg.data, a.split)
    if not 0 <= a.view < scene.n:
        raise SystemExit(f"--view {a.view}: the {a.split} split has {scene.n} view(s)")
    cams = split_path(scene)
    cams.c2w, _ = refined_c2w(model, cams.c2w, a.split)
    s = a.size / max(cams.W, cams.H)
    cams = cams.resized(max(1, round(cams.W * s)), max(1, round(cams.H * s)))
    # NOTE: the mesh is drawn through a pinhole, so the field is rendered without the lens
    # distortion too: both panels then show the same undistorted view.
    cams.distortion = None
    setup = RenderSetup.from_scene(model, scene, cfg.model.chunk, "cpu")
    t1 = time.perf_counter()
    (_, field), = list(render_frames(setup, cams, [a.view], 0, 1, cfg.render.tile))
    t2 = time.perf_counter()
    ply = read_ply(a.mesh)
    verts, normals = ply["verts"], ply["normals"]
    if a.frame == "original":
        verts, normals = move_points(np.linalg.inv(scene_to_original(loaded)), verts, normals)
    K, c2w = cams.K[a.view].double().numpy(), cams.c2w[a.view].double().numpy()
    t3 = time.perf_counter()
    rgb, depth, mask = rasterize(verts, ply["faces"], ply["colors"], normals, K, c2w,
                                 cams.H, cams.W)
    grey, _, _ = rasterize(verts, ply["faces"], None, normals, K, c2w, cams.H, cams.W)
    flat, _, _ = rasterize(verts, ply["faces"], ply["colors"], normals, K, c2w, cams.H, cams.W,
                           shade=False)
    t4 = time.perf_counter()
    f_rgb, f_depth = field["rgb"].numpy(), field["depth"].numpy()
    f_mask = field["acc"].numpy() > 0.5
    iou = (mask & f_mask).sum() / max((mask | f_mask).sum(), 1)
    both = mask & f_mask
    # NOTE: the field's depth is the expected distance over the opacity (NDC t for forward-
    # facing scenes, where a metric comparison means nothing).
    f_dist = f_depth / np.maximum(field["acc"].numpy(), 1e-6)
    ddepth = (float(np.median(np.abs(depth[both] - f_dist[both]))) if both.any() and not setup.ndc
              else float("nan"))
    panels = np.concatenate([f_rgb, rgb, grey], 1)
    imageio.imwrite(a.out, (np.clip(panels, 0, 1) * 255 + 0.5).astype(np.uint8))
    print(f"panels (left to right): field rgb (step {loaded.step}) | mesh, vertex colours, "
          f"headlight-shaded | mesh, grey, headlight-shaded  -> {a.out}")
    print(f"camera: {a.split} view {a.view} of {scene.n}, {cams.W}x{cams.H}, fx {K[0, 0]:.2f} "
          f"fy {K[1, 1]:.2f} cx {K[0, 2]:.2f} cy {K[1, 2]:.2f}, centre "
          f"{np.round(c2w[:, 3], 3).tolist()}; mesh frame --frame {a.frame}")
    print(f"mesh: {len(verts)} vertices, {len(ply['faces'])} faces; pixels: mesh {mask.sum()}, "
          f"field acc>0.5 {f_mask.sum()}, silhouette IoU {iou:.3f}, median |depth diff| "
          f"{ddepth:.4f} over {both.sum()} px, mean |colour difference| (unshaded vertex "
          f"colours against the field) {float(np.abs(flat - f_rgb)[both].mean()):.4f}")
    print(f"seconds: load {t1 - t0:.1f}, field render {t2 - t1:.1f}, read mesh {t3 - t2:.1f}, "
          f"rasterize x3 {t4 - t3:.1f}")


if __name__ == "__main__":
    main()
