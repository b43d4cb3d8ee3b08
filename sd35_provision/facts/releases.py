"""What the release store on a host holds: releases and the venvs, code and models they link to."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from pyinfra.api import FactBase

from sd35_provision.facts.venv import COMPLETE_STAMP


@dataclass(frozen=True)
class ReleaseStore:
    root: str = ""  # the venv root the release paths are relative to
    current: str | None = None  # "releases/<id>"
    previous: str | None = None
    releases: dict[str, dict[str, str]] = field(default_factory=dict)  # "releases/<id>" -> {part: target}
    entries: tuple[str, ...] = ()  # every venv, app and model directory, by absolute path
    # What an interrupted run leaves: staged releases, links and code, half-built venvs, partial uploads.
    leftovers: tuple[str, ...] = ()
    unstamped: tuple[str, ...] = ()  # venvs without the complete stamp (a build was cut off)

    @property
    def previous_broken(self) -> bool:
        """``previous`` points at a release that is not there: no rollback target."""
        return self.previous is not None and self.previous not in self.releases

    def referenced(self, releases: set[str]) -> set[str]:
        return {target for release in releases for target in self.releases.get(release, {}).values()}


class ReleaseStoreContents(FactBase[ReleaseStore]):
    """
    ``current``, ``previous``, each release's links, and the directories under
    ``venvs``, ``apps`` (of ``root``) and ``models`` (where pushed and cloned models live);
    and what a run cut off in the middle leaves there (``.new`` and ``.partial``
    staging, venvs without their complete stamp).
    """

    @staticmethod
    def default() -> ReleaseStore:
        return ReleaseStore()  # pyinfra's answer when the command prints nothing (no release store yet)

    def command(self, root: str, models: str) -> str:
        r, m = shlex.quote(root), shlex.quote(models)
        return "\n".join(
            [
                f"cd {r} 2>/dev/null || exit 0",
                f"echo root {r}",
                'echo "current $(readlink current || true)"',
                'echo "previous $(readlink previous || true)"',
                'for release in releases/*/; do [ -d "$release" ] || continue; release=${release%/}',
                "  for part in venv app model; do"
                ' echo "link $release $part $(readlink "$release/$part" || true)"; done',
                "done",
                f'for entry in {r}/venvs/* {r}/apps/* {m}/*; do [ -d "$entry" ] && echo "dir $entry"; done',
                "for entry in releases/.*.new .current.new .previous.new apps/*.new apps/*.tar; do",
                f'  if [ -e "$entry" ] || [ -L "$entry" ]; then echo "leftover {r}/$entry"; fi',
                "done",
                "for venv in venvs/*/; do",
                f'  if [ -d "$venv" ] && [ ! -f "$venv{COMPLETE_STAMP}" ]; then echo "unstamped {r}/${{venv%/}}"; fi',
                "done",
                f"find {r}/wheelhouse {m} -maxdepth 5 -name '*.partial' -prune -print 2>/dev/null"
                " | sed 's/^/leftover /'",
                "true",
            ]
        )

    def process(self, output: list[str]) -> ReleaseStore:
        root = ""
        current = previous = None
        releases: dict[str, dict[str, str]] = {}
        entries: list[str] = []
        leftovers: list[str] = []
        unstamped: list[str] = []
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
            elif kind == "leftover":
                leftovers.append(rest.strip())
            elif kind == "unstamped":
                unstamped.append(rest.strip())
        return ReleaseStore(
            root=root,
            current=current,
            previous=previous,
            releases=releases,
            entries=tuple(entries),
            leftovers=tuple(leftovers),
            unstamped=tuple(unstamped),
        )
