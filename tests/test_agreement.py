"""What the ranks must agree on (issue 15): one resume decision, replicas checked by digest, a
refused resume that changes nothing, and validation that all ranks render together.

Multi-rank cases run two real gloo processes (torch.multiprocessing); each rank's faults are
injected in that rank alone (a storage error, a perturbed parameter, a stop signal), the way a
flaky object store or a bad node would bring them. Each rank writes its outcome and its stderr
to files the test reads.
"""
import json
import os
import sys
import time
import traceback

import pytest
import torch
import torch.multiprocessing as mp

from conftest import TINY_MODEL, free_port, train_tiny
from nerf_dist import dist, storage
from nerf_dist.checkpoint import Checkpointer
from nerf_dist.config import load_config
from nerf_dist.lifecycle import StopSignals, read_status

pytestmark = pytest.mark.slow   # two-process gloo jobs


def _cfg(scene, run, *extra):
    return load_config(None, [f"data.root={scene}", f"run.dir={run}", "train.rays_per_batch=256",
                              "log.progress=false", "log.every=1", "train.threads=1",
                              "checkpoint.every=2", *TINY_MODEL, *extra])


# ---------------------------------------------------------------------------- the rank harness

def _fault_storage(step_dir: str):
    """storage.read_bytes fails (as a timed-out object store would) for checkpoint step_dir."""
    real = storage.read_bytes

    def flaky(url, *a, **k):
        if step_dir in str(url) and str(url).endswith("state.pt"):
            raise storage.StorageError(f"read {url}: timed out (injected, after 3 retries)")
        return real(url, *a, **k)
    storage.read_bytes = flaky


def _perturb_at(step: int):
    """Rank-local: add 1e-3 to the first parameter once the trainer reaches `step`."""
    from nerf_dist.train import loop as trainer_mod
    real = trainer_mod.Trainer.train_step

    def train_step(self, *a, **k):
        out = real(self, *a, **k)
        if self.step == step:
            with torch.no_grad():
                next(self.model.parameters()).add_(1e-3)
        return out
    trainer_mod.Trainer.train_step = train_step


def _count_val(events: list, stop: StopSignals, stop_on_first_tile: bool):
    """Record checkpoint saves, validation renders (tiles) and ground-truth decodes in order."""
    from nerf_dist.train import loop as trainer_mod
    from nerf_dist.renderer import core
    from nerf_dist.scenes.lazy import LazyScene
    real_tile, real_image, real_save = core.render_tile, LazyScene.image, trainer_mod.Trainer.save

    def render_tile(setup, cams, t):
        events.append(("tile", int(t.frame)))
        if stop_on_first_tile and stop.requested is None:
            stop.requested = "SIGUSR1"   # as the signal handler would set it
        return real_tile(setup, cams, t)

    def image(self, i):
        events.append(("gt", int(i)))
        return real_image(self, i)

    def save(self):
        events.append(("save", self.step))
        return real_save(self)
    core.render_tile, LazyScene.image, trainer_mod.Trainer.save = render_tile, image, save


def _rank_main(rank, port, out_dir, scene, run, extra, faults):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    sys.stderr = open(os.path.join(out_dir, f"stderr{rank}.txt"), "w", buffering=1)
    from nerf_dist.train import train
    mine = faults.get(rank, {})
    stop = StopSignals(())
    events: list = []
    if "storage" in mine:
        _fault_storage(mine["storage"])
    if "perturb" in mine:
        _perturb_at(mine["perturb"])
    if "count_val" in mine:
        _count_val(events, stop, mine["count_val"] == "stop")
    info = dist.init(timeout_s=60)
    t0 = time.time()
    try:
        res = train(_cfg(scene, run, *extra), info, stop)
        out = {"ok": True, "step": res["step"], "signal": res["stopped_by_signal"]}
    except Exception as e:  # noqa: BLE001 - reported to the test
        out = {"ok": False, "type": type(e).__name__, "msg": str(e), "tb": traceback.format_exc()}
    finally:
        dist.close()
    out["seconds"] = time.time() - t0
    out["events"] = events
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(out, f)


def _run_two(tmp_path, scene, run, extra=(), faults=None) -> list[dict]:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    mp.spawn(_rank_main, args=(free_port(), str(out), str(scene), str(run), list(extra),
                               faults or {}), nprocs=2, join=True)
    res = []
    for r in (0, 1):
        doc = json.loads((out / f"rank{r}.json").read_text())
        doc["stderr"] = (out / f"stderr{r}.txt").read_text()
        res.append(doc)
    return res


@pytest.fixture
def four_steps(demo_scene, tmp_path):
    """A tiny run with committed checkpoints at steps 2 and 4 (trained on one process)."""
    run = tmp_path / "run"
    train_tiny(demo_scene, run, "train.steps=4", "checkpoint.every=2", "checkpoint.keep=5")
    return run


# ---------------------------------------------------------------------------- 1. one resume decision

@pytest.mark.parametrize("failing_rank", [0, 1])
def test_a_rank_that_cannot_read_the_newest_checkpoint_stops_every_rank(
        demo_scene, tmp_path, four_steps, failing_rank):
    """A storage error on one rank is an error on every rank, never a silent resume from the
    older step 2 (which would split the replicas for good)."""
    before = (four_steps / "config.yaml").read_bytes()
    res = _run_two(tmp_path, demo_scene, four_steps, ["train.steps=6", "train.resume=auto"],
                   {failing_rank: {"storage": "step-00000004"}})
    for r, doc in enumerate(res):
        assert not doc["ok"], doc
        assert doc["type"] == "CheckpointError", doc["tb"]
        assert "storage error" in doc["msg"] or "could not load checkpoint step 4" in doc["msg"], doc
        assert "step-00000004" in doc["msg"] or "step 4" in doc["msg"], doc["msg"]
        assert "resumed from" not in doc["stderr"]
    assert Checkpointer(str(four_steps / "checkpoints"), is_main=False).list() == [2, 4]
    assert (four_steps / "config.yaml").read_bytes() == before
    assert read_status(str(four_steps))["state"] == "failed"


