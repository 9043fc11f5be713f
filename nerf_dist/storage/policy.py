"""The storage settings (timeout, retries, backoff), its errors and the one retry loop (see
:mod:`nerf_dist.storage`)."""
from __future__ import annotations

import errno
import math
import os
import sys
import time

from .redact import _why, redact, scrub

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
