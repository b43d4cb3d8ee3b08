"""What this service process runs, stated at start: the running record.

The files a service reads (its unit, its environment files, the API key file)
can be rewritten while it runs; only a restart makes it read them again. So
at start the service writes down the release it runs (where its ``current``
link points) and the SHA-256 of each file it read, to a file under /run
(``SD35_RUNNING_RECORD``, in systemd's RuntimeDirectory, so it goes away when
the service stops) and answers the same on ``/readyz``. The provisioner
compares it with what the spec wants: a difference is drift, and ``apply``
restarts. Only digests are recorded, never a file's content.

The unit says what to record (``render_unit``): ``SD35_RELEASE_LINK`` (the
``current`` link) and ``SD35_RUNNING_FILES`` (space-separated paths); the API
key file named by ``SD35_API_KEY_FILE`` is added.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

RECORD_VERSION = 1


def file_digest(path: str) -> str | None:
    """SHA-256 of the file's bytes; None when it cannot be read (absent)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def release_of(link: str | None) -> str | None:
    """The release id ``link`` points at (``releases/<id>`` -> ``<id>``); None without a link."""
    if not link:
        return None
    try:
        target = os.readlink(link)
    except OSError:
        return None
    return target.rstrip("/").rsplit("/", 1)[-1]


def running_record(release_link: str | None, files: Iterable[str], pid: int | None = None) -> dict[str, Any]:
    """The record of this process: release, digest per file read, pid and start time."""
    return {
        "version": RECORD_VERSION,
        "pid": os.getpid() if pid is None else pid,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "release": release_of(release_link),
        "files": {path: file_digest(path) for path in dict.fromkeys(files)},
    }


def write_running_record(path: str, record: Mapping[str, Any]) -> None:
    """Write the record atomically (a reader never sees half of it)."""
    staging = f"{path}.new"
    with open(staging, "w", encoding="utf-8") as handle:
        json.dump(record, handle, sort_keys=True)
        handle.write("\n")
    os.replace(staging, path)
