"""One seam for files: local paths through ``os``, anything with ``://`` through fsspec.

All functions take a path or URL string. Credentials are never passed here: fsspec backends read
them from the environment or their own configuration files (AWS_* variables, ~/.aws, fsspec's
config). A URL that carries ``user:password@`` anyway is only ever shown redacted: :func:`redact`
for one URL, :func:`scrub` for any text (error messages of fsspec/botocore included) and
:func:`redact_tree` for configs and status files; every error raised here is scrubbed.

Remote calls (URLs) have a timeout and a bounded retry: :func:`configure` sets ``timeout_s``
(passed to the backend where it takes one: botocore's connect/read timeouts for s3://),
``retries`` (extra attempts after the first, for transient errors only: timeouts, refused or
reset connections, 5xx/throttling answers; never for missing files or denied access) and
``backoff_s`` (wait before the first retry, doubling after each). While waiting to retry, a
line on stderr says what for and which attempt comes next; when the attempts run out a
StorageError names the (redacted) URL and the number of attempts. :func:`retry` is that loop,
for callers that re-read bytes failing their own check too (the ray cache). Local paths are
plain ``os`` calls (network file systems mounted locally retry in the kernel); local files are
written through :func:`atomic_write` (a temporary name, then one rename).
"""
from __future__ import annotations

import contextlib
import errno
import math
import os
import posixpath
import re
import shutil
import sys
import time
import uuid
from urllib.parse import unquote

_SETTINGS = {"timeout_s": 60.0, "retries": 3, "backoff_s": 1.0}


