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


def test_s3_unreachable_endpoint_fails_fast_naming_the_url(s3_unreachable):
    t0 = time.monotonic()
    with pytest.raises(storage.StorageError, match=r"s3://nerf-ckpt/run.*not reachable"):
        storage.check_writable("s3://nerf-ckpt/run")
    assert time.monotonic() - t0 < 20
