"""The model's files checked against their manifest: missing, Git-LFS pointers, wrong SHA-256.

Hashing tens of GB on every ``drift`` would take minutes, so the host keeps
a hash cache beside the manifest, keyed by (size, mtime, inode) like git's
index: only files whose stat changed are hashed again, and a file edited
by hand always is.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field

from pyinfra.api import FactBase

# Runs with the host's python3, standard library only.
_VERIFY = r'''
import hashlib, json, os, sys
directory, manifest_path, cache_path = sys.argv[1], sys.argv[2], sys.argv[3]
inline = sys.stdin.read().strip()
try:
    manifest = json.loads(inline) if inline else json.load(open(manifest_path))
except (OSError, ValueError):
    print(json.dumps({"manifest": False})); sys.exit(0)
try:
    cache = json.load(open(cache_path))
except (OSError, ValueError):
    cache = {}
report = {"manifest": True, "exists": os.path.isdir(directory), "missing": [], "pointers": [], "mismatched": [], "ok": 0}
fresh = {}
for name, want in sorted(manifest.items()):
    path = os.path.join(directory, name)
    try:
        st = os.stat(path)
    except OSError:
        report["missing"].append(name); continue
    key = "%d:%d:%d" % (st.st_size, st.st_mtime_ns, st.st_ino)
    with open(path, "rb") as handle:
        head = handle.read(100)
    if head.startswith(b"version https://git-lfs.github.com/spec/v1") and want["size"] != st.st_size:
        report["pointers"].append(name); continue
    digest = cache.get(name, {}).get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                h.update(block)
        digest = h.hexdigest()
    fresh[name] = {key: digest}
    if st.st_size != want["size"] or digest != want["sha256"]:
        report["mismatched"].append(name)
    else:
        report["ok"] += 1
if os.path.isdir(os.path.dirname(cache_path)):
    try:
        with open(cache_path + ".partial", "w") as handle:
            json.dump(fresh, handle)
        os.replace(cache_path + ".partial", cache_path)
    except OSError:
        pass
print(json.dumps(report))
'''


@dataclass(frozen=True)
class ModelCheck:
    manifest: bool  # False: no manifest on the host yet (never fetched)
    exists: bool = False
    missing: tuple[str, ...] = ()
    pointers: tuple[str, ...] = ()  # Git-LFS pointer files where weights should be
    mismatched: tuple[str, ...] = ()  # wrong size or SHA-256
    ok: int = 0

    @property
    def broken(self) -> tuple[str, ...]:
        return self.missing + self.pointers + self.mismatched

    @property
    def healthy(self) -> bool:
        return self.manifest and self.exists and not self.broken

    def problems(self) -> list[str]:
        lines = [f"{name} is missing" for name in self.missing]
        lines += [f"{name} is a Git-LFS pointer file, not the weights" for name in self.pointers]
        lines += [f"{name} does not match its SHA-256" for name in self.mismatched]
        return lines


class ModelFiles(FactBase[ModelCheck]):
    """
    Checks ``directory`` against a manifest: ``manifest`` (JSON text, e.g. of a
    push) or else the file at ``manifest_path`` on the host.
    """

    def command(self, directory: str, manifest_path: str, manifest: str | None = None) -> str:
        cache = manifest_path.removesuffix(".json") + ".hashes"
        args = " ".join(shlex.quote(arg) for arg in (directory, manifest_path, cache))
        payload = manifest or ""
        return (f"command -v python3 >/dev/null || {{ echo '{{\"manifest\": false}}'; exit 0; }}; "
                f"python3 -c {shlex.quote(_VERIFY)} {args} <<'SD35_MANIFEST'\n{payload}\nSD35_MANIFEST")

    def process(self, output: list[str]) -> ModelCheck:
        try:
            data = json.loads(output[-1]) if output else {}
        except json.JSONDecodeError:
            data = {}
        if not data.get("manifest"):
            return ModelCheck(manifest=False)
        return ModelCheck(manifest=True, exists=data.get("exists", False), missing=tuple(data.get("missing", ())),
                          pointers=tuple(data.get("pointers", ())), mismatched=tuple(data.get("mismatched", ())),
                          ok=data.get("ok", 0))

    @staticmethod
    def default() -> ModelCheck:
        return ModelCheck(manifest=False)