class StorageError(OSError):
    """A storage location could not be reached, read or written; the message names the URL."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """A storage object does not exist (still a FileNotFoundError for callers that expect one)."""


class StoragePermissionError(StorageError, PermissionError):
    """Storage refused access (still a PermissionError); credentials come from the environment."""


def configure(timeout_s: float = 60.0, retries: int = 3, backoff_s: float = 1.0) -> None:
    """Set the timeout per remote call, extra attempts for transient errors, and the first backoff.

    Module-wide (every later call in this process); defaults are the config's storage.* defaults.
    """
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) \
            or not math.isfinite(timeout_s) or timeout_s <= 0:
        raise ValueError(f"storage.timeout_s must be a finite number > 0, got {timeout_s!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"storage.retries must be a whole number >= 0, got {retries!r}")
    if isinstance(backoff_s, bool) or not isinstance(backoff_s, (int, float)) \
            or not math.isfinite(backoff_s) or backoff_s < 0:
        raise ValueError(f"storage.backoff_s must be a finite number >= 0, got {backoff_s!r}")
    _SETTINGS.update(timeout_s=float(timeout_s), retries=int(retries), backoff_s=float(backoff_s))


def settings() -> dict:
    """The current timeout_s, retries and backoff_s (a copy)."""
    return dict(_SETTINGS)


def is_url(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def _local(path: str) -> str:
    p = str(path)
    return p[len("file://"):] if p.startswith("file://") else p


# ------------------------------------------------------------------------------ credentials

# scheme://user:password@ or scheme://token@ (the password may hold "/", as AWS secrets do).
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)"
                           r"(?P<user>[^/\s:@'\"<>]+)(?::(?P<pw>[^\s@'\"<>]*))?@")
# user:password@host without a scheme, as fsspec and botocore print paths ("/u:pw@host/k",
# 'Invalid bucket name "KEY:SECRET@bucket"').
_BARE_USERINFO = re.compile(r"(?<![A-Za-z0-9._~%+\-])(?P<user>[A-Za-z0-9._~%+\-]+):"
                            r"(?P<pw>[^\s@'\"<>/:]+)@(?=[A-Za-z0-9\[])")
# Secrets seen in URLs by this process: later text may show them in other shapes (a bucket name,
# a decoded path), so they are replaced wherever they appear. Short ones would hit ordinary words.
_SECRETS: set[str] = set()
_MIN_SECRET = 4


def _remember(secret: str | None) -> None:
    if not secret:
        return
    for s in {secret, unquote(secret), *secret.split("/")}:
        if len(s) >= _MIN_SECRET:
            _SECRETS.add(s)


def _url_repl(m: re.Match) -> str:
    pw = m.group("pw")
    if pw is not None and "/" in pw and pw.split("/", 1)[0].isdigit():
        return m.group(0)  # host:port/path@...: no credentials, an "@" further on in the path
    _remember(pw if pw is not None else m.group("user"))
    return f"{m.group('scheme')}***@"


def _bare_repl(m: re.Match) -> str:
    _remember(m.group("pw"))
    return "***@"


def scrub(text) -> str:
    """text with every credential removed: ``scheme://user:password@`` and ``scheme://token@``
    become ``scheme://***@``, ``user:password@host`` in paths becomes ``***@host``, and secrets
    seen earlier in this process become ``***`` wherever they appear."""
    t = _URL_USERINFO.sub(_url_repl, str(text))
    t = _BARE_USERINFO.sub(_bare_repl, t)
    for s in sorted(_SECRETS, key=len, reverse=True):
        if s in t:
            t = t.replace(s, "***")
    return t


def redact(url: str) -> str:
    """URL with any user:password@ part removed (for messages and logs)."""
    return scrub(str(url))


def redact_tree(obj):
    """A copy of a nested dict/list/tuple with every string (keys too) passed through
    :func:`scrub`; other values are returned as they are (not copied)."""
    if isinstance(obj, str):
        return scrub(obj)
    if isinstance(obj, dict):
        return {redact_tree(k): redact_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_tree(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(redact_tree(v) for v in obj)
    return obj


def _why(e: BaseException) -> str:
    """'Type: message' of an exception, scrubbed and cut to one readable line."""
    msg = " ".join(str(e).split())
    if len(msg) > 400:
        msg = msg[:400] + " ..."
    return scrub(f"{type(e).__name__}: {msg}" if msg else type(e).__name__)


# ------------------------------------------------------------------------------ retries

_NEVER_RETRY = (FileNotFoundError, PermissionError, FileExistsError, IsADirectoryError,
                NotADirectoryError)
_TRANSIENT_ERRNOS = {getattr(errno, n) for n in (
    "ETIMEDOUT", "ECONNREFUSED", "ECONNRESET", "ECONNABORTED", "EHOSTUNREACH", "ENETUNREACH",
    "ENETDOWN", "ENETRESET", "EPIPE", "EAGAIN", "EBUSY", "EREMOTEIO") if hasattr(errno, n)}
# Transport errors of botocore, aiohttp, urllib3 and fsspec, by class name (no import needed).
_TRANSIENT_NAMES = {"HTTPClientError", "EndpointConnectionError", "ConnectTimeoutError",
                    "ReadTimeoutError", "ConnectionClosedError", "ProxyConnectionError",
                    "ClientConnectionError", "ClientConnectorError", "ServerDisconnectedError",
                    "ServerTimeoutError", "ClientPayloadError", "IncompleteRead",
                    "ResponseParserError", "FSTimeoutError", "ProtocolError", "NewConnectionError"}


def _http_status(e: BaseException) -> int | None:
    for x in (e, e.__cause__, e.__context__):
        if x is None:
            continue
        resp = getattr(x, "response", None)
        if isinstance(resp, dict):
            code = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(code, int):
                return code
        code = getattr(x, "status", None)
        if isinstance(code, int) and 100 <= code < 600:
            return code
    return None


def is_transient(e: BaseException) -> bool:
    """True for errors worth retrying: timeouts, refused/reset connections, 5xx and throttling
    answers. Missing files, denied access and other client errors are never retried."""
    if isinstance(e, _NEVER_RETRY):
        return False
    if isinstance(e, (TimeoutError, ConnectionError)):
        return True
    if any(c.__name__ in _TRANSIENT_NAMES for c in type(e).__mro__):
        return True
    if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
        return True
    status = _http_status(e)
    return status is not None and (status >= 500 or status == 429)


def _log(line: str) -> None:
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank not in (None, "0") else ""
    print(f"{prefix}nerf-dist storage: {scrub(line)}", file=sys.stderr, flush=True)


def _translate(e: Exception, what: str, url: str) -> StorageError:
    """A scrubbed StorageError (keeping FileNotFoundError / PermissionError-ness) for e."""
    if isinstance(e, StorageError):
        return e
    cls = (StorageNotFoundError if isinstance(e, FileNotFoundError) else
           StoragePermissionError if isinstance(e, PermissionError) else StorageError)
    return cls(f"cannot {what} {redact(url)}: {_why(e)}")


def _gave_up(e: BaseException, what: str, url: str, attempts: int) -> StorageError:
    return StorageError(f"cannot {what} {redact(url)}: gave up after {attempts} attempt(s) "
                        f"(storage.timeout_s={_SETTINGS['timeout_s']:g}, storage.retries="
                        f"{_SETTINGS['retries']}); last error: {_why(e)}")


def _waiting(e: BaseException, what: str, url: str, delay: float, attempt: int,
             attempts: int) -> str:
    return (f"{what} {redact(url)} failed ({_why(e)}); waiting {delay:.1f} s, then attempt "
            f"{attempt} of {attempts}")


def retry(what: str, url: str, fn, retry_if=is_transient, attempts: int | None = None,
          gave_up=_gave_up, waiting=_waiting):
    """fn() (one call on url) under the retry policy; errors come out scrubbed. The one retry loop.

    attempts: how many calls at most (default storage.retries + 1); the wait before the first
    retry is storage.backoff_s, doubling after each. retry_if(e): whether e is worth another
    call (default :func:`is_transient`); any other error is raised as a StorageError at once (a
    StorageError, e.g. a caller's own subclass, as it is). Before each wait a line on stderr
    says ``waiting(e, what, url, delay, next attempt, attempts)``; when the attempts run out,
    ``gave_up(e, what, url, attempts)`` is raised (default: a StorageError naming the URL and
    the attempts). Callers re-read bytes that fail their own check by raising an error that
    retry_if accepts (a shard's sha256, a part block's crc32).

    NOTE: the original exception is not chained (raise ... from None): its text and its own
    causes may hold the credentials this module promises never to print.
    """
    attempts = _SETTINGS["retries"] + 1 if attempts is None else max(1, int(attempts))
    delay = _SETTINGS["backoff_s"]
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - classified below; nothing passes unscrubbed
            if not retry_if(e):
                raise _translate(e, what, url) from None
            if attempt == attempts:
                raise gave_up(e, what, url, attempts) from None
            _log(waiting(e, what, url, delay, attempt + 1, attempts))
            time.sleep(delay)
            delay *= 2


# ------------------------------------------------------------------------------ backends

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
