"""Credentials never printed: :func:`scrub` for any text, :func:`redact` for one URL,
:func:`redact_tree` for configs and status files (see :mod:`nerf_dist.storage`)."""
from __future__ import annotations

import re
from urllib.parse import unquote

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
