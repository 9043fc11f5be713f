"""Trainer guards: non-finite loss/gradient policy (all ranks agree), resume sanity, eval refusing
NaN metrics. NaN is injected into one rank's batch colours, the way a corrupt input would bring it.
And the model protocol: a model kind the trainer has never heard of trains through it.
"""
import os
import traceback

import pytest
import torch
import torch.multiprocessing as mp

from conftest import TINY_MODEL, free_port
from nerf_dist import checkpoint as ckpt_mod
from nerf_dist import memory
from nerf_dist.checkpoint import Checkpointer
from nerf_dist.cli import main
from nerf_dist.config import load_config
from nerf_dist.dist import DistInfo
from nerf_dist.lifecycle import NonFiniteError, read_status
from nerf_dist.loader import RayLoader
from nerf_dist.memory import MemoryBudgetError
from nerf_dist.models.base import MemoryEstimate, NeRFModel
from nerf_dist.models.registry import KINDS, Kind, NoKeys
from nerf_dist.run_dir import load_model
from nerf_dist.train import Trainer, train


def _cfg(scene, run, *extra):
    return load_config(None, [f"data.root={scene}", f"run.dir={run}", "train.rays_per_batch=256",
                              "log.progress=false", "log.every=1", "train.threads=1",
                              "checkpoint.every=2", "train.steps=8", *TINY_MODEL, *extra])


def _poison(monkeypatch, calls: set[int]):
    """Make RayLoader.next return NaN colours on the given (0-based) calls."""
    real = RayLoader.next
    count = {"n": 0}

    def next_(self):
        batch = real(self)
        if count["n"] in calls:
            batch["rgb"] = torch.full_like(batch["rgb"], float("nan"))
        count["n"] += 1
        return batch
    monkeypatch.setattr(RayLoader, "next", next_)


def _rank_main(rank, scene, run, out_dir, port):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from nerf_dist import dist
    if rank == 1:  # only rank 1 sees the bad batch, at step 3
        mp_patch = pytest.MonkeyPatch()
        _poison(mp_patch, {3})
    info = dist.init(timeout_s=60)
    try:
        train(_cfg(scene, run), info)
        msg = "no error"
    except NonFiniteError as e:
        msg = f"NonFiniteError: {e}"
    except Exception:  # noqa: BLE001 - reported to the test
        msg = traceback.format_exc()
    finally:
        dist.close()
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write(msg)


def test_nonfinite_on_one_rank_stops_every_rank_before_the_step(demo_scene, tmp_path):
    run = tmp_path / "run"
    mp.spawn(_rank_main, args=(str(demo_scene), str(run), str(tmp_path), free_port()), nprocs=2,
             join=True)
    for rank in (0, 1):
        msg = (tmp_path / f"rank{rank}.txt").read_text()
        assert msg.startswith("NonFiniteError: stopped at step 3"), msg
        assert "Last good checkpoint: step 2" in msg and "train.lr" in msg, msg
    # the good checkpoint survives; nothing non-finite was committed
    assert Checkpointer(str(run / "checkpoints"), keep=10, is_main=False).list() == [2]
    status = read_status(str(run))
    assert status["state"] == "failed" and status["step"] == 3, status


def test_skip_policy_counts_and_then_gives_up(demo_scene, tmp_path, monkeypatch):
    _poison(monkeypatch, {2, 3})
    res = train(_cfg(demo_scene, tmp_path / "a", "train.on_nonfinite=skip"), DistInfo())
    assert res["step"] == 8 and res["nonfinite_skipped"] == 2
    step, state = Checkpointer(str(tmp_path / "a" / "checkpoints"), is_main=False).load()
    assert step == 8 and not ckpt_mod.nonfinite_entries(state)
    # every batch from the 3rd on is bad: three in a row ends it
    _poison(monkeypatch, set(range(2, 100)))
    with pytest.raises(NonFiniteError, match="3 non-finite steps in a row"):
        train(_cfg(demo_scene, tmp_path / "b", "train.on_nonfinite=skip",
                   "train.max_nonfinite=3"), DistInfo())
    assert Checkpointer(str(tmp_path / "b" / "checkpoints"), is_main=False).list() == [2]


