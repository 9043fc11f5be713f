"""Training and rendering speed of the paper configuration; time to a PSNR on lego at 100x100.

    python bench/train_bench.py speed [--precision fp32 bf16] [--steps 5]
    python bench/train_bench.py lego [--precision bf16] [--minutes 10] [--target 20]
    python bench/train_bench.py lego --fast [--minutes 10]    # sizes of configs/lego_fast_cpu.yaml

`speed`: rays/s of one training step (8x256 MLP, 64 coarse + 128 importance samples, 1024 rays a
batch, coarse + fine loss, Adam) on random rays through the lego box, and of rendering one
32x32 frame through the renderer (as `nerf-dist render` does; no grad), on the current device. `lego`: trains on ../shared/data/lego downscaled to 100x100 (downscale=8) and
prints held-out val PSNR over time; with `--fast`, the fast path with the CPU sizes of
configs/lego_fast_cpu.yaml (model, batch, learning-rate schedule; read from the file, see
bench/cpu_sizes.py), in its precision unless --precision says otherwise. Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import time

import torch

from common import LEGO, timed_training
from cpu_sizes import lego_fast_cpu, overrides
from nerf_dist.config import ModelConfig
from nerf_dist.models.vanilla.model import VanillaNeRF
from nerf_dist.renderer.core import RenderSetup, render_frames
from nerf_dist.renderer.paths import CameraPath
from nerf_dist.train import make_adam


# NOTE: the fast path's CPU sizes come from configs/lego_fast_cpu.yaml (bench/cpu_sizes.py).
FAST_CPU = overrides(lego_fast_cpu())


def speed(precision: str, steps: int, device: str, n_rays: int = 1024, compile: bool = False) -> dict:
    torch.manual_seed(0)
    dev = torch.device(device)
    model = VanillaNeRF(ModelConfig(precision=precision, compile=compile)).to(dev)
    opt = make_adam(model.parameters(), 5e-4, 1e-8, 0.0)  # as the trainer does
    g = torch.Generator().manual_seed(0)
    rays_o = torch.tensor([0.0, 0.0, 4.0], device=dev).expand(n_rays, 3).contiguous()
    rays_d = torch.nn.functional.normalize(
        torch.randn(n_rays, 3, generator=g).mul(0.15) + torch.tensor([0.0, 0.0, -1.0]), dim=-1).to(dev)
    target = torch.rand(n_rays, 3, generator=g).to(dev)
    bg = torch.ones(3, device=dev)

    def step():
        out = model(rays_o, rays_d, rays_d, 2.0, 6.0, train=True, generator=g, background=bg)
        loss = ((out["rgb"] - target) ** 2).mean() + ((out["rgb_coarse"] - target) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    train_rps = steps * n_rays / (time.perf_counter() - t0)
    # NOTE: a side x side frame from the same camera position; the focal length spreads the
    # pixel rays over about the training rays' cone (uniform +-0.26 ~ a normal of std 0.15).
    side = max(1, int(n_rays ** 0.5))
    focal = side / (2 * 0.26)
    cams = CameraPath(torch.tensor([[[focal, 0.0, side / 2], [0.0, focal, side / 2], [0.0, 0.0, 1.0]]]),
                      torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 4.0]]]),
                      side, side, "bench")
    setup = RenderSetup(model, 2.0, 6.0, bg, chunk=4096, device=dev)

    def render():
        for _ in render_frames(setup, cams, [0], tile=64, balance="pixels"):
            pass

    render()  # warm-up
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        render()
    sync()
    render_rps = steps * side * side / (time.perf_counter() - t0)
    model.train()
    return {"train_rays_per_s": train_rps, "render_rays_per_s": render_rps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["speed", "lego"])
    ap.add_argument("--precision", nargs="+", default=None,
                    help="default: fp32 bf16 (speed, vanilla lego); the config's (lego --fast)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--target", type=float, default=20.0, help="PSNR target (dB) for time-to-PSNR")
    ap.add_argument("--eval-every", type=float, default=60.0, help="seconds between evaluations")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="speed: torch.compile the fields")
    ap.add_argument("--fast", action="store_true", help="lego: the fast path with CPU-sized settings")
    ap.add_argument("--batch", type=int, default=None,
                    help="lego: rays per batch (default 1024; with --fast the config's train.rays_per_batch)")
    ap.add_argument("--extra", nargs="*", default=[], help="more config overrides")
    a = ap.parse_args()
    sizes = lego_fast_cpu() if a.fast else {}
    if a.precision is None:
        a.precision = [sizes["model.precision"]] if "model.precision" in sizes else ["fp32", "bf16"]
    if a.batch is None:
        a.batch = sizes.get("train.rays_per_batch", 1024)
    print(f"torch {torch.__version__}, device {a.device}, threads {torch.get_num_threads()}")
    if a.what == "speed":
        for p in a.precision:
            r = speed(p, a.steps, a.device, compile=a.compile)
            print(f"paper config (8x256, 64+128 samples, 1024 rays), {p}{' compiled' if a.compile else ''}: "
                  f"train {r['train_rays_per_s']:.0f} rays/s, render {r['render_rays_per_s']:.0f} rays/s")
        return
    if not LEGO.exists():
        raise SystemExit(f"lego not found at {LEGO} (set NERF_DIST_LEGO)")
    fast = FAST_CPU if a.fast else []
    for p in a.precision:
        print(f"lego 100x100, {'fast path (CPU settings)' if a.fast else 'vanilla paper config'}, "
              f"{p}, {a.minutes} min, {a.batch} rays/batch:")
        res = timed_training([f"data.root={LEGO}", "data.downscale=8", *fast,  # --fast: its downscale
                              f"train.rays_per_batch={a.batch}",
                              f"model.precision={p}", f"run.dir=/tmp/nerf_dist_bench/lego_{'fast_' if a.fast else ''}{p}",
                              "data.cache_dir=/tmp/nerf_dist_bench/cache", "train.steps=1000000",
                              "model.chunk=8192", *a.extra],
                             budget_s=a.minutes * 60, eval_every_s=a.eval_every, target_psnr=a.target,
                             device=a.device)
        ttt = res["time_to_target"]
        print(f"  {p}: {res['steps']} steps, {res['rays_per_s']:.0f} rays/s, time to {a.target} dB: "
              f"{f'{ttt:.0f} s' if ttt is not None else 'not reached'}; curve {res['curve']}")


if __name__ == "__main__":
    main()