def test_a_damaged_newest_checkpoint_falls_back_on_every_rank_together(
        demo_scene, tmp_path, four_steps):
    state = four_steps / "checkpoints" / "step-00000004" / "state.pt"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    res = _run_two(tmp_path, demo_scene, four_steps, ["train.steps=6", "train.resume=auto"])
    for r, doc in enumerate(res):
        assert doc["ok"] and doc["step"] == 6, doc
        assert "step-00000004" in doc["stderr"] and "falls back" in doc["stderr"], doc["stderr"]
    # both ranks went on from step 2 and wrote the same model at 4 and 6 (the digest checked it)
    assert Checkpointer(str(four_steps / "checkpoints"), is_main=False).list() == [2, 4, 6]


# ---------------------------------------------------------------------------- 2. replicas checked

def test_replicas_that_differ_are_named_at_the_next_save(demo_scene, tmp_path):
    run = tmp_path / "run"
    res = _run_two(tmp_path, demo_scene, run, ["train.steps=6"], {1: {"perturb": 3}})
    for doc in res:
        assert not doc["ok"] and doc["type"] == "ReplicaMismatchError", doc
        assert "checkpoint step 4" in doc["msg"] and "rank(s) 1 differ" in doc["msg"], doc["msg"]
        assert "first differing tensor" in doc["msg"], doc["msg"]
    # step 2 was saved; the diverged step 4 never was
    assert Checkpointer(str(run / "checkpoints"), is_main=False).list() == [2]


def test_replica_digest_is_bit_level():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert dist.tensor_digests(a) == dist.tensor_digests(b)
    with torch.no_grad():
        b.bias[1] = torch.nextafter(b.bias[1], torch.tensor(1e9))
    da, db = dict(dist.tensor_digests(a)), dict(dist.tensor_digests(b))
    assert da["weight"] == db["weight"] and da["bias"] != db["bias"]
    assert dist.combined_digest(list(da.items())) != dist.combined_digest(list(db.items()))


# ---------------------------------------------------------------------------- 3. refused resume

def test_a_refused_resume_changes_nothing_and_is_quick(demo_scene, tmp_path, cli):
    run = tmp_path / "run"
    train_tiny(demo_scene, run, "train.steps=4")
    before = (run / "config.yaml").read_bytes()
    cache = tmp_path / "fresh-cache"
    args = ["train", f"data.root={demo_scene}", f"run.dir={run}", "train.rays_per_batch=256",
            "log.progress=false", "train.threads=1", "train.steps=8", "train.resume=auto",
            *TINY_MODEL, "model.width=48", f"data.cache_dir={cache}"]
    r = cli(*args)
    assert r.returncode != 0 and "model.width" in r.stderr + r.stdout, r.stderr + r.stdout
    assert (run / "config.yaml").read_bytes() == before
    # refused before the ray cache was built: nothing was written in the new cache folder
    assert not cache.exists() or not any(cache.rglob("*")), list(cache.rglob("*"))


# ---------------------------------------------------------------------------- 4. validation

def test_validation_after_the_save_rendered_by_every_rank(demo_scene, tmp_path):
    run = tmp_path / "run"
    res = _run_two(tmp_path, demo_scene, run,
                   ["train.steps=4", "checkpoint.every=4", "eval.every=4", "eval.n_images=2",
                    "render.tile=8"],
                   {0: {"count_val": "count"}, 1: {"count_val": "count"}})
    for doc in res:
        assert doc["ok"] and doc["step"] == 4, doc
    ev0, ev1 = res[0]["events"], res[1]["events"]
    # save first, then validation (on every rank)
    for ev in (ev0, ev1):
        assert ev[0] == ["save", 4] and {e[0] for e in ev[1:]} <= {"tile", "gt"}, ev
    # both ranks rendered tiles of both views; only rank 0 decoded ground truth, once per view
    for ev in (ev0, ev1):
        assert {e[1] for e in ev if e[0] == "tile"} == {0, 1}, ev
    assert sorted(e[1] for e in ev0 if e[0] == "gt") == [0, 1], ev0
    assert not [e for e in ev1 if e[0] == "gt"], ev1


def test_a_stop_signal_during_validation_ends_it_between_views(demo_scene, tmp_path):
    run = tmp_path / "run"
    res = _run_two(tmp_path, demo_scene, run,
                   ["train.steps=50", "checkpoint.every=4", "eval.every=4", "eval.n_images=3",
                    "render.tile=8"],
                   {0: {"count_val": "count"}, 1: {"count_val": "stop"}})
    for doc in res:
        assert doc["ok"] and doc["step"] == 5 and doc["signal"], doc
    # the signal arrived on rank 1 while rendering view 0: no rank rendered views 1 or 2
    for doc in res:
        assert {e[1] for e in doc["events"] if e[0] == "tile"} == {0}, doc["events"]
    assert Checkpointer(str(run / "checkpoints"), is_main=False).list() == [4, 5]