def test_resuming_a_finished_run_is_an_error_unless_allowed(demo_scene, tmp_path, capsys):
    args = ["train", f"data.root={demo_scene}", f"run.dir={tmp_path / 'r'}",
            "train.rays_per_batch=128", "log.progress=false", "train.threads=1",
            "train.steps=3", "train.resume=auto", *TINY_MODEL]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "checkpoint is at step 3 and train.steps=3" in err and "allow_finished" in err
    assert main([*args, "train.steps=2"]) == 1
    assert main([*args, "train.allow_finished=true"]) == 0


def test_eval_refuses_nan_metrics(demo_scene, tmp_path, capsys, monkeypatch):
    run = tmp_path / "r"
    assert main(["train", f"data.root={demo_scene}", f"run.dir={run}", "train.rays_per_batch=128",
                 "log.progress=false", "train.threads=1", "train.steps=2", *TINY_MODEL]) == 0
    # a diverged checkpoint written before this guard existed
    ck = Checkpointer(str(run / "checkpoints"), is_main=True)
    step, state = ck.load()
    state["model"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                      for k, v in state["model"].items()}
    monkeypatch.setattr(ckpt_mod, "nonfinite_entries", lambda *_: [])
    ck.save(step + 1, state)
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--split", "val"]) == 1
    err = capsys.readouterr().err
    assert "non-finite" in err and "no report is written" in err
    assert not (run / "eval_val" / "report.json").exists()


def test_checkpoint_refuses_non_finite_state(tmp_path):
    ck = Checkpointer(str(tmp_path), keep=2)
    ck.save(1, {"model": {"w": torch.ones(3)}, "elapsed": 1.0})
    with pytest.raises(ckpt_mod.CheckpointError, match=r"non-finite values in model\.w"):
        ck.save(2, {"model": {"w": torch.tensor([1.0, float("nan")])}, "elapsed": 1.0})
    with pytest.raises(ckpt_mod.CheckpointError, match="elapsed"):
        ck.save(3, {"model": {"w": torch.ones(3)}, "elapsed": float("inf")})
    assert ck.list() == [1]


def test_no_credentials_at_rest(demo_scene, tmp_path, capsys):
    secret = "s3cr3tPa55word"
    run = tmp_path / "r"
    args = ["train", f"data.root={demo_scene}", f"run.dir={run}", "train.rays_per_batch=128",
            "log.progress=false", "train.threads=1", "train.steps=2", "train.resume=auto",
            f"checkpoint.dir=memory://user:{secret}@host/ck-{tmp_path.name}", *TINY_MODEL]
    assert main(args) == 0
    assert main([*args, "train.steps=3"]) == 0          # resumes: the saved config still matches
    out = capsys.readouterr()
    assert secret not in out.out + out.err
    saved = (run / "config.yaml").read_text()
    assert secret not in saved and f"memory://host/ck-{tmp_path.name}" in saved
    step, state = Checkpointer(f"memory://user:{secret}@host/ck-{tmp_path.name}",
                               is_main=False).load()
    assert step == 3 and secret not in repr(state["config"])
    for f in run.rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f


def test_impossible_batch_fails_before_training(demo_scene, tmp_path, capsys):
    args = ["train", f"data.root={demo_scene}", f"run.dir={tmp_path / 'r'}", "log.progress=false",
            "train.threads=1", "train.steps=2", *TINY_MODEL]
    assert main([*args, "train.rays_per_batch=1000000000"]) == 1
    err = capsys.readouterr().err
    assert "1000000000" in err and "20480" in err, err      # the batch and the cache's rays
    assert Checkpointer(str(tmp_path / "r" / "checkpoints"), is_main=False).list() == []
    assert read_status(str(tmp_path / "r"))["state"] == "failed"


