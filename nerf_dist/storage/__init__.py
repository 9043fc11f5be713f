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

The package: :mod:`.redact` (credentials), :mod:`.policy` (settings, errors, the retry loop) and
:mod:`.files` (the operations).
"""
from __future__ import annotations

import time  # noqa: F401 - tests patch storage.time.sleep

from .files import (_options, atomic_write, check_writable, exists, is_url, join, listdir,
                    makedirs, read_bytes, read_range, read_text, remove, write_bytes, write_text)
from .policy import (StorageError, StorageNotFoundError, StoragePermissionError, configure,
                     is_transient, retry, settings)
from .redact import redact, redact_tree, scrub

__all__ = ["StorageError", "StorageNotFoundError", "StoragePermissionError", "_options",
           "atomic_write", "check_writable", "configure", "exists", "is_transient", "is_url",
           "join", "listdir", "makedirs", "read_bytes", "read_range", "read_text", "redact",
           "redact_tree", "remove", "retry", "scrub", "settings", "write_bytes", "write_text"]
