"""What the release store on a host holds: releases and the venvs, code and models they link to."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from pyinfra.api import FactBase


@dataclass(frozen=True)
class ReleaseStore:
    root: str = ""  # the venv root the release paths are relative to
    current: str | None = None  # "releases/<id>"
    previous: str | None = None
    releases: dict[str, dict[str, str]] = field(default_factory=dict)  # "releases/<id>" -> {part: target}
    entries: tuple[str, ...] = ()  # every venv, app and model directory, by absolute path

    def referenced(self, releases: set[str]) -> set[str]:
        return {target for release in releases for target in self.releases.get(release, {}).values()}


class ReleaseStoreContents(FactBase[ReleaseStore]):
    """
    ``current``, ``previous``, each release's links, and the directories under
    ``venvs``, ``apps`` (of ``root``) and ``models`` (where pushed and cloned models live).
    """

    @staticmethod
    def default() -> ReleaseStore:
        return ReleaseStore()  # pyinfra's answer when the command prints nothing (no release store yet)

    def command(self, root: str, models: str) -> str:
        r, m = shlex.quote(root), shlex.quote(models)
        return "\n".join([
            f"cd {r} 2>/dev/null || exit 0",
            f"echo root {r}",
            'echo "current $(readlink current || true)"',
            'echo "previous $(readlink previous || true)"',
            "for release in releases/*/; do [ -d \"$release\" ] || continue; release=${release%/}",
            '  for part in venv app model; do echo "link $release $part $(readlink "$release/$part" || true)"; done',
            "done",
            f'for entry in {r}/venvs/* {r}/apps/* {m}/*; do [ -d "$entry" ] && echo "dir $entry"; done; true',
        ])

    def process(self, output: list[str]) -> ReleaseStore:
        root = ""
        current = previous = None
        releases: dict[str, dict[str, str]] = {}
        entries: list[str] = []
        for line in output:
            kind, _, rest = line.partition(" ")
            if kind == "root":
                root = rest.strip()
            elif kind == "current":
                current = rest.strip() or None
            elif kind == "previous":
                previous = rest.strip() or None
            elif kind == "link":
                release, part, target = (rest.split(" ", 2) + ["", ""])[:3]
                links = releases.setdefault(release, {})
                if target.strip():
                    links[part] = target.strip()
            elif kind == "dir":
                entries.append(rest.strip())
        return ReleaseStore(root=root, current=current, previous=previous, releases=releases, entries=tuple(entries))
