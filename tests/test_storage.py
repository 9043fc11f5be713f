"""storage: one seam for local paths and fsspec URLs (memory://, s3:// through moto)."""
from __future__ import annotations

import os
import time
import uuid

import pytest

from nerf_dist import storage


def test_redact_hides_user_and_password():
    assert storage.redact("s3://AKIA123:s3cr3t@bucket/run/ckpt") == "s3://***@bucket/run/ckpt"
    assert storage.redact("https://user:pw@host:9000/a/b") == "https://***@host:9000/a/b"
    assert storage.redact("s3://bucket/run") == "s3://bucket/run"
    assert storage.redact("/local/path@v1") == "/local/path@v1"
    assert "s3cr3t" not in storage.redact("gs://u:s3cr3t@b/")


def test_is_url_and_join():
    assert storage.is_url("s3://b/k") and storage.is_url("memory://x")
    assert not storage.is_url("/tmp/x") and not storage.is_url("file:///tmp/x")
    assert storage.join("s3://b/run/", "step", "f") == "s3://b/run/step/f"
    assert storage.join("/tmp/run", "f") == os.path.join("/tmp/run", "f")


def test_local_write_is_atomic_and_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "f.bin"
    storage.write_bytes(str(p), b"one")
    storage.write_bytes(str(p), b"two")
    assert storage.read_bytes(str(p)) == b"two"
    assert storage.listdir(str(tmp_path / "sub")) == ["f.bin"]
    assert storage.listdir(str(tmp_path / "missing")) == []


