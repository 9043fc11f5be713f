"""memory: what this machine has left (cgroup v2/v1, MemAvailable), render and training-batch
estimates (upper bounds of measured peaks), and the errors that refuse impossible requests."""
import json
import os
import subprocess
import sys

import pytest

from nerf_dist import memory
from nerf_dist.config import load_config
from nerf_dist.memory import MemoryBudgetError

GiB = 1 << 30


@pytest.fixture
def host_gib(monkeypatch):
    """Pretend the host has `n` GiB available (deterministic across machines)."""
    def set_(n: float):
        b = int(n * GiB)
        monkeypatch.setattr(memory, "host_available",
                            lambda: (b, f"{memory.fmt_bytes(b)} available (MemAvailable)"))
    monkeypatch.delenv("NERF_DIST_MEMORY_CHECK", raising=False)
    return set_


# ------------------------------------------------------------------------------ available memory

def _fake_proc(monkeypatch, files: dict[str, str], mounts: str, cgroup: str):
    real = memory._read

    def read(path):
        if path == "/proc/self/mountinfo":
            return mounts
        if path == "/proc/self/cgroup":
            return cgroup
        if path in files:
            return files[path]
        return None if path.startswith("/fake") else real(path)
    monkeypatch.setattr(memory, "_read", read)
    monkeypatch.setattr(memory.os.path, "isdir", lambda d: d.startswith("/fake"))


def test_cgroup_v2_headroom_is_limit_minus_usage_without_inactive_cache(monkeypatch):
    MiB = 1 << 20
    files = {"/fake/cg/job/memory.max": str(1024 * MiB), "/fake/cg/job/memory.current": str(700 * MiB),
             "/fake/cg/job/memory.stat": f"anon 1\ninactive_file {200 * MiB}\n",
             "/fake/cg/memory.max": "max", "/fake/cg/memory.current": str(5 * GiB)}
    mounts = "30 23 0:26 / /fake/cg rw,nosuid - cgroup2 cgroup2 rw\n"
    _fake_proc(monkeypatch, files, mounts, "0::/job\n")
    assert memory._cgroup_headroom() == (524 * MiB, 1024 * MiB)
    monkeypatch.setattr(memory, "_meminfo_available", lambda: 8 * GiB)
    avail, where = memory.host_available()
    assert avail == 524 * MiB and "cgroup limit of 1.0 GiB" in where
    assert memory.available_bytes("cpu") == 524 * MiB


def test_cgroup_v1_takes_the_tightest_ancestor(monkeypatch):
    MiB = 1 << 20
    files = {"/fake/mem/a/b/memory.limit_in_bytes": str(9223372036854771712),   # unlimited
             "/fake/mem/a/b/memory.usage_in_bytes": str(100 * MiB),
             "/fake/mem/a/memory.limit_in_bytes": str(2 * GiB),
             "/fake/mem/a/memory.usage_in_bytes": str(GiB),
             "/fake/mem/a/memory.stat": "total_inactive_file 0\n"}
    mounts = "35 31 0:32 / /fake/mem rw,relatime - cgroup cgroup rw,memory\n"
    _fake_proc(monkeypatch, files, mounts, "4:memory:/a/b\n3:cpu:/\n")
    assert memory._cgroup_headroom() == (GiB, 2 * GiB)
    monkeypatch.setattr(memory, "_meminfo_available", lambda: 512 * MiB)
    assert memory.host_available()[0] == 512 * MiB  # MemAvailable is smaller here


def test_available_bytes_on_this_machine():
    avail = memory.available_bytes()
    assert 0 < avail <= memory._meminfo_available()
    assert memory.device_available("cpu") is None


# ------------------------------------------------------------------------------ render

def _model(*over):
    return load_config(None, list(over)).model


def test_impossible_render_is_refused_with_estimate_limit_and_advice(host_gib):
    host_gib(16)
    with pytest.raises(MemoryBudgetError) as info:
        memory.check_render(100000, 100000, 64, 8192, _model(), 1, "cpu")
    msg = str(info.value)
    assert "100000x100000" in msg and "TiB" in msg           # the request and its estimate
    assert "only 16.0 GiB available (MemAvailable)" in msg                      # the limit
    assert "lower --resolution" in msg                         # what to change
    assert isinstance(info.value, ValueError)                  # the CLI's one-line error path


def test_render_advice_names_the_dominant_knob(host_gib):
    host_gib(1)
    with pytest.raises(MemoryBudgetError, match=r"lower model\.chunk"):
        memory.check_render(512, 512, 512, 65536, _model(), 1, "cpu")
    est = memory.check_render(512, 512, 512, 256, _model(), 1, "cpu")  # fits with a small chunk
    assert sum(est["host"].values()) < GiB


