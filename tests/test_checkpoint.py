"""checkpoint: atomic save (data, then COMMITTED), keep-k, verified and weights-only loads."""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import uuid

import pytest
import torch

from nerf_dist import storage
from nerf_dist.checkpoint import Checkpointer, CheckpointError, load_url


@pytest.fixture(params=["local", "memory", "s3"])
def base_url(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "ckpt")
    if request.param == "memory":
        return f"memory://ckpt-{uuid.uuid4().hex[:8]}"
    s3 = request.getfixturevalue("s3_server")
    return f"s3://{s3['bucket']}/run-{uuid.uuid4().hex[:8]}/ckpt"


def make_state(seed: int = 0) -> dict:
    """Model + optimizer state_dicts after one step, RNG states and plain python values."""
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(5, 3, generator=g)).sum().backward()
    opt.step()
    return {
        "step": 7 + seed,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "gen": g.get_state(), "python": [1, 2.5, None]},
        "loader": {"epoch": 2, "cursor": 123, "order": torch.randperm(10, generator=g)},
        "config": {"model": {"kind": "vanilla", "perturb": True}, "train": {"lr": 5e-4}, "x": None},
        "half": torch.randn(4, generator=g).to(torch.bfloat16),
    }


def assert_same(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert type(a) is type(b) and a == b, path


def flip_bytes(url: str) -> None:
    data = bytearray(storage.read_bytes(url))
    mid = len(data) // 2
    data[mid:mid + 16] = bytes(x ^ 0xFF for x in data[mid:mid + 16])
    storage.write_bytes(url, bytes(data))


class _RunsCode:
    """Unpickling this would run a shell command (the attack weights_only must stop)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(url: str, step: int, data: bytes) -> str:
    """Write a checkpoint folder by hand, with a correct COMMITTED marker for ``data``."""
    folder = storage.join(url, f"step-{step:08d}")
    storage.write_bytes(storage.join(folder, "state.pt"), data)
    storage.write_text(storage.join(folder, "COMMITTED"), json.dumps(
        {"version": 1, "step": step, "file": "state.pt", "size": len(data),
         "sha256": hashlib.sha256(data).hexdigest()}))
    return folder


# ------------------------------------------------------------------------------ round trip

def test_roundtrip_exact(base_url):
    ck = Checkpointer(base_url)
    ck.check_writable()
    assert ck.list() == [] and ck.load() is None
    state = make_state()
    url = ck.save(7, state)
    assert url == storage.join(base_url, "step-00000007")
    assert sorted(storage.listdir(url)) == ["COMMITTED", "state.pt"]
    marker = json.loads(storage.read_text(storage.join(url, "COMMITTED")))
    assert marker["step"] == 7 and marker["version"] == 1 and len(marker["sha256"]) == 64
    step, loaded = ck.load()
    assert step == 7
    assert_same(state, loaded)
    # the loaded state restores a fresh model and optimizer
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    model.load_state_dict(loaded["model"])
    torch.optim.Adam(model.parameters(), lr=1e-3).load_state_dict(loaded["optimizer"])
    assert_same(load_url(url)[1], state)
    assert load_url(storage.join(url, "state.pt"))[0] == 7


def test_keep_two_and_uncommitted_folders(base_url):
    ck = Checkpointer(base_url, keep=2)
    # an interrupted save: data without marker is invisible, and pruned once older than a commit
    storage.write_bytes(storage.join(base_url, "step-00000001", "state.pt"), b"partial")
    for s in (2, 3, 4):
        ck.save(s, {"step": s, "w": torch.full((3,), float(s))})
    storage.write_bytes(storage.join(base_url, "step-00000009", "state.pt"), b"partial")
    assert ck.list() == [3, 4]
    assert storage.listdir(base_url) == ["step-00000003", "step-00000004", "step-00000009"]
    step, state = ck.load()
    assert step == 4 and torch.equal(state["w"], torch.full((3,), 4.0))
    assert ck.load(step=3)[0] == 3
    with pytest.raises(CheckpointError, match="step 2"):
        ck.load(step=2)


def test_resave_same_step_overwrites(tmp_path):
    ck = Checkpointer(str(tmp_path))
    ck.save(5, {"v": 1})
    ck.save(5, {"v": 2})
    assert ck.list() == [5] and ck.load() == (5, {"v": 2})
    assert [n for n in os.listdir(tmp_path / "step-00000005") if ".tmp" in n] == []


def test_load_url_without_marker_warns_and_missing_raises(tmp_path):
    folder = tmp_path / "step-00000042"
    buf = io.BytesIO()
    torch.save({"w": torch.ones(3)}, buf)
    storage.write_bytes(str(folder / "state.pt"), buf.getvalue())
    with pytest.warns(UserWarning, match="no valid COMMITTED marker"):
        step, state = load_url(str(folder))
    assert step == 42 and torch.equal(state["w"], torch.ones(3))
    with pytest.raises(CheckpointError, match="no checkpoint at .*step-00000043"):
        load_url(str(tmp_path / "step-00000043"))


def test_non_main_rank_writes_nothing(tmp_path):
    ck = Checkpointer(str(tmp_path / "c"), is_main=False)
    assert ck.save(3, {"a": torch.ones(1)}) == os.path.join(str(tmp_path / "c"), "step-00000003")
    assert not (tmp_path / "c").exists()
    assert ck.load() is None


# ------------------------------------------------------------------------------ damage

@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_newest_falls_back_with_warning(base_url, damage):
    ck = Checkpointer(base_url, keep=3)
    ck.save(10, {"step": 10, "w": torch.arange(1000.0)})
    newest = ck.save(20, {"step": 20, "w": torch.arange(1000.0) * 2})
    state_url = storage.join(newest, "state.pt")
    if damage == "flip":
        flip_bytes(state_url)
    else:
        storage.write_bytes(state_url, storage.read_bytes(state_url)[:100])
    assert ck.list() == [10, 20]  # listing trusts markers; loading verifies
    with pytest.warns(UserWarning, match="step-00000020.*damaged"):
        step, state = ck.load()
    assert step == 10 and torch.equal(state["w"], torch.arange(1000.0))
    with pytest.raises(CheckpointError, match="damaged"):
        load_url(newest)


def test_all_damaged_raises_rather_than_starting_over(tmp_path):
    ck = Checkpointer(str(tmp_path))
    flip_bytes(os.path.join(ck.save(1, {"w": torch.zeros(500)}), "state.pt"))
    with pytest.raises(CheckpointError, match="all 1 committed checkpoints .* damaged .*sha256"):
        ck.load()


def test_storage_error_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    """A read that fails in storage (timeout, reset: after its retries) must not be mistaken for a
    damaged checkpoint: falling back to an older step on one rank would split the replicas."""
    ck = Checkpointer(str(tmp_path))
    ck.save(10, {"step": 10})
    ck.save(20, {"step": 20})
    real = storage.read_bytes

    def flaky(url, *a, **k):
        if "step-00000020" in url and url.endswith("state.pt"):
            raise storage.StorageError(f"read {url}: timed out after 3 retries")
        return real(url, *a, **k)
    monkeypatch.setattr(storage, "read_bytes", flaky)
    with pytest.raises(CheckpointError, match="storage error.*step-00000020.*timed out"):
        ck.newest_good()
    with pytest.raises(CheckpointError, match="storage error"):
        ck.load()
    with pytest.raises(CheckpointError, match="storage error"):
        ck.load_step(20)
    assert ck.load_step(10)["step"] == 10


def test_newest_good_names_what_it_skipped(tmp_path):
    ck = Checkpointer(str(tmp_path))
    ck.save(10, {"step": 10})
    flip_bytes(os.path.join(ck.save(20, {"step": 20, "w": torch.zeros(500)}), "state.pt"))
    step, state, skipped = ck.newest_good()
    assert (step, state["step"]) == (10, 10)
    assert len(skipped) == 1 and "step-00000020" in skipped[0] and "damaged" in skipped[0]


def test_invalid_marker_is_invisible(tmp_path):
    ck = Checkpointer(str(tmp_path))
    ck.save(1, {"a": 1})
    folder = ck.save(2, {"a": 2})
    storage.write_text(os.path.join(folder, "COMMITTED"), "{not json")
    with pytest.warns(UserWarning, match="invalid checkpoint marker"):
        assert ck.list() == [1]


# ------------------------------------------------------------------------------ safety

@pytest.mark.parametrize("kind", ["torch_save", "bare_pickle"])
def test_pickled_code_is_refused_never_executed(base_url, tmp_path, kind):
    marker = tmp_path / f"pwned-{kind}"
    evil = {"model": _RunsCode(str(marker)), "step": 5}
    if kind == "torch_save":
        buf = io.BytesIO()
        torch.save(evil, buf)
        data = buf.getvalue()
    else:
        data = pickle.dumps(evil, protocol=2)
    ck = Checkpointer(base_url)
    ck.save(1, {"ok": torch.ones(2)})
    folder = plant(base_url, 5, data)  # correct size and sha: only weights_only stops it
    assert ck.list() == [1, 5]
    for attempt in (ck.load, lambda: ck.load(step=5), lambda: load_url(folder),
                    lambda: load_url(storage.join(folder, "state.pt"))):
        with pytest.raises(CheckpointError) as err:
            attempt()
        msg = str(err.value)
        assert "non-tensor objects" in msg and "refusing to execute" in msg
        assert storage.redact(folder) in msg
    assert not marker.exists()


def test_save_refuses_state_that_would_not_load_weights_only(tmp_path):
    ck = Checkpointer(str(tmp_path))
    with pytest.raises(CheckpointError, match="non-tensor python objects"):
        ck.save(1, {"bad": _RunsCode(str(tmp_path / "never"))})
    assert ck.list() == [] and not (tmp_path / "never").exists()


def test_messages_redact_credentials():
    ck = Checkpointer("memory://user:hunter2@bucket/run")
    with pytest.raises(CheckpointError) as err:
        ck.load(step=3)
    assert "hunter2" not in str(err.value) and "***@" in str(err.value)


# ------------------------------------------------------------------------------ writability

def test_check_writable_local_under_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    ck = Checkpointer(str(tmp_path / "file" / "ckpt"))
    with pytest.raises(CheckpointError, match=r"file/ckpt.*not usable"):
        ck.check_writable()
    with pytest.raises(CheckpointError, match=r"file/ckpt"):
        ck.save(1, {"a": 1})


def test_check_writable_unreachable_s3(s3_unreachable):
    ck = Checkpointer("s3://nerf-ckpt/run/ckpt")
    with pytest.raises(CheckpointError, match=r"s3://nerf-ckpt/run/ckpt.*not usable"):
        ck.check_writable()
    with pytest.raises(CheckpointError, match=r"s3://nerf-ckpt/run/ckpt"):
        Checkpointer("s3://nerf-ckpt/run/ckpt", is_main=False).check_writable()
