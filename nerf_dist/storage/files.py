"""File operations on a path or URL: local paths through ``os``, URLs through fsspec under the
retry policy of :mod:`.policy` (see :mod:`nerf_dist.storage`)."""
from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import uuid

from .policy import _SETTINGS, StorageError, is_transient, retry
from .redact import _why, redact

def is_url(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def _local(path: str) -> str:
    p = str(path)
    return p[len("file://"):] if p.startswith("file://") else p


def _options(url: str) -> dict:
    """fsspec storage options that carry the timeout to backends that take one.

    s3fs: botocore's connect/read timeouts, and one attempt per call (botocore's own retries and
    s3fs' would multiply ours; a frozen server then took minutes to report). A user's own
    fsspec config for s3 (config_kwargs) is kept; only these keys are overridden.
    """
    proto = str(url).split("://", 1)[0].lower()
    if proto not in ("s3", "s3a"):
        return {}
    try:
        # NOTE: lazy because fsspec (asyncio with it) costs ~0.1 s to import in every command,
        # `nerf-dist status` included, and only URLs ("://") ever need it.
        from fsspec.config import conf
        base = dict((conf.get(proto) or {}).get("config_kwargs") or {})
    except ImportError:
        base = {}
    t = _SETTINGS["timeout_s"]
    base.update(connect_timeout=t, read_timeout=t, retries={"total_max_attempts": 1})
    return {"config_kwargs": base}


def _fs(url: str):
    import fsspec  # NOTE: lazy because only URLs need fsspec (see _options)
    try:
        fs, p = fsspec.core.url_to_fs(url, **_options(url))
    except Exception as e:  # noqa: BLE001 - unknown protocol, missing backend, bad URL
        raise StorageError(f"cannot open storage {redact(url)}: {_why(e)}") from None
    if "S3FileSystem" in {c.__name__ for c in type(fs).__mro__}:
        fs.retries = 1  # NOTE: s3fs retries each call 5 times on its own; we retry instead
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


# A write must move at least this much per timeout_s (0.5 MiB/s at the default 60 s) to count as alive.
_WRITE_BYTES_PER_TIMEOUT = 32 << 20


def _put(fs, p: str, data: bytes) -> None:
    """One whole-object write, with a deadline for async backends.

    NOTE: botocore sends PUT bodies with "Expect: 100-continue", and aiohttp waits for the 100
    answer without any read timeout: against a frozen server a write hung for ever although
    reads timed out. Async backends (s3fs, gcsfs, http) therefore run the write under fsspec's
    own deadline, which cancels it: timeout_s per started 32 MiB.
    """
    try:
        # NOTE: lazy because only URLs need fsspec (see _options)
        from fsspec.asyn import AsyncFileSystem, sync
    except ImportError:  # pragma: no cover - fsspec always has it
        AsyncFileSystem = ()
    if isinstance(fs, AsyncFileSystem) and hasattr(fs, "_pipe_file"):
        deadline = _SETTINGS["timeout_s"] * (1 + len(data) // _WRITE_BYTES_PER_TIMEOUT)
        try:
            sync(fs.loop, fs._pipe_file, p, data, timeout=deadline)
        except TimeoutError as e:  # fsspec's FSTimeoutError carries no message
            raise TimeoutError(f"no answer within {deadline:g} s") from e
        return
    fs.pipe_file(p, data)


# Object stores: "directories" are key prefixes; makedirs on them is a no-op, and must not
# create a bucket by accident (a typo in a bucket name should fail, not create one).
_OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2"}


def _is_object_store(fs) -> bool:
    proto = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return any(p in _OBJECT_STORES for p in proto)


def join(base: str, *parts: str) -> str:
    if is_url(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(_local(base), *parts)


def exists(path: str) -> bool:
    if is_url(path):
        fs, p = _fs(path)

        def op():
            _fresh(fs, p)
            return fs.exists(p)
        return retry("check", path, op)
    return os.path.exists(_local(path))


def makedirs(path: str) -> None:
    if is_url(path):
        fs, p = _fs(path)
        if _is_object_store(fs):
            return

        def op():
            try:
                fs.makedirs(p, exist_ok=True)
            except Exception as e:  # noqa: BLE001 - some backends have no real directories
                if is_transient(e):
                    raise
        retry("create folder", path, op)
        return
    os.makedirs(_local(path), exist_ok=True)


def listdir(path: str) -> list[str]:
    """Base names directly under path (empty when it does not exist)."""
    if is_url(path):
        fs, p = _fs(path)

        def op():
            try:
                fs.invalidate_cache(p)
            except Exception:  # noqa: BLE001
                pass
            try:
                return sorted(posixpath.basename(x.rstrip("/")) for x in fs.ls(p, detail=False))
            except FileNotFoundError:
                return []
        return retry("list", path, op)
    try:
        return sorted(os.listdir(_local(path)))
    except FileNotFoundError:
        return []


def read_bytes(path: str, writable: bool = False) -> bytes | bytearray:
    """The whole file. writable: return a bytearray (numpy/torch can wrap it without a copy and
    without a read-only warning; local files are read straight into it)."""
    if is_url(path):
        fs, p = _fs(path)

        def op():
            _fresh(fs, p)
            return fs.cat_file(p)
        data = retry("read", path, op)
        return bytearray(data) if writable else data
    with open(_local(path), "rb") as f:
        if not writable:
            return f.read()
        buf = bytearray(os.fstat(f.fileno()).st_size)
        got = f.readinto(buf)
        rest = f.read()  # NOTE: a file that grew after fstat: keep everything, as read() would
        if got < len(buf):
            del buf[got:]
        return buf + rest if rest else buf


def read_range(path: str, start: int, end: int) -> bytes:
    """Bytes [start, end) of a file (an HTTP range request for URLs); StorageError unless exactly
    end - start bytes came back (a truncated answer or a short file)."""
    if is_url(path):
        fs, p = _fs(path)

        def op():
            _fresh(fs, p)
            data = fs.cat_file(p, start=start, end=end)
            if len(data) != end - start:
                raise ConnectionError(f"short read: {len(data)} of {end - start} bytes")
            return data
        return retry("read", path, op)
    with open(_local(path), "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    if len(data) != end - start:
        raise StorageError(f"cannot read {redact(path)}: bytes {start}..{end} asked, "
                           f"{len(data)} there")
    return data


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


@contextlib.contextmanager
def atomic_write(path: str):
    """Write a local file in one step: yields a temporary path beside path (same folder, a hidden
    name ``.NAME.tmp-XXXXXXXX`` ending in path's own extension, so writers that choose a format
    by extension still can); on a clean exit it replaces path (``os.replace``), on an error it is
    removed. The one atomic write: a reader sees the old file or the new one, never half of one.

        with storage.atomic_write(path) as tmp, open(tmp, "w") as f:
            json.dump(doc, f)
    """
    p = _local(path)
    d, name = os.path.split(os.path.abspath(p))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{name}.tmp-{uuid.uuid4().hex[:8]}{os.path.splitext(name)[1]}")
    try:
        yield tmp
        os.replace(tmp, p)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file. Local writes go through :func:`atomic_write` (flushed to disk before
    the rename); an object-store PUT of one object is atomic by itself (and a retried PUT
    rewrites the same bytes)."""
    if is_url(path):
        fs, p = _fs(path)

        retry("write", path, lambda: _put(fs, p, bytes(data)))
        return
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def remove(path: str, recursive: bool = False) -> None:
    if is_url(path):
        fs, p = _fs(path)

        def op():
            try:
                fs.rm(p, recursive=recursive)
            except FileNotFoundError:
                pass
        retry("delete", path, op)
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
                           f"{_why(e)}") from None
