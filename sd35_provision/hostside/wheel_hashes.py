"""``{file name: sha256}`` of the wheels in a directory, as one JSON line, through a stat-keyed hash cache.

Run on hosts by the WheelHashes fact (sd35_provision/facts/venv.py) as
``python3 -c <program> DIRECTORY``. A CUDA wheelhouse is 3-4 GB: hashing it
on every ``plan``/``drift`` would take longer than the rest of the run, so
each wheel's digest is kept in ``DIRECTORY/.sd35-hashes.json`` keyed by its
(size, mtime, ctime, inode, device), as the model check keeps its own
(hostside/manifests.py): a wheel is read again only when its stat changed,
and ctime cannot be set back by hand, so a wheel modified in place is
noticed. A missing directory gives ``{}``. Standard library only, Python 3.8+.
"""

from __future__ import annotations

import json
import os
import sys

from sd35_provision.hostside.manifests import HashCache

CACHE_NAME = ".sd35-hashes.json"


def wheel_hashes(directory: str) -> dict[str, str]:
    if not os.path.isdir(directory):
        return {}
    cache = HashCache(os.path.join(directory, CACHE_NAME))
    hashes = {}
    for name in sorted(os.listdir(directory)):
        full = os.path.join(directory, name)
        if not name.endswith(".whl") or not os.path.isfile(full):
            continue
        hashes[name] = cache.digests(name, full, os.stat(full), ("sha256",))["sha256"]
    # Forget wheels no longer there, then remember (a read-only directory only costs a rehash next time).
    cache.entries = {name: cache.entries[name] for name in hashes if name in cache.entries}
    try:
        cache.save()
    except OSError:
        pass
    return hashes


if __name__ == "__main__":
    print(json.dumps(wheel_hashes(sys.argv[1]), sort_keys=True))
