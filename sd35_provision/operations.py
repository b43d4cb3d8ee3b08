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
from collections.abc import Callable, Iterable

from pyinfra import host
from pyinfra.api import operation
from pyinfra.api.command import FileUploadCommand
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import FileContents, Sha256File
from pyinfra.operations import apt, files

from sd35_provision.facts.aptbundle import BundleHashes
from sd35_provision.facts.driver import AptHolds
from sd35_provision.hostscripts import render_script

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
        # Notes on state an operation changes: (that operation's meta or hash, what to say once it has run).
        self.planned: dict[str, tuple[OperationMeta | str, str | None]] = {}

    def note(self, text: str, until: OperationMeta | None = None, done: str | None = None) -> None:
        """Say ``text`` in the results (e.g. "reboot required").

        A note about state that an operation changes ("model not fetched yet"),
        made inside that operation or with ``until=`` its meta, is what was
        planned: once that operation has changed the host without error, ``done``
        says what was done in its place (no ``done``, or nothing was left to
        change: the note goes).
        """
        if host.state.is_executing or text in self.notes:
            return
        self.notes.append(text)
        fixed_by = until if until is not None else host.current_op_hash
        if fixed_by is not None:
            self.planned[text] = (fixed_by, done)

    def notes_after(self, executed: bool, meta_of: Callable[[str], OperationMeta | None]) -> list[str]:
        """The notes of a run: as planned, or (``executed``) with each planned one that was done replaced.

        + meta_of: the host's operation meta by operation hash (None: the host has no such operation)
        """
        if not executed:
            return list(self.notes)
        shown: list[str] = []
        for note in self.notes:
            fixed_by, done = self.planned.get(note, (None, None))
            meta = meta_of(fixed_by) if isinstance(fixed_by, str) else fixed_by
            text: str | None = note
            if meta is not None and meta.is_complete() and not meta.did_error():
                text = done if meta.did_change() else None  # run, with nothing left to do: nothing to say
            if text and text not in shown:
                shown.append(text)
        return shown

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
def apt_packages_present(packages: list[str], bundle: str | None = None):
    """
    Install Debian/Ubuntu packages that are missing.

    Unlike ``apt.packages(update=True, cache_time=...)`` this refreshes the
    package lists only when something must be installed, so a host that has
    everything never reports a change (no drift from an ageing apt cache).

    + packages: package names
    + bundle: install from this pushed apt bundle (``system.apt_bundle``), not the host's mirror
    """
    missing = missing_packages(packages)
    if not missing:
        return
    if bundle is not None:
        yield render_script("apt-bundle-install.sh", bundle=bundle, packages=missing)
        return
    yield from apt.update._inner()
    yield from apt.packages._inner(packages=missing)


def missing_packages(packages: Iterable[str]) -> list[str]:
    """Which of ``packages`` the host has not installed (call inside a deploy or operation)."""
    installed = host.get_fact(DebPackages) or {}
    return [name for name in packages if name not in installed]


@operation()
def apt_bundle_pushed(files: list[tuple[str, str]], directory: str):
    """
    Upload the apt bundle's files (.deb files and their index) that the host lacks or has with another hash.

    + files: (local path, sha256) of each file
    + directory: the bundle's directory on the host
    """
    present = host.get_fact(BundleHashes, directory=directory)
    yield f"mkdir -p {shlex.quote(directory)}"
    for local, digest in files:
        name = local.rsplit("/", 1)[-1]
        if present.get(name) != digest:
            remote = f"{directory}/{name}"
            # Upload beside, then rename: an interrupted push never leaves a short file under its name.
            yield FileUploadCommand(local, f"{remote}.partial", remote_temp_filename=None)
            yield f"mv -f {shlex.quote(remote + '.partial')} {shlex.quote(remote)}"


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
