"""Where the control machine keeps the hashes of its own directories between runs.

A wheelhouse and a pushed model are read by every ``plan``, ``drift`` and ``apply``; their
stat-keyed hash caches (``hostside.manifests.HashCache``) live under
``$XDG_CACHE_HOME/sd35-provision/<kind>/``, one file per directory.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def hash_cache_path(directory: Path, kind: str) -> Path:
    """The cache file of ``directory``'s hashes (``kind``: "wheel-hashes", "push-hashes"), its folder made.

    Best effort: where the folder cannot be made, ``HashCache.save`` keeps nothing and the
    next run only hashes again.
    """
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sd35-provision" / kind
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass
    return base / f"{hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:16]}.json"
