"""What a host has of the pushed apt bundle (``system.apt_bundle``, sd35_provision/aptbundle.py)."""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase


class BundleHashes(FactBase[dict[str, str]]):
    """``{file name: sha256}`` of the files in ``directory`` (empty if there is none); uploads cut off are left out."""

    def command(self, directory: str) -> str:
        quoted = shlex.quote(directory)
        return (
            f"if [ -d {quoted} ]; then cd {quoted} && "
            "find . -maxdepth 1 -type f ! -name '*.partial' -exec sha256sum {} +; fi; true"
        )

    def process(self, output: list[str]) -> dict[str, str]:
        hashes = {}
        for line in output:
            digest, _, name = line.strip().partition("  ")
            if digest and name:
                hashes[name.removeprefix("./")] = digest
        return hashes

    @staticmethod
    def default() -> dict[str, str]:
        return {}