class _ToyNeRF(NeRFModel):
    """A third model kind, defined here: one learnable colour for every ray. It uses every hook
    of the protocol, so the test sees each reach the trainer (and a checkpoint load it back)."""
    BYTES_PER_RAY = 1000            # what it says it needs, per ray (tests change it)

    def __init__(self, cfg, aabb=None):
        super().__init__(cfg)
        self.colour = torch.nn.Parameter(torch.zeros(3))
        self.register_buffer("hook_calls", torch.zeros((), dtype=torch.int64))
        self.loss_terms: list[tuple[str, ...]] = []

    @classmethod
    def memory_estimate(cls, cfg):
        return MemoryEstimate(cls.BYTES_PER_RAY, cls.BYTES_PER_RAY // 2, 1, 1, 12, 36)

    def before_step(self, step, generator=None):
        self.hook_calls += 1
        return True

    def losses(self, out, target_rgb, scale):
        terms = {**super().losses(out, target_rgb, scale),
                 "colour_norm": 1e-3 * (self.colour ** 2).sum()}
        self.loss_terms.append(tuple(terms))
        return terms

    def optimizer_settings(self):
        return {"params": [{"params": [self.colour], "weight_decay": 0.0}], "eps": 1e-6}

    def log_scalars(self):
        return {"hook_calls": float(self.hook_calls)}

    def forward(self, rays_o, rays_d, viewdirs, near, far, *, train=False, generator=None,
                background=None):
        n = rays_o.shape[0]
        return {"rgb": torch.sigmoid(self.colour).expand(n, 3), "depth": torch.zeros(n),
                "acc": torch.ones(n), "samples_per_ray": torch.tensor(1.0)}


def test_a_third_model_kind_trains_without_trainer_changes(demo_scene, tmp_path, monkeypatch):
    # NOTE: one registry entry is all it takes (a kind with a folder names its model class as
    # "module:Class" and its own config dataclass; this one has no keys of its own).
    monkeypatch.setitem(KINDS, "toy", Kind(NoKeys, _ToyNeRF, "a test's kind"))
    cfg = load_config(None, [f"data.root={demo_scene}", f"run.dir={tmp_path / 'r'}",
                             "train.rays_per_batch=64", "log.progress=false", "log.every=1",
                             "train.threads=1", "train.steps=3", "train.lr=0.1",
                             "model.kind=toy", "eval.every=0"])
    trainer = Trainer(cfg, DistInfo())
    logged = []
    real_scalars = trainer.log.scalars
    monkeypatch.setattr(trainer.log, "scalars",
                        lambda step, values: (logged.append((step, values)),
                                              real_scalars(step, values)))
    try:
        assert isinstance(trainer.model, _ToyNeRF)
        assert trainer.optim.param_groups[0]["eps"] == 1e-6
        res = trainer.train()
    finally:
        trainer.close()
    assert res["step"] == 3 and int(trainer.model.hook_calls) == 3
    assert trainer.model.loss_terms == [("rgb", "colour_norm")] * 3
    assert [v["model/hook_calls"] for _, v in logged] == [1.0, 2.0, 3.0]
    assert bool((trainer.model.colour.detach() != 0).all())          # it learned something
    # it sizes itself: the memory checks use its own estimate, and refuse a batch it cannot hold
    est = memory.train_estimate(cfg, trainer.cache.n_rays)["host"]
    assert [v for k, v in est.items() if k.startswith("activations")] == [64 * 1000]
    assert est["model weights, gradients and Adam moments"] == 12 + 36
    assert memory.bytes_per_ray(cfg.model, False) == 500
    monkeypatch.setattr(_ToyNeRF, "BYTES_PER_RAY", 1 << 50)
    with pytest.raises(MemoryBudgetError, match="train.rays_per_batch"):
        memory.check_train_batch(cfg, trainer.cache.n_rays)
    loaded = load_model(run_dir=str(tmp_path / "r"))
    assert isinstance(loaded.model, _ToyNeRF) and loaded.step == 3
    torch.testing.assert_close(loaded.model.colour, trainer.model.colour.detach())
