"""The partitioned kind through the trainer (issue 19 points 1 and 5): a 2-box model trained on 2
ranks (box k on rank k, the same rays on both) follows the same model trained in one process;
its checkpoint (sharded: each box written by its rank) loads into one process, which renders it
and resumes it; validation during training renders the split model on its ranks."""
from __future__ import annotations

import json
import os
import shutil
import traceback

import pytest
import torch
import torch.multiprocessing as mp

from conftest import checkpoint_params, free_port, run_cli
from nerf_dist.config import load_config
from nerf_dist.dist import DistInfo
from nerf_dist.run_dir import load_model
from nerf_dist.train import train

PART_MODEL = ["model.kind=partitioned", "model.partitions=2", "model.hash_levels=2",
              "model.hash_log2_size=10", "model.hash_base_res=4", "model.hash_max_res=16",
              "model.hidden=16", "model.geo_features=3", "model.box_samples=8"]
TOL = 1e-5


def _cfg(scene, run, *extra):
    return load_config(None, [f"data.root={scene}", f"run.dir={run}", "train.rays_per_batch=128",
                              "log.progress=false", "log.every=1", "train.threads=1",
                              "checkpoint.every=2", "train.steps=4", "eval.every=0",
                              *PART_MODEL, *extra])


def _rank_main(rank, scene, run, out_dir, port, extra, world=2):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from nerf_dist import dist
    info = dist.init(timeout_s=60)
    try:
        train(_cfg(scene, run, *extra), info)
        msg = "no error"
    except Exception:  # noqa: BLE001 - reported to the test
        msg = traceback.format_exc()
    finally:
        dist.close()
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write(msg)


def _max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a
               if a[k].is_floating_point())


def test_two_box_run_on_two_ranks_follows_one_process_and_loads_anywhere(demo_scene, tmp_path):
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    val = ["eval.every=2", "eval.n_images=2", "eval.split=val"]
    two = tmp_path / "two"
    mp.spawn(_rank_main, args=(str(demo_scene), str(two), str(tmp_path), free_port(),
                               [cache, *val]), nprocs=2, join=True)
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.txt").read_text() == "no error", \
            (tmp_path / f"rank{rank}.txt").read_text()
    one = tmp_path / "one"
    train(_cfg(demo_scene, one, cache, *val), DistInfo())
    a = checkpoint_params(str(one / "checkpoints"))
    b = checkpoint_params(str(two / "checkpoints"))
    assert any(k.startswith("boxes.1.") for k in b)           # every box, rank 1's part included
    d = _max_diff(a, b)
    print("partition trainer 1x2 vs one process, params after 4 steps, max abs diff:", d)
    assert d <= TOL
    assert _max_diff(a, checkpoint_params(str(one / "checkpoints"), 2)) > 100 * TOL
    # the partition was derived from the training rays and travels with the checkpoint
    assert int(b["partition_source"]) == 1 and int(b["partition_points"]) > 0
    assert torch.equal(a["bounds"], b["bounds"])
    # load balance in TensorBoard: every box's samples, and each rank's time in its own box
    # (tensorboard's reader is imported here only: NOTE: lazy, as in test_train_e2e.py)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(two / "tb"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    for tag in ("model/box0_samples", "model/box1_samples", "model/imbalance",
                "model/rank0/box_ms", "model/rank1/box_ms", "train/loss"):
        assert tag in tags, (tag, sorted(tags))
    # the logged loss is the global batch's (the box group's copies counted once)
    ea1 = EventAccumulator(str(one / "tb"))
    ea1.Reload()
    assert [e.value for e in ea.Scalars("train/loss")] == \
        pytest.approx([e.value for e in ea1.Scalars("train/loss")], rel=1e-6)
    # validation during training: the box group renders its tiles together (steps 2 and 4), and
    # scores what one process holding both boxes scores
    v2, v1 = ([(e.step, e.value) for e in acc.Scalars("eval/psnr")] for acc in (ea, ea1))
    print("partition: validation PSNR during training, 1x2 vs one process:", v2, v1)
    assert [s for s, _ in v2] == [2, 4] and [s for s, _ in v1] == [2, 4]
    assert max(abs(x[1] - y[1]) for x, y in zip(v2, v1)) < 1e-3
    # the 2-rank checkpoint loads into one process holding both boxes and renders what the
    # one-process model renders
    la, lb = load_model(str(one)), load_model(str(two))
    ro = torch.tensor([[0.0, -4.0, 0.5], [0.3, -4.0, 0.2]])
    rd = torch.tensor([[0.0, 1.0, -0.1], [-0.1, 1.0, 0.0]])
    vd = rd / rd.norm(dim=-1, keepdim=True)
    with torch.no_grad():
        oa = la.model(ro, rd, vd, la.scene["near"], la.scene["far"])
        ob = lb.model(ro, rd, vd, lb.scene["near"], lb.scene["far"])
    assert float((oa["rgb"] - ob["rgb"]).abs().max()) <= 1e-4
    # ... and resumes there (one process, both boxes) to the step the one-process run reaches
    train(_cfg(demo_scene, two, cache, "train.steps=6", "train.resume=auto"), DistInfo())
    train(_cfg(demo_scene, one, cache, "train.steps=6", "train.resume=auto"), DistInfo())
    d6 = _max_diff(checkpoint_params(str(one / "checkpoints")),
                   checkpoint_params(str(two / "checkpoints")))
    print("partition: 1x2 run resumed in one process vs one process, after 6 steps:", d6)
    assert d6 <= TOL


