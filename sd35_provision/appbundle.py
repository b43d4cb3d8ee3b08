"""The service's own code, packed for the host: ``sd35_provision/service`` and nothing else.

The tar is byte-for-byte reproducible (sorted names, fixed times and owners),
so its hash names the code: the same code gives the same release, and any
change to it makes a new release (and a restart).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from functools import lru_cache
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
# The code, and the playground page's files that the service serves itself (service/static/).
SHIPPED_SUFFIXES = frozenset({".py", ".html", ".js", ".css"})


def _files() -> list[Path]:
    service = sorted(
        p
        for p in (PACKAGE_ROOT / "service").rglob("*")
        if p.suffix in SHIPPED_SUFFIXES and p.is_file() and "__pycache__" not in p.parts
    )
    return [PACKAGE_ROOT / "__init__.py", *service]


@lru_cache(maxsize=1)
def service_bundle() -> tuple[bytes, str]:
    """(tar bytes, sha256 hex) of the service package, paths relative to the app dir."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in _files():
            data = path.read_bytes()
            info = tarfile.TarInfo(f"sd35_provision/{path.relative_to(PACKAGE_ROOT).as_posix()}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    return data, hashlib.sha256(data).hexdigest()
