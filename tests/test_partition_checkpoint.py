"""Sharded checkpoints of the partitioned kind (issue 19 point 5): each box's parameters and Adam
state in a part file written by its owner, listed with checksums in the COMMITTED marker; a
rank reads only its boxes' parts; a gathered (one state.pt) checkpoint of before still loads;
resume is exact on any layout."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
import torch.multiprocessing as mp
from test_checkpoint import flip_bytes
from test_partition_train import _cfg, _max_diff, _rank_main

from conftest import checkpoint_params, free_port
from nerf_dist.checkpoint import Checkpointer, CheckpointError
from nerf_dist.dist import DistInfo
from nerf_dist.models.partitioned.model import PartitionedNeRF
from nerf_dist.train import train

TOL = 1e-5


def _sharded(ck: Checkpointer, step: int, boxes=(0, 1)) -> str:
    """A sharded checkpoint by hand: shared state + one part per box."""
    ck.begin(step)
    parts = [ck.write_part(step, f"box-{k:04d}.pt",
                           {"model": {f"boxes.{k}.w": torch.full((4,), float(k + step))}})
             for k in boxes]
    return ck.save(step, {"step": step, "model": {"colour.w": torch.ones(2)}}, parts)


def test_parts_are_listed_verified_and_read_only_when_asked(tmp_path):
    ck = Checkpointer(str(tmp_path), keep=5)
    folder = _sharded(ck, 1)
    marker = json.loads((tmp_path / "step-00000001" / "COMMITTED").read_text())
    assert [p["file"] for p in marker["parts"]] == ["box-0000.pt", "box-0001.pt"]
    assert all(len(p["sha256"]) == 64 for p in marker["parts"])
    step, state = ck.load()
    assert step == 1 and sorted(state["model"]) == ["boxes.0.w", "boxes.1.w", "colour.w"]
    # a rank holding box 0 reads box 0's part only: box 1's file is never opened
    os.remove(os.path.join(folder, "box-0001.pt"))
    step, state = ck.load(parts={"box-0000.pt"})
    assert sorted(state["model"]) == ["boxes.0.w", "colour.w"]
    with pytest.raises(CheckpointError, match="damaged"):
        ck.load()                                      # every part: box 1's is missing


def test_damaged_or_missing_part_is_never_committed_or_loaded(tmp_path):
    ck = Checkpointer(str(tmp_path), keep=5)
    _sharded(ck, 1)
    flip_bytes(os.path.join(_sharded(ck, 2), "box-0001.pt"))
    with pytest.warns(UserWarning, match="box-0001.pt is damaged"):
        step, state = ck.load()
    assert step == 1 and float(state["model"]["boxes.1.w"][0]) == 2.0
    # a part that was not written is refused at commit time: nothing of step 3 is visible
    ck.begin(3)
    entry = ck.write_part(3, "box-0000.pt", {"model": {"boxes.0.w": torch.ones(4)}})
    ghost = dict(entry, file="box-0001.pt")
    with pytest.raises(CheckpointError, match="box-0001.pt is missing"):
        ck.save(3, {"step": 3}, [entry, ghost])
    assert ck.list() == [1, 2]
    with pytest.raises(CheckpointError, match="non-finite"):
        ck.write_part(4, "box-0000.pt", {"model": {"boxes.0.w": torch.tensor([float("nan")])}})
    ck.begin(5)
    e = ck.write_part(5, "box-0000.pt", {"model": {"colour.w": torch.zeros(2)}})
    ck.save(5, {"step": 5, "model": {"colour.w": torch.ones(2)}}, [e])
    with pytest.raises(CheckpointError, match="overlaps the state at model.colour.w"):
        ck.load(5)


def _spawn2(scene, run, tmp_path, *extra):
    mp.spawn(_rank_main, args=(str(scene), str(run), str(tmp_path), free_port(), list(extra)),
             nprocs=2, join=True)
    return [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]


def test_two_rank_sharded_checkpoint_resumes_exactly_on_one_and_two_ranks(demo_scene, tmp_path):
    """2 ranks (box k on rank k) save sharded at step 4; resumed to step 6 on 1 rank, on 2 ranks,
    and from the same checkpoint rewritten the old (gathered) way, each equals an uninterrupted
    one-process run to step 6."""
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    two = tmp_path / "two"
    assert _spawn2(demo_scene, two, tmp_path, cache) == ["no error"] * 2
    folder = two / "checkpoints" / "step-00000004"
    marker = json.loads((folder / "COMMITTED").read_text())
    assert [p["file"] for p in marker["parts"]] == ["box-0000.pt", "box-0001.pt"]
    shared = torch.load(folder / "state.pt", weights_only=True)
    assert not any(k.startswith("boxes.") for k in shared["model"])    # rank 0 wrote no box
    box1 = torch.load(folder / "box-0001.pt", weights_only=True)
    assert box1["model"] and all(k.startswith("boxes.1.") for k in box1["model"])
    assert box1["optimizer"]["state"]                                    # its Adam moments too
    # the same checkpoint written the old way: one state.pt holding every box, no parts
    gathered = tmp_path / "gathered"
    step, full = Checkpointer(str(two / "checkpoints")).load()
    assert any(k.startswith("boxes.1.") for k in full["model"])
    Checkpointer(str(gathered / "checkpoints")).save(step, full)
    assert "parts" not in json.loads((gathered / "checkpoints" / "step-00000004" /
                                      "COMMITTED").read_text())
    shutil.copytree(two, tmp_path / "two_on_two")

    # NOTE: without step 2, a run that silently started over (instead of resuming) is seen
    for run in (two, gathered, tmp_path / "two_on_two"):
        shutil.rmtree(run / "checkpoints" / "step-00000002", ignore_errors=True)
    one = tmp_path / "one"
    train(_cfg(demo_scene, one, cache, "train.steps=6"), DistInfo())      # uninterrupted
    want = checkpoint_params(str(one / "checkpoints"))
    train(_cfg(demo_scene, two, cache, "train.steps=6", "train.resume=auto"), DistInfo())
    train(_cfg(demo_scene, gathered, cache, "train.steps=6", "train.resume=auto"), DistInfo())
    assert _spawn2(demo_scene, tmp_path / "two_on_two", tmp_path, cache, "train.steps=6",
                   "train.resume=auto") == ["no error"] * 2
    for name in ("two", "gathered", "two_on_two"):
        d = _max_diff(want, checkpoint_params(str(tmp_path / name / "checkpoints")))
        print(f"partition: sharded 1x2 checkpoint at step 4, {name} resumed to 6 vs "
              f"uninterrupted one process, max abs diff: {d}")
        assert d <= TOL, name
        assert Checkpointer(str(tmp_path / name / "checkpoints")).list() == [4, 6], name
    assert _max_diff(want, checkpoint_params(str(one / "checkpoints"), 4)) > 100 * TOL


def test_a_rank_holds_and_reads_only_its_boxes():
    model = _cfg("scene", "run", "model.partitions=4").model
    held = lambda r, n: PartitionedNeRF.checkpoint_parts_held(model, r, n)   # noqa: E731
    assert held(0, 1) == {f"box-{k:04d}.pt" for k in range(4)}              # one holds all
    assert held(1, 2) == {"box-0001.pt", "box-0003.pt"}                     # 2 ranks, 2 each
    assert held(6, 8) == {"box-0002.pt"}                                    # replica 1 of 2


def _failing_rank_main(rank, scene, run, out_dir, port, extra):
    """_rank_main with rank 1's part write failing (a full disk, say)."""
    if rank == 1:
        def fail(self, step, name, state):
            raise OSError(f"no space left on device writing {name} (injected)")
        Checkpointer.write_part = fail
    _rank_main(rank, scene, run, out_dir, port, extra)


