"""One seam for files: local paths through ``os``, anything with ``://`` through fsspec.

All functions take a path or URL string. Credentials are never passed here: fsspec backends read
them from the environment or their own configuration files.
"""
from __future__ import annotations

import os
import posixpath
import shutil
import uuid


class StorageError(OSError):
    """A storage location could not be reached, read or written; the message names the URL."""


def is_url(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def _local(path: str) -> str:
    p = str(path)
    return p[len("file://"):] if p.startswith("file://") else p


def _fs(url: str):
    import fsspec
    try:
        fs, p = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise StorageError(f"cannot open storage {redact(url)}: {e}") from e
    return fs, p


def _fresh(fs, p: str) -> None:
    """Drop fsspec's listing cache for p and its parent.

    NOTE: s3fs answers info/exists/open from a cached parent listing, so a marker written by
    another process after that listing would look missing. Checkpoint markers must be seen.
    """
    try:
        fs.invalidate_cache(p)
        fs.invalidate_cache(posixpath.dirname(p.rstrip("/")))
    except Exception:  # noqa: BLE001 - caching is an optimisation, never an error
        pass


# Object stores: "directories" are key prefixes; makedirs on them is a no-op, and must not
# create a bucket by accident (a typo in a bucket name should fail, not create one).
_OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2"}


def _is_object_store(fs) -> bool:
    proto = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return any(p in _OBJECT_STORES for p in proto)


def redact(url: str) -> str:
    """URL with any user:password@ part removed (for messages and logs)."""
    u = str(url)
    if "://" in u and "@" in u.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = u.split("://", 1)
        host_part, _, tail = rest.partition("/")
        return f"{scheme}://***@{host_part.rsplit('@', 1)[1]}/{tail}"
    return u


def join(base: str, *parts: str) -> str:
    if is_url(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(_local(base), *parts)


def exists(path: str) -> bool:
    if is_url(path):
        fs, p = _fs(path)
        _fresh(fs, p)
        return fs.exists(p)
    return os.path.exists(_local(path))


def makedirs(path: str) -> None:
    if is_url(path):
        fs, p = _fs(path)
        if _is_object_store(fs):
            return
        try:
            fs.makedirs(p, exist_ok=True)
        except Exception:  # object stores have no real directories
            pass
        return
    os.makedirs(_local(path), exist_ok=True)


def listdir(path: str) -> list[str]:
    """Base names directly under path (empty when it does not exist)."""
    if is_url(path):
        fs, p = _fs(path)
        try:
            fs.invalidate_cache(p)
        except Exception:
            pass
        try:
            return sorted(posixpath.basename(x.rstrip("/")) for x in fs.ls(p, detail=False))
        except FileNotFoundError:
            return []
    try:
        return sorted(os.listdir(_local(path)))
    except FileNotFoundError:
        return []


def read_bytes(path: str) -> bytes:
    if is_url(path):
        fs, p = _fs(path)
        _fresh(fs, p)
        with fs.open(p, "rb") as f:
            return f.read()
    with open(_local(path), "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file. Local writes go to a temp file then rename (atomic); an object-store
    PUT of one object is atomic by itself."""
    if is_url(path):
        fs, p = _fs(path)
        with fs.open(p, "wb") as f:
            f.write(data)
        return
    p = _local(path)
    os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
    tmp = f"{p}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def remove(path: str, recursive: bool = False) -> None:
    if is_url(path):
        fs, p = _fs(path)
        try:
            fs.rm(p, recursive=recursive)
        except FileNotFoundError:
            pass
        return
    p = _local(path)
    if os.path.isdir(p):
        shutil.rmtree(p, ignore_errors=True)
    elif os.path.exists(p):
        os.remove(p)


def check_writable(path: str) -> None:
    """Write and delete a probe object under path; raise StorageError naming path if that fails."""
    probe = join(path, f".write-probe-{uuid.uuid4().hex[:8]}")
    try:
        makedirs(path)
        write_bytes(probe, b"ok")
        remove(probe)
    except Exception as e:  # noqa: BLE001 - any backend error means unusable
        raise StorageError(f"storage location {redact(path)} is not writable or not reachable: "
                           f"{type(e).__name__}: {e}") from e