def _spawn(world, scene, run, tmp_path, *extra):
    mp.spawn(_rank_main, args=(str(scene), str(run), str(tmp_path), free_port(), list(extra),
                               world), nprocs=world, join=True)
    for rank in range(world):
        msg = (tmp_path / f"rank{rank}.txt").read_text()
        assert msg == "no error", msg


@pytest.mark.slow
def test_two_replicas_of_two_boxes_follow_one_process_and_resume_on_one_replica(demo_scene,
                                                                                 tmp_path):
    """2x2 (4 processes) equals one process at the same global batch (its validation too: each
    replica renders half the tiles, its box group together); its checkpoint resumes on 1x2
    (2 processes) and ends where the one-process run does."""
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    four, one = tmp_path / "four", tmp_path / "one"
    val = ["eval.every=4", "eval.n_images=2", "eval.split=val"]
    _spawn(4, demo_scene, four, tmp_path, cache, *val)
    train(_cfg(demo_scene, one, cache, *val), DistInfo())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    psnrs = []
    for run in (four, one):
        ea = EventAccumulator(str(run / "tb"))
        ea.Reload()
        psnrs.append([(e.step, e.value) for e in ea.Scalars("eval/psnr")])
    print("partition: validation PSNR during training, 2x2 vs one process:", psnrs)
    assert [s for s, _ in psnrs[0]] == [s for s, _ in psnrs[1]] == [4]
    assert psnrs[0][0][1] == pytest.approx(psnrs[1][0][1], abs=1e-3)
    d = _max_diff(checkpoint_params(str(one / "checkpoints")),
                  checkpoint_params(str(four / "checkpoints")))
    print("partition trainer 2x2 vs one process, params after 4 steps, max abs diff:", d)
    assert d <= TOL
    _spawn(2, demo_scene, four, tmp_path, cache, "train.steps=6", "train.resume=auto")
    train(_cfg(demo_scene, one, cache, "train.steps=6", "train.resume=auto"), DistInfo())
    d6 = _max_diff(checkpoint_params(str(one / "checkpoints")),
                   checkpoint_params(str(four / "checkpoints")))
    print("partition: 2x2 run resumed on 1x2 vs one process, after 6 steps:", d6)
    assert d6 <= TOL
    # the other way: the one-process checkpoint resumes on 2x2 and follows the one-process run
    shutil.copytree(one, tmp_path / "one_on_four")
    _spawn(4, demo_scene, tmp_path / "one_on_four", tmp_path, cache, "train.steps=8",
           "train.resume=auto")
    train(_cfg(demo_scene, one, cache, "train.steps=8", "train.resume=auto"), DistInfo())
    d8 = _max_diff(checkpoint_params(str(one / "checkpoints")),
                   checkpoint_params(str(tmp_path / "one_on_four" / "checkpoints")))
    print("partition: one-process run resumed on 2x2 vs one process, after 8 steps:", d8)
    assert d8 <= TOL


