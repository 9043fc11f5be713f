"""A partitioned model evaluated and rendered across ranks (issue 24 point 4): under a process
group, `eval` and `render` place the boxes as training does (each rank loads and holds only its
boxes' parts and the shared head; the box group renders its tiles together), they render what
one process holding every box renders, and the memory checks count a rank's share."""
from __future__ import annotations

import json
import os
import traceback

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from test_partition_train import _cfg

from conftest import free_port
from nerf_dist import memory
from nerf_dist.config import with_section
from nerf_dist.dist import DistInfo
from nerf_dist.models import build_model
from nerf_dist.run_dir import load_model, place_loaded
from nerf_dist.train import train

TOL = 1e-6
RENDER = {"path": "test", "max_frames": 2, "save_float": True, "video": False, "tile": 16}


@pytest.fixture(scope="module")
def part_run(demo_scene, tmp_path_factory):
    """A 2-box run trained 4 steps in one process (its checkpoint sharded: box-0000.pt,
    box-0001.pt beside the shared state)."""
    tmp = tmp_path_factory.mktemp("part_render")
    run = tmp / "run"
    train(_cfg(demo_scene, run, f"data.cache_dir={tmp / 'cache'}"), DistInfo())
    return run


def _eval_and_render(loaded, run: str, out: str) -> None:
    """commands.eval_run (its frames kept in out/eval_frames.pt, rank 0) then render_run, as the
    CLI and the quick start call them; each starts and destroys its own process group."""
    from nerf_dist import commands, evaluation
    frames = {}
    real = evaluation.render_views

    def keep(*args, **kwargs):
        for i, o in real(*args, **kwargs):
            frames[i] = {k: v.clone() for k, v in o.items()}
            yield i, o
    evaluation.render_views = keep
    try:
        loaded.cfg = with_section(loaded.cfg, "render", **RENDER)
        commands.eval_run(loaded, run, "test", os.path.join(out, "eval"))
        if "MASTER_PORT" in os.environ:  # NOTE: a fresh rendezvous for the second group
            os.environ["MASTER_PORT"] = str(int(os.environ["MASTER_PORT"]) + 1)
        commands.render_run(loaded, os.path.join(out, "render"), run, progress=False)
    finally:
        evaluation.render_views = real
    if frames:
        torch.save(frames, os.path.join(out, "eval_frames.pt"))


def _rank_main(rank, run, out, port):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from nerf_dist import storage
    read, real_read = [], storage.read_bytes

    def spy(url, *a, **k):
        read.append(os.path.basename(str(url)))
        return real_read(url, *a, **k)
    storage.read_bytes = spy
    info = {}
    try:
        # NOTE: as the CLI does: loaded for this rank before the process group starts
        loaded = load_model(run_dir=run, rank=rank, world_size=2)
        info["params"] = {n: p.numel() for n, p in loaded.model.named_parameters()}
        info["read"] = sorted(set(read))
        _eval_and_render(loaded, run, out)
        info["error"] = None
    except Exception:  # noqa: BLE001 - reported to the test
        info["error"] = traceback.format_exc()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(info, f)


def _floats(folder) -> dict:
    return {name: dict(np.load(os.path.join(folder, "float", name)))
            for name in sorted(os.listdir(os.path.join(folder, "float")))}