def test_atomic_write_keeps_the_extension_and_removes_the_temp_on_error(tmp_path):
    target = tmp_path / "sub" / "video.mp4"
    with storage.atomic_write(str(target)) as tmp:
        name = os.path.basename(tmp)
        assert name.startswith(".video.mp4.tmp-") and name.endswith(".mp4")  # ffmpeg needs it
        assert os.path.dirname(tmp) == str(target.parent)  # same folder: the rename is atomic
        open(tmp, "wb").write(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError):
        with storage.atomic_write(str(target)) as tmp:
            open(tmp, "wb").write(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"new" and os.listdir(target.parent) == ["video.mp4"]


def test_retry_rereads_what_fails_a_callers_check(monkeypatch, capsys):
    """storage.retry with a caller's own retry_if/gave_up/waiting (as the ray cache uses it)."""
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    storage.configure(retries=2, backoff_s=0.5)
    try:
        answers = iter([b"bad", b"bad", b"good"])

        def once():
            data = next(answers)
            if data != b"good":
                raise ValueError("checksum")
            return data
        assert storage.retry("read", "x://b/k", once, retry_if=lambda e: isinstance(e, ValueError),
                             waiting=lambda e, what, url, d, k, n: f"again in {d} s ({k}/{n})") \
            == b"good"
        assert "again in 0.5 s (2/3)" in capsys.readouterr().err
        def always_bad():
            raise ValueError("no")
        with pytest.raises(KeyError, match="gave up after 3"):
            storage.retry("read", "x://b/k", always_bad, retry_if=lambda e: True,
                          gave_up=lambda e, what, url, n: KeyError(f"gave up after {n}"))
        # an error retry_if refuses comes out at once, as a scrubbed StorageError
        with pytest.raises(storage.StorageError, match="cannot read x://b/k: ValueError: no"):
            storage.retry("read", "x://b/k", always_bad, retry_if=lambda e: False)
    finally:
        storage.configure()


def test_memory_roundtrip():
    base = f"memory://storage-{uuid.uuid4().hex[:8]}"
    storage.write_text(storage.join(base, "a", "x.txt"), "hello")
    assert storage.read_text(storage.join(base, "a", "x.txt")) == "hello"
    assert storage.exists(storage.join(base, "a", "x.txt"))
    assert storage.listdir(base) == ["a"]
    storage.remove(storage.join(base, "a"), recursive=True)
    assert not storage.exists(storage.join(base, "a", "x.txt"))


def test_check_writable_local_under_a_file_names_the_path(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    target = str(blocker / "ckpt")
    with pytest.raises(storage.StorageError, match="not-a-dir/ckpt"):
        storage.check_writable(target)
    storage.check_writable(str(tmp_path / "ok"))  # creatable: fine, and no probe left behind
    assert storage.listdir(str(tmp_path / "ok")) == []


def test_s3_roundtrip_and_listing(s3_server):
    base = f"s3://{s3_server['bucket']}/storage-{uuid.uuid4().hex[:8]}"
    storage.check_writable(base)
    storage.write_bytes(storage.join(base, "d", "x.bin"), b"\x00\x01")
    assert storage.read_bytes(storage.join(base, "d", "x.bin")) == b"\x00\x01"
    assert storage.listdir(base) == ["d"]
    storage.remove(storage.join(base, "d"), recursive=True)
    assert storage.listdir(base) == []


def test_s3_sees_objects_written_by_someone_else(s3_server):
    """A listing cached by s3fs must not hide an object another process wrote afterwards."""
    import boto3
    prefix = f"fresh-{uuid.uuid4().hex[:8]}"
    base = f"s3://{s3_server['bucket']}/{prefix}"
    storage.write_bytes(storage.join(base, "state.pt"), b"data")
    assert storage.listdir(base) == ["state.pt"]  # fills s3fs' listing cache
    boto3.client("s3", endpoint_url=s3_server["endpoint"]).put_object(
        Bucket=s3_server["bucket"], Key=f"{prefix}/COMMITTED", Body=b"{}")
    assert storage.exists(storage.join(base, "COMMITTED"))
    assert storage.read_bytes(storage.join(base, "COMMITTED")) == b"{}"


def test_s3_missing_bucket_is_not_created(s3_server):
    import boto3
    bucket = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    with pytest.raises(storage.StorageError, match=bucket):
        storage.check_writable(f"s3://{bucket}/run")
    names = [b["Name"] for b in boto3.client("s3", endpoint_url=s3_server["endpoint"])
             .list_buckets()["Buckets"]]
    assert bucket not in names


def test_s3_unreachable_endpoint_fails_fast_naming_the_url(s3_unreachable, capsys):
    timeout_s = 30
    storage.configure(timeout_s=timeout_s, retries=1, backoff_s=0.1)  # a refused one: retried once
    t0 = time.monotonic()
    with pytest.raises(storage.StorageError, match=r"s3://nerf-ckpt/run.*not reachable") as info:
        storage.check_writable("s3://nerf-ckpt/run")
    took = time.monotonic() - t0
    print(f"\nrefused endpoint: failed after {took:.1f} s (2 attempts); an endpoint that does not "
          f"answer: >= 2 x storage.timeout_s = {2 * timeout_s} s")
    # NOTE: an ordering, not a bound: the refusal ended both attempts before the first one's
    # timeout would have (the connection was refused, not waited for)
    assert took < timeout_s, took
    assert "2 attempt(s)" in str(info.value)
    assert "attempt 2 of 2" in capsys.readouterr().err


# ------------------------------------------------------------------------------ credentials

@pytest.fixture(autouse=True)
def _default_storage_settings():
    """Every test starts and ends with the default timeout/retry settings."""
    storage.configure()
    yield
    storage.configure()


def test_scrub_removes_credentials_from_any_text():
    text = ('botocore: Invalid bucket name "AKIAQ7:wJalrXUtn/FEMI+K7MDENG@nerf-ckpt": '
            "see s3://AKIAQ7:wJalrXUtn/FEMI+K7MDENG@nerf-ckpt/run and /user:hunter22@host/a/b, "
            "'https://tok3nABC@github.com/x'")
    out = storage.scrub(text)
    for secret in ("wJalrXUtn", "FEMI+K7MDENG", "hunter22", "tok3nABC"):
        assert secret not in out, out
    assert "s3://***@nerf-ckpt/run" in out and "/***@host/a/b" in out
    assert "https://***@github.com/x" in out
    # a secret seen once is removed later wherever it shows up, in any shape
    assert storage.scrub("bucket 'wJalrXUtn' unknown") == "bucket '***' unknown"
    # no credentials: unchanged (host:port with an @ further on in the path is not a password)
    for plain in ("s3://bucket/key@v1", "/local/path@v1", "https://host:9000/a/b@c",
                  "mail me at someone@example.com", "step 10: loss 0.1"):
        assert storage.scrub(plain) == plain


def test_redact_tree_scrubs_nested_copies():
    cfg = {"run": {"dir": "runs/x"},
           "checkpoint": {"dir": "s3://KEYID:sEcReT99@bucket/ckpt", "keep": 3},
           "list": ["memory://u:pAsSw0rd@h/x", ("gs://k:tUpLeSeCr@b/", 1.5), None, True],
           "memory://k:kEyInKeY@h/": "value"}
    out = storage.redact_tree(cfg)
    text = repr(out)
    for secret in ("sEcReT99", "pAsSw0rd", "tUpLeSeCr", "kEyInKeY"):
        assert secret not in text
    assert out["checkpoint"] == {"dir": "s3://***@bucket/ckpt", "keep": 3}
    assert out["list"][1] == ("gs://***@b/", 1.5) and out["list"][2:] == [None, True]
    assert out["run"] == {"dir": "runs/x"}
    assert cfg["checkpoint"]["dir"] == "s3://KEYID:sEcReT99@bucket/ckpt"  # a copy: input untouched


def _all_text(e: BaseException) -> str:
    import traceback
    return "".join(traceback.format_exception(e))


def test_memory_url_with_credentials_never_shows_the_secret():
    base = f"memory://user:mEmSeCrEt@host/creds-{uuid.uuid4().hex[:8]}"
    storage.write_text(storage.join(base, "a.txt"), "x")
    assert storage.read_text(storage.join(base, "a.txt")) == "x"
    with pytest.raises(FileNotFoundError) as info:  # still a FileNotFoundError for callers
        storage.read_bytes(storage.join(base, "missing.txt"))
    assert isinstance(info.value, storage.StorageError)
    assert "missing.txt" in str(info.value) and "***@host" in str(info.value)
    assert "mEmSeCrEt" not in _all_text(info.value)


def test_s3_url_with_credentials_never_shows_the_secret(s3_server, capsys):
    url = f"s3://AKIAFAKE7:wJalr/XUtnFEMI+K7MDENGbPxRfiCY@{s3_server['bucket']}/creds/x.bin"
    for call in (lambda: storage.read_bytes(url), lambda: storage.write_bytes(url, b"1"),
                 lambda: storage.check_writable(url.rsplit("/", 1)[0]),
                 lambda: storage.listdir(url)):
        with pytest.raises(storage.StorageError) as info:
            call()
        text = _all_text(info.value)
        assert "creds" in text  # the URL is named ...
        for part in ("wJalr", "XUtnFEMI", "K7MDENGbPxRfiCY"):  # ... without its secret
            assert part not in text, text
    err = capsys.readouterr().err
    assert "XUtnFEMI" not in err and "wJalr" not in err


# ------------------------------------------------------------------------------ retries

from fsspec.implementations.memory import MemoryFileSystem  # noqa: E402


class FlakyFS(MemoryFileSystem):
    """memory:// that raises the exceptions queued in `plan` before doing the real call."""

    protocol = ("flaky",)
    store: dict = {}
    pseudo_dirs = [""]
    plan: list = []
    calls: list = []

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(str(path).removeprefix("flaky://"))

    def _inject(self, op):
        FlakyFS.calls.append(op)
        if FlakyFS.plan:
            raise FlakyFS.plan.pop(0)

    def cat_file(self, path, start=None, end=None, **kw):
        self._inject("read")
        return super().cat_file(path, start, end, **kw)

    def pipe_file(self, path, value, *args, **kw):
        self._inject("write")
        return super().pipe_file(path, value, *args, **kw)


@pytest.fixture
def flaky(monkeypatch):
    import fsspec
    fsspec.register_implementation("flaky", FlakyFS, clobber=True)
    FlakyFS.plan, FlakyFS.calls = [], []
    sleeps = []
    monkeypatch.setattr(storage.time, "sleep", sleeps.append)
    yield sleeps
    FlakyFS.plan.clear()


def test_transient_errors_are_retried_with_backoff_then_succeed(flaky, capsys):
    storage.configure(timeout_s=5, retries=3, backoff_s=0.5)
    url = "flaky://k:fLaKySeCrEt@host/run/x.bin"
    storage.write_bytes(url, b"payload")
    FlakyFS.plan = [ConnectionResetError("reset by peer"), TimeoutError("timed out")]
    FlakyFS.calls.clear()
    assert storage.read_bytes(url) == b"payload"
    assert FlakyFS.calls == ["read"] * 3 and flaky == [0.5, 1.0]  # backoff doubles
    err = capsys.readouterr().err
    assert "waiting 0.5 s, then attempt 2 of 4" in err and "attempt 3 of 4" in err
    assert "read flaky://***@host/run/x.bin" in err and "fLaKySeCrEt" not in err
    # 5xx-like answers (s3fs maps 503 SlowDown to EBUSY) are transient too
    import errno
    FlakyFS.plan = [OSError(errno.EBUSY, "SlowDown")]
    storage.write_bytes(url, b"again")
    assert storage.read_bytes(url) == b"again"


def test_persistent_failure_gives_up_after_retries_plus_one_attempts(flaky):
    storage.configure(timeout_s=5, retries=2, backoff_s=0.1)
    url = "flaky://host/run/y.bin"
    FlakyFS.plan = [ConnectionRefusedError("refused")] * 10
    with pytest.raises(storage.StorageError) as info:
        storage.write_bytes(url, b"x")
    msg = str(info.value)
    assert FlakyFS.calls == ["write"] * 3 and flaky == [0.1, 0.2]
    assert "flaky://host/run/y.bin" in msg and "3 attempt(s)" in msg and "refused" in msg
    assert "storage.retries=2" in msg


@pytest.mark.parametrize("exc,kind", [(FileNotFoundError("no such key"), FileNotFoundError),
                                      (PermissionError("AccessDenied"), PermissionError),
                                      (ValueError("Invalid bucket name"), storage.StorageError)])
def test_permanent_errors_are_not_retried(flaky, exc, kind):
    storage.configure(retries=3, backoff_s=0.1)
    url = "flaky://host/run/z.bin"
    storage.write_bytes(url, b"x")
    FlakyFS.calls.clear()
    FlakyFS.plan = [exc]
    with pytest.raises(kind) as info:
        storage.read_bytes(url)
    assert isinstance(info.value, storage.StorageError)
    assert FlakyFS.calls == ["read"] and flaky == []
    assert "flaky://host/run/z.bin" in str(info.value)


def test_configure_validates():
    for bad in ({"timeout_s": 0}, {"timeout_s": float("inf")}, {"retries": -1},
                {"retries": 1.5}, {"backoff_s": -1}, {"backoff_s": float("nan")}):
        with pytest.raises(ValueError):
            storage.configure(**bad)
    storage.configure(timeout_s=7, retries=0, backoff_s=0)
    assert storage.settings() == {"timeout_s": 7.0, "retries": 0, "backoff_s": 0.0}


def test_s3_options_carry_the_timeout():
    storage.configure(timeout_s=9, retries=1)
    opts = storage._options("s3://bucket/key")["config_kwargs"]
    assert opts["connect_timeout"] == opts["read_timeout"] == 9
    assert opts["retries"] == {"total_max_attempts": 1}
    assert storage._options("memory://x/y") == {}


def test_frozen_s3_server_is_reported_within_bounded_time(tmp_path, monkeypatch):
    """SIGSTOP of a dedicated moto server: reads and writes fail with a StorageError naming the
    URL after retries + 1 attempts of about timeout_s each, instead of minutes of silence."""
    import signal
    import subprocess
    import sys
    pytest.importorskip("s3fs")
    boto3 = pytest.importorskip("boto3")
    from conftest import _wait_for_http, clear_fsspec_caches, free_port, stop_process
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with open(tmp_path / "moto.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                 str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_http(endpoint + "/", proc)
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
                     "AWS_EC2_METADATA_DISABLED": "true"}.items():
            monkeypatch.setenv(k, v)
        clear_fsspec_caches()
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="frozen-bucket")
        url = "s3://frozen-bucket/run/state.pt"
        storage.write_bytes(url, b"state")
        os.kill(proc.pid, signal.SIGSTOP)
        took = {}
        # NOTE: the read with timeout_s=2, the write with timeout_s=4: each waits its two attempts
        # out (at least 2 x timeout_s) and the shorter timeout ends first. Orderings, not a
        # wall-clock bound: the time follows storage.timeout_s, not botocore's 60 s defaults.
        for name, timeout_s, call in (("read", 2, lambda: storage.read_bytes(url)),
                                      ("write", 4, lambda: storage.write_bytes(url, b"new"))):
            storage.configure(timeout_s=timeout_s, retries=1, backoff_s=1.0)
            t0 = time.monotonic()
            with pytest.raises(storage.StorageError) as info:
                call()
            took[name] = time.monotonic() - t0
            print(f"frozen server: {name} with storage.timeout_s={timeout_s} failed after "
                  f"{took[name]:.1f} s: {info.value}")
            assert url in str(info.value) and "2 attempt(s)" in str(info.value)
            assert took[name] >= 2 * timeout_s, took
        assert took["read"] < took["write"], took
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        stop_process(proc)
        clear_fsspec_caches()