@pytest.mark.slow
def test_eval_of_a_partitioned_run_on_two_ranks_equals_one_rank(demo_scene, tmp_path):
    """`nerf-dist eval` of a 2-box checkpoint under torchrun: each rank loads and holds its own
    box (the CLI passes the launch rank), the box group renders the tiles together; the per-view
    PSNR on 2 ranks equals one rank's (the float frames: tests/test_partition_render.py)."""
    run = tmp_path / "run"
    train(_cfg(demo_scene, run, f"data.cache_dir={tmp_path / 'cache'}"), DistInfo())
    reports = []
    for nproc in (1, 2):
        out = tmp_path / f"eval{nproc}"
        res = run_cli(["eval", "--run-dir", str(run), "--out", str(out), "--split", "test"],
                      nproc=nproc)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        reports.append(json.loads((out / "report.json").read_text()))
    assert reports[1]["world_size"] == 2
    a = [e["psnr"] for e in reports[0]["per_image"]]
    b = [e["psnr"] for e in reports[1]["per_image"]]
    assert len(a) == len(b) > 0 and max(abs(x - y) for x, y in zip(a, b)) < 1e-3, (a, b)


def test_progress_line_shows_samples_per_box_and_imbalance(demo_scene, tmp_path, capsys):
    """The load balance that goes to TensorBoard (model/box<k>_samples, model/imbalance) is in
    the progress line too."""
    train(_cfg(demo_scene, tmp_path / "run", f"data.cache_dir={tmp_path / 'cache'}",
               "log.progress=true", "train.steps=2"), DistInfo())
    out = capsys.readouterr()
    line = [seg for seg in (out.out + out.err).replace("\r", "\n").splitlines() if "imb=" in seg]
    assert line, out.out[-2000:]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(tmp_path / "run" / "tb"))
    ea.Reload()
    imb = ea.Scalars("model/imbalance")[-1].value
    boxes = [ea.Scalars(f"model/box{k}_samples")[-1].value for k in (0, 1)]
    assert f"imb={imb:.2f}" in line[-1], line[-1]
    assert f"box={boxes[0]:.0f}/{boxes[1]:.0f}" in line[-1], line[-1]


def _damaged_shard_rank_main(rank, scene, run, out_dir, port, extra):
    """_rank_main with rank 1 alone reading shard 1 of the ray cache damaged (one byte flipped,
    as a bad disk cache or link of one node gives it): the shard's checksum finds it."""
    if rank == 1:
        from nerf_dist import storage
        real = storage.read_bytes

        def flipped(url, *a, **k):
            raw = real(url, *a, **k)
            if str(url).endswith("shard-00001.bin"):
                raw = bytearray(raw)
                raw[len(raw) // 2] ^= 0xFF
            return raw
        storage.read_bytes = flipped
    _rank_main(rank, scene, run, out_dir, port, extra)


def test_a_damaged_shard_on_one_rank_of_a_box_group_stops_every_rank_naming_it(demo_scene,
                                                                                tmp_path):
    """Issue 24: 2 boxes on 2 ranks read the same rays (one replica), so the loader's
    window agreement must run over every rank, not over the replicas: rank 1's damaged shard
    stops rank 0 too, before the segment exchange (which would wait until dist.timeout_s)."""
    run = tmp_path / "run"
    mp.spawn(_damaged_shard_rank_main,
             args=(str(demo_scene), str(run), str(tmp_path), free_port(),
                   [f"data.cache_dir={tmp_path / 'cache'}", "train.steps=2"]),
             nprocs=2, join=True)
    msgs = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert "ShardReadError" in msgs[1] and "shard-00001.bin" in msgs[1], msgs[1]
    assert "RayCacheError: rank 1 failed while reading its ray cache shards" in msgs[0], msgs[0]
    assert "shard-00001.bin" in msgs[0] and "CollectiveError" not in msgs[0], msgs[0]