def test_two_boxes_on_two_ranks_eval_and_render_equal_one_process(part_run, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    whole = load_model(run_dir=str(part_run))
    full = {n: p.numel() for n, p in whole.model.named_parameters()}
    _eval_and_render(whole, str(part_run), str(one))
    mp.spawn(_rank_main, args=(str(part_run), str(two), free_port()), nprocs=2, join=True)
    ranks = [json.loads((two / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, info in enumerate(ranks):
        assert info["error"] is None, info["error"]
        # each rank holds and read only its own box (+ the shared head): never the other's part
        want = {n: c for n, c in full.items() if n.startswith((f"boxes.{r}.", "colour."))}
        assert info["params"] == want, (r, sorted(info["params"]))
        assert sum(info["params"].values()) < sum(full.values())
        assert f"box-{r:04d}.pt" in info["read"] and f"box-{1 - r:04d}.pt" not in info["read"], \
            info["read"]
    # eval: the frames it scored, float32 before any quantisation
    fa = torch.load(one / "eval_frames.pt", weights_only=True)
    fb = torch.load(two / "eval_frames.pt", weights_only=True)
    assert sorted(fa) == sorted(fb) and len(fa) > 0
    d_eval = max(float((fa[i][k] - fb[i][k]).abs().max()) for i in fa for k in fa[i])
    ra = json.loads((one / "eval" / "report.json").read_text())
    rb = json.loads((two / "eval" / "report.json").read_text())
    assert rb["world_size"] == 2 and ra["n_images"] == rb["n_images"] == len(fa)
    # render: the float outputs it wrote (--save-float)
    ga, gb = _floats(one / "render"), _floats(two / "render")
    assert sorted(ga) == sorted(gb) and len(ga) == RENDER["max_frames"]
    d_render = max(float(np.abs(ga[f][k] - gb[f][k]).max()) for f in ga for k in ga[f])
    print(f"partition: eval / render of 2 boxes on 2 ranks vs one process, max abs diff: "
          f"{d_eval} / {d_render}")
    assert d_eval <= TOL and d_render <= TOL
    assert float(fa[0]["acc"].max()) > 0.01          # the boxes drew something: not a blank pair


def test_a_model_placed_for_other_ranks_is_refused_and_misplaced_boxes_named(part_run):
    placed = load_model(run_dir=str(part_run), rank=1, world_size=2)
    assert sorted({n.split(".")[1] for n, _ in placed.model.named_parameters()
                   if n.startswith("boxes.")}) == ["1"]
    with pytest.raises(ValueError, match="loaded for rank 1 of 2 but runs as rank 0 of 2"):
        place_loaded(placed, 0, 2)
    with pytest.raises(ValueError, match="loaded for rank 1 of 2 but runs as rank 0 of 1"):
        place_loaded(placed, 0, 1)
    # a rank's model cannot render before it is placed under the process group
    ro, rd = torch.tensor([[0.0, -4.0, 0.5]]), torch.tensor([[0.0, 1.0, -0.1]])
    with pytest.raises(RuntimeError, match="no box group yet"):
        placed.model(ro, rd, rd / rd.norm(), 0.1, 6.0)
    with pytest.raises(ValueError, match="built without box"):
        placed.model.distribute(0, 2)
    with pytest.raises(ValueError, match="model.partitions=2 on 3 ranks"):
        load_model(run_dir=str(part_run), rank=0, world_size=3)


def test_render_memory_estimate_counts_a_ranks_share_of_the_boxes(demo_scene, tmp_path):
    """2 boxes on 2 ranks: each rank's render (and eval, and validation) estimate holds one box
    and the shared head: less than the whole model, and no less than what the rank holds."""
    cfg = _cfg(demo_scene, tmp_path, "model.hash_log2_size=14").model
    est = {n: memory.render_estimate(64, 64, 16, 1024, cfg, n, evaluate=True)["host"]
           for n in (1, 2)}
    assert est[2]["model weights"] < est[1]["model weights"]
    assert sum(est[2].values()) < sum(est[1].values())
    aabb = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    nbytes = lambda m: sum(p.numel() * p.element_size() for p in m.parameters())  # noqa: E731
    whole = build_model(cfg, aabb)
    for r in (0, 1):
        held = nbytes(build_model(cfg, aabb, r, 2))
        assert held <= est[2]["model weights"] < nbytes(whole), (r, held)
    assert nbytes(whole) <= est[1]["model weights"]
    # training's share counts the shared head whole too (it is on every rank)
    share = memory.model_memory(cfg)
    assert memory.train_param_bytes(cfg, 2) > -(-(share.param_bytes + share.optimizer_bytes) // 2)
