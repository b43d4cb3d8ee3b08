"""The model's files checked against their manifest: missing, Git-LFS pointers, wrong size or checksum.

The check itself is ``sd35_provision/hostside/modelcheck.py`` (with the manifest
library ``hostside/manifests.py``), run on the host with its own python3
(standard library only). It keeps a hash cache beside the
manifest, keyed by each file's (size, mtime, ctime, inode, device) like
git's index, so ``drift`` hashes only files whose stat changed: a file edited
by hand always is, and a healthy 30 GB model costs a few ``stat`` calls.
(The fact writes that cache: a cache, like ``git status`` refreshing its
index, not a change to the host's state.)
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from functools import cache

from pyinfra.api import FactBase

from sd35_provision import hostside


@cache
def modelcheck_source() -> str:
    """The checker with the manifest library it imports, one program shipped to hosts as ``python3 -c``.

    ``-c`` and not stdin: ``verify --expected-stdin`` reads a pushed model's manifest there.
    """
    return hostside.program("modelcheck.py", "manifests.py")


def modelcheck_command(python: str, *args: str) -> str:
    """A shell command running ``hostside/modelcheck.py <args>`` with ``python`` on the host."""
    quoted = " ".join(shlex.quote(arg) for arg in args)
    return f"{shlex.quote(python)} -c {shlex.quote(modelcheck_source())} {quoted}"


@dataclass(frozen=True)
class BrokenFile:
    path: str  # relative to the model directory
    problem: str  # missing | lfs-pointer | size | checksum | unreadable
    detail: str  # what is wrong, in words: "checksum mismatch: sha256 0a1b2c3d4e5f..., expected 89e98a4e318b..."

    def describe(self) -> str:
        return f"{self.path}: {self.detail or self.problem}"


@dataclass(frozen=True)
class ModelCheck:
    manifest: bool  # False: no manifest on the host yet (never fetched, or it was removed)
    exists: bool = False  # the model directory is there
    broken: tuple[BrokenFile, ...] = ()
    files: int = 0  # files present and checked
    bytes: int = 0
    rehashed: int = 0  # files hashed this time (their stat changed since the last check)
    git_head: str | None = None  # commit checked out, for a git source

    def names(self, *problems: str) -> tuple[str, ...]:
        return tuple(item.path for item in self.broken if not problems or item.problem in problems)

    @property
    def missing(self) -> tuple[str, ...]:
        return self.names("missing")

    @property
    def pointers(self) -> tuple[str, ...]:
        return self.names("lfs-pointer")

    @property
    def mismatched(self) -> tuple[str, ...]:
        return self.names("size", "checksum")

    @property
    def refetch(self) -> tuple[str, ...]:
        """Files whose content must be fetched again (an unreadable file only needs its owner fixed)."""
        return self.names("missing", "lfs-pointer", "size", "checksum")

    @property
    def healthy(self) -> bool:
        return self.manifest and self.exists and not self.broken

    def problems(self) -> list[str]:
        return [item.describe() for item in self.broken]


class ModelFiles(FactBase[ModelCheck]):
    """
    Checks the model ``directory`` against a manifest: ``manifest`` (JSON
    text, given for a push, whose manifest is computed on the control
    machine) or else the file at ``manifest_path`` on the host. ``user``: the
    service user, who must be able to read every file. ``git``: also report
    the commit checked out.
    """

    def command(
        self,
        directory: str,
        manifest_path: str,
        user: str | None = None,
        manifest: str | None = None,
        git: bool = False,
    ) -> str:
        args = ["verify", "--dir", directory, "--hashes", hashes_path(manifest_path)]
        args += ["--expected-stdin"] if manifest is not None else ["--manifest", manifest_path]
        args += ["--user", user] if user else []
        args += ["--git"] if git else []
        command = modelcheck_command("python3", *args)
        if manifest is not None:
            command += f" <<'SD35_MANIFEST'\n{manifest.strip()}\nSD35_MANIFEST"
        return f"command -v python3 >/dev/null || {{ echo '{{\"manifest\": false}}'; exit 0; }}; {command}"

    def process(self, output: list[str]) -> ModelCheck:
        try:
            data = json.loads(output[-1]) if output else {}
        except json.JSONDecodeError:
            raise ValueError(f"ModelFiles: unexpected output: {output[-5:]!r}") from None
        return ModelCheck(
            manifest=bool(data.get("manifest")),
            exists=bool(data.get("directory")),
            broken=tuple(
                BrokenFile(item["path"], item["problem"], item.get("detail", "")) for item in data.get("broken", [])
            ),
            files=int(data.get("files", 0)),
            bytes=int(data.get("bytes", 0)),
            rehashed=int(data.get("rehashed", 0)),
            git_head=data.get("git_head"),
        )

    @staticmethod
    def default() -> ModelCheck:
        return ModelCheck(manifest=False)


def hashes_path(manifest_path: str) -> str:
    """The hash cache kept beside a manifest."""
    return manifest_path.removesuffix(".json") + ".hashes.json"
