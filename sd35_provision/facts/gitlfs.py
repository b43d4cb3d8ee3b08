"""Whether git-lfs is enabled system-wide (``git lfs install --system``)."""

from __future__ import annotations

from pyinfra.api import FactBase


class GitLfsSystemInstalled(FactBase[bool]):
    """
    True when /etc/gitconfig carries the git-lfs filter, so every clone on
    the host (any user) fetches real LFS objects instead of pointer files.
    """

    def requires_command(self) -> str:
        return "git"

    def command(self) -> str:
        return "git config --system --get filter.lfs.process || true"

    def process(self, output: list[str]) -> bool:
        return any("git-lfs filter-process" in line for line in output)

    @staticmethod
    def default() -> bool:
        return False
