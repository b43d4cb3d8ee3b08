"""Operations shared by the deploys.

``managed_file`` is pyinfra's ``files.put`` plus a standard unified diff that
``plan`` and ``drift`` show per host, kept by the host's ``HostRecorder``.
Secret files never show content: their diff is a one-line notice, and their
content is compared by hash only.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import shlex

from pyinfra import host
from pyinfra.api import operation
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import FileContents, Sha256File
from pyinfra.operations import apt, files

from sd35_provision.facts.driver import AptHolds

SECRET_NOTICE = "(secret file: content not shown)"


class HostRecorder:
    """What preparing one host's layers found worth showing, and what the service runs on.

    One per host, handed to every layer with the plan: ``diffs`` (per
    operation hash, shown by ``plan``/``drift``), ``notes`` (e.g. "reboot
    required") and ``service_inputs``: the operations whose change means the
    running service must restart (its ``_if=any_changed(...)``).
    Nothing is recorded while executing: the prepared run already said it.
    """

    def __init__(self) -> None:
        self.diffs: dict[str, str] = {}
        self.notes: list[str] = []
        self.service_inputs: dict[str, list[OperationMeta]] = {}

    def note(self, text: str) -> None:
        if not host.state.is_executing and text not in self.notes:
            self.notes.append(text)

    def diff(self, text: str) -> None:
        """Show ``text`` as the current operation's diff in ``plan``/``drift`` (call inside an operation)."""
        op_hash = host.current_op_hash
        if not host.state.is_executing and op_hash is not None:  # None outside an operation: nothing reads it
            self.diffs[op_hash] = text

    def feeds_service(self, reason: str, *operations: OperationMeta) -> None:
        """The service restarts, saying ``reason`` changed, when one of ``operations`` changes something."""
        self.service_inputs.setdefault(reason, []).extend(operations)


def unified_diff(path: str, current: list[str] | None, wanted: str) -> str:
    before = [line + "\n" for line in current] if current is not None else []
    after = wanted.splitlines(keepends=True)
    return "".join(
        difflib.unified_diff(
            before,
            after,
            fromfile=f"{path} (on host)" if current is not None else "/dev/null",
            tofile=f"{path} (wanted)",
        )
    )


@operation()
def managed_file(
    path: str,
    content: str,
    user: str | None = None,
    group: str | None = None,
    mode: str | None = None,
    secret: bool = False,
    summary: str | None = None,
    recorder: HostRecorder | None = None,
):
    """
    Make a remote text file hold ``content``.

    + path: remote path
    + content: the wanted text
    + user/group/mode: ownership and permissions
    + secret: never read, diff or log the content (tokens, API keys)
    + summary: show this line instead of a diff (generated files too long to read, like locks)
    + recorder: the host's recorder, where the diff goes (None: no diff shown)
    """
    data = content.encode()
    changed = host.get_fact(Sha256File, path=path) != hashlib.sha256(data).hexdigest()
    if changed and recorder is not None and not host.state.is_executing:
        if secret:
            diff = f"--- {path}\n+++ {path}\n{SECRET_NOTICE}\n"
        elif summary:
            diff = f"--- {path}\n+++ {path}\n{summary}\n"
        else:
            diff = unified_diff(path, host.get_fact(FileContents, path=path), content)
        recorder.diff(diff)
    yield from files.put._inner(
        src=io.BytesIO(data),
        dest=path,
        user=user,
        group=group,
        mode=mode,
    )


@operation()
def apt_packages_present(packages: list[str]):
    """
    Install Debian/Ubuntu packages that are missing.

    Unlike ``apt.packages(update=True, cache_time=...)`` this refreshes the
    package lists only when something must be installed, so a host that has
    everything never reports a change (no drift from an ageing apt cache).

    + packages: package names
    """
    installed = host.get_fact(DebPackages) or {}
    missing = [name for name in packages if name not in installed]
    if not missing:
        return
    yield from apt.update._inner()
    yield from apt.packages._inner(packages=missing)


@operation()
def apt_held(packages: list[str], installing: bool = False):
    """
    Put driver packages on hold (``apt-mark hold``): apt leaves them at their version.

    Held are those installed that are not held yet (``drift`` names them). With
    ``installing`` the packages are being installed by an earlier operation of
    this run: the command holds those installed by then (which of them a
    metapackage pulls in is known only when it ran).

    + packages: package names
    + installing: an earlier operation of this run installs them
    """
    holds: list[str] = host.get_fact(AptHolds)
    held = set(holds or [])
    if installing:
        todo = [name for name in packages if name not in held]
        if todo:
            names = " ".join(shlex.quote(name) for name in todo)
            yield (
                f"dpkg-query -W -f='${{db:Status-Abbrev}} ${{Package}}\\n' {names} 2>/dev/null "
                "| awk '$1 ~ /^.i/ {print $2}' | xargs -r apt-mark hold"
            )
        return
    installed = host.get_fact(DebPackages) or {}
    todo = [name for name in packages if name in installed and name not in held]
    if todo:
        yield f"apt-mark hold {' '.join(shlex.quote(name) for name in todo)}"


@operation()
def apt_unheld(packages: list[str]):
    """
    Take packages off hold (``apt-mark unhold``), e.g. before apt replaces a driver branch with another.

    + packages: package names
    """
    holds: list[str] = host.get_fact(AptHolds)
    held = set(holds or [])
    todo = [name for name in packages if name in held]
    if todo:
        yield f"apt-mark unhold {' '.join(shlex.quote(name) for name in todo)}"