@pytest.mark.parametrize("args,needle", [
    ((0, 10, 64, 1024), "resolution width"), ((10, 2 ** 21, 64, 1024), "resolution height"),
    ((10, 10, 0, 1024), "--tile"), ((10, 10, 2 ** 17, 1024), "--tile"),
    ((10, 10, 64, 0), "model.chunk"), ((10, 10, 64, 2 ** 27), "model.chunk"),
    ((10.5, 10, 64, 1024), "resolution width"), ((10, 10, True, 1024), "--tile"),
])
def test_absurd_render_values_are_refused(host_gib, args, needle):
    host_gib(1024)
    with pytest.raises(MemoryBudgetError, match=needle):
        memory.check_render(*args, _model(), 1, "cpu")


def test_check_can_be_switched_off_but_not_the_sanity_limits(host_gib, monkeypatch):
    host_gib(0.5)
    monkeypatch.setenv("NERF_DIST_MEMORY_CHECK", "off")
    memory.check_render(100000, 100000, 64, 8192, _model(), 1, "cpu")
    with pytest.raises(MemoryBudgetError):
        memory.check_render(10, 10, 0, 8192, _model(), 1, "cpu")


def test_render_estimate_parts():
    m = _model()
    one = memory.render_estimate(1000, 800, 64, 4096, m, 1, "cpu")["host"]
    assert one["1 frame(s) of 1000x800 being assembled"] == 1000 * 800 * 20
    ev = memory.render_estimate(1000, 800, 64, 4096, m, 1, "cpu", evaluate=True)["host"]
    assert ev["evaluating a frame"] > one["writing a frame"]
    # several ranks: rank 0 also receives a bounded gather round, not the whole frame
    two = memory.render_estimate(4000, 4000, 64, 4096, m, 2, "cpu")["host"]
    assert two["gathering tiles from other ranks"] == 3 * memory.ROUND_BYTES
    # tiny frames are batched (2 tiles per rank), and chunk activations never exceed a tile
    small = memory.render_estimate(32, 32, 64, 65536, m, 4, "cpu")["host"]
    assert "8 frame(s) of 32x32 being assembled" in small
    act = [v for k, v in small.items() if k.startswith("model.chunk")][0]
    assert act == 32 * 32 * memory.bytes_per_ray(m, False)


def test_on_all_ranks_without_a_group_is_the_plain_check():
    assert memory.on_all_ranks(lambda: 7) == 7
    def bad():
        raise MemoryBudgetError("too big")
    with pytest.raises(MemoryBudgetError, match="^too big$"):
        memory.on_all_ranks(bad, 0, 1)
    # (two real gloo ranks that disagree: tests/test_renderer.py)


# ------------------------------------------------------------------------------ training batch

def _cfg(*over):
    return load_config(None, list(over))


def test_batch_larger_than_cache_names_both_numbers(host_gib):
    host_gib(1024)
    with pytest.raises(MemoryBudgetError) as info:
        memory.check_train_batch(_cfg("train.rays_per_batch=1000000000"), 40960, 1, "cpu")
    assert "1000000000" in str(info.value) and "40960" in str(info.value)
    memory.check_train_batch(_cfg("train.rays_per_batch=40960", "model.kind=fast"), 40960, 4, "cpu")


def test_batch_that_cannot_fit_is_refused_with_what_fits(host_gib):
    host_gib(4)
    cfg = _cfg("train.rays_per_batch=65536")
    with pytest.raises(MemoryBudgetError) as info:
        memory.check_train_batch(cfg, 10_000_000, 1, "cpu")
    msg = str(info.value)
    assert "train.rays_per_batch=65536" in msg and "4.0 GiB available (MemAvailable)" in msg
    fits = int(msg.split("about ")[2].split(" fits")[0])
    assert 0 < fits < 65536
    memory.check_train_batch(_cfg(f"train.rays_per_batch={fits}"), 10_000_000, 1, "cpu")
    # more ranks: each holds 1/world of the batch and of the cache
    w1 = memory.train_estimate(cfg, 10_000_000, 1, "cpu")["host"]
    w8 = memory.train_estimate(cfg, 10_000_000, 8, "cpu")["host"]
    act = lambda e: [v for k, v in e.items() if k.startswith("activations")][0]  # noqa: E731
    assert act(w8) * 8 == act(w1)
    # the rank's share of a huge cache alone can be too much, unless the loader streams it
    # within data.cache_memory (2GB by default)
    with pytest.raises(MemoryBudgetError, match="ray cache.*lower data.cache_memory"):
        memory.check_train_batch(_cfg("train.rays_per_batch=64", "data.cache_memory=8GB"),
                                 300_000_000, 1, "cpu")
    est = memory.check_train_batch(_cfg("train.rays_per_batch=64"), 300_000_000, 1, "cpu")
    assert [v for k, v in est["host"].items() if "data.cache_memory=2GB" in k] == [2_000_000_000]