def test_a_failed_part_write_on_one_rank_is_raised_on_every_rank_and_commits_nothing(
        demo_scene, tmp_path):
    run = tmp_path / "run"
    mp.spawn(_failing_rank_main, args=(str(demo_scene), str(run), str(tmp_path), free_port(),
                                       [f"data.cache_dir={tmp_path / 'cache'}", "train.steps=2"]),
             nprocs=2, join=True)
    msgs = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert all("CheckpointError" in m for m in msgs), msgs
    assert "no space left on device writing box-0001.pt" in msgs[1]
    assert "rank 1" in msgs[0] and "box-0001.pt" in msgs[0], msgs[0]
    assert Checkpointer(str(run / "checkpoints")).list() == []
    assert not (run / "checkpoints" / "step-00000002" / "COMMITTED").exists()


@pytest.mark.slow
def test_a_damaged_part_of_the_newest_checkpoint_falls_back_on_every_rank_together(
        demo_scene, tmp_path):
    """Issue 24: box 1's part of step 4 is damaged at rest; only rank 1 reads it. Every rank
    falls back to step 2 together (as past a damaged gathered checkpoint), instead of failing
    every requeue, and the resumed run equals an uninterrupted one."""
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    two = tmp_path / "two"
    assert _spawn2(demo_scene, two, tmp_path, cache) == ["no error"] * 2
    assert Checkpointer(str(two / "checkpoints")).list() == [2, 4]
    flip_bytes(str(two / "checkpoints" / "step-00000004" / "box-0001.pt"))
    msgs = _spawn2(demo_scene, two, tmp_path, cache, "train.steps=6", "train.resume=auto")
    assert msgs == ["no error"] * 2, msgs
    assert Checkpointer(str(two / "checkpoints")).list() == [2, 4, 6]
    one = tmp_path / "one"
    train(_cfg(demo_scene, one, cache, "train.steps=6"), DistInfo())      # uninterrupted
    d = _max_diff(checkpoint_params(str(one / "checkpoints")),
                  checkpoint_params(str(two / "checkpoints")))
    assert d <= TOL, d