# ------------------------------------------------------------------------------ estimates vs reality

_MEASURE = r"""
import json, os, sys
import torch
from nerf_dist import memory
from nerf_dist.config import load_config
from nerf_dist.models import build_model

def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

def measure(train, n, over):
    torch.set_num_threads(1)
    cfg = load_config(None, over)
    model = build_model(cfg.model, torch.tensor([[-1.5] * 3, [1.5] * 3]))
    g = torch.Generator().manual_seed(0)

    def run(n):
        o = torch.tensor([[0.0, 0.0, 4.0]]).expand(n, 3).clone()
        d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g) * 0.05
                                          + torch.tensor([0.0, 0.0, -1.0]), dim=-1)
        if train:
            model(o, d, d, 2.0, 6.0, train=True, generator=g)["rgb"].sum().backward()
        else:
            with torch.no_grad():
                model(o, d, d, 2.0, 6.0)
    run(8)
    base = rss("VmRSS")
    run(n)
    return {"measured": rss("VmHWM") - base, "estimate": n * memory.bytes_per_ray(cfg.model, train)}

# NOTE: one fork per case: torch is imported once, and each case starts from a heap that never
# held model tensors (freed memory reused from an earlier case would hide part of the peak).
for case in json.loads(sys.argv[1]):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.write(w, json.dumps({**measure(*case), "case": case}).encode())
        os._exit(0)
    os.close(w)
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    os.waitpid(pid, 0)
    print(out.decode(), flush=True)
"""

_SMALL_VANILLA = ["model.width=64", "model.depth=4", "model.skip=1", "model.n_samples=32",
                  "model.n_importance=32"]
_SMALL_FAST = ["model.kind=fast", "model.hash_log2_size=14", "model.max_samples=64"]


def test_activation_estimates_bound_the_measured_peaks():
    """Peak RSS growth of one model call (1 thread) <= estimate (+ the checks' fixed 64 MiB
    allowance for one-time buffers such as BLAS workspaces) and estimate <= 2.5x it, for
    inference and a training step of the vanilla and the fast model."""
    cases = [(False, 1024, _SMALL_VANILLA), (True, 256, _SMALL_VANILLA),
             (False, 1024, _SMALL_FAST), (True, 256, _SMALL_FAST)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", _MEASURE, json.dumps(cases)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    results = [json.loads(line) for line in res.stdout.strip().splitlines()]
    assert len(results) == len(cases), res.stdout
    for r in results:
        assert r["measured"] > 8 << 20, r  # the call really allocated something
        assert r["measured"] <= r["estimate"] + memory._SLACK, r
        assert r["estimate"] <= 2.5 * r["measured"], r


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_cuda_activation_estimates_bound_the_measured_peaks():
    """On a GPU: torch.cuda.max_memory_allocated growth of one call <= estimate <= 4x it, and
    available_bytes reports the device's free memory."""
    import torch
    from nerf_dist.models import build_model
    dev = torch.device("cuda")
    free, total = torch.cuda.mem_get_info(dev)
    assert 0 < memory.available_bytes(dev) <= total
    assert memory.device_available("cuda:0")[0] > 0
    for train, n, over in [(False, 4096, _SMALL_VANILLA), (True, 1024, _SMALL_VANILLA),
                           (False, 4096, _SMALL_FAST), (True, 1024, _SMALL_FAST)]:
        cfg = load_config(None, over)
        model = build_model(cfg.model, torch.tensor([[-1.5] * 3, [1.5] * 3])).to(dev)
        g = torch.Generator(device=dev).manual_seed(0)
        o = torch.tensor([[0.0, 0.0, 4.0]], device=dev).expand(n, 3).clone()
        d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, device=dev) * 0.05
                                          + torch.tensor([0.0, 0.0, -1.0], device=dev), dim=-1)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        if train:
            model(o, d, d, 2.0, 6.0, train=True, generator=g)["rgb"].sum().backward()
        else:
            with torch.no_grad():
                model(o, d, d, 2.0, 6.0)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(dev) - base
        est = n * memory.bytes_per_ray(cfg.model, train)
        assert peak <= est <= 4 * peak, (train, over[0], peak, est)
        # the render check puts activations on the device, frames on the host
        parts = memory.render_estimate(64, 64, 64, n, cfg.model, 1, dev)
        assert any(k.startswith("model.chunk") for k in parts["device"])
        assert not any(k.startswith("model.chunk") for k in parts["host"])
        del model
