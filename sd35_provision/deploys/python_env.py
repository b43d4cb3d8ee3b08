"""Python environment layer: the hash-locked venv, built beside the running one.

- The torch flavour follows the host's GPU and driver (or ``python.torch_flavour``;
  the host's plan picks it, sd35_provision/hostplan.py); its lock
  (``sd35_provision/locks/<flavour>.txt``) names the venv:
  ``<install_root>/venvs/<lock id>``. A new lock builds a new venv while the
  old one keeps serving; only a finished, stamped build is ever switched to
  (the release layer flips the ``current`` symlink).
- ``pip --require-hashes``: a wheel whose hash is not in the lock stops the
  build, naming the package, and the half-built venv is never used.
- With ``python.wheelhouse`` the wheels the lock needs are pushed once
  (skipped when the host has them with the right hash) and pip installs
  offline from them.
- Drift: packages installed, removed or changed by hand in the venv are
  listed, and apply puts the locked set back.
"""

from __future__ import annotations

import shlex

from packaging.utils import canonicalize_name
from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.api.command import FileUploadCommand
from pyinfra.operations import files, server

from sd35_provision import layout
from sd35_provision.aptbundle import PYTHON_PACKAGES
from sd35_provision.deploys.apt import install_packages
from sd35_provision.facts.venv import COMPLETE_STAMP, Venv, WheelHashes
from sd35_provision.hostplan import PYTHON_STEP as STEP
from sd35_provision.hostplan import EnvironmentNotReady, HostPlan
from sd35_provision.hostscripts import render_script
from sd35_provision.hostspec.settings import HostSettings
from sd35_provision.locks import Lock, compare_installed, unlocked_packages
from sd35_provision.operations import HostRecorder, managed_file

__all__ = ["STEP", "EnvironmentNotReady", "python_environment"]

# The CPU build of torch is not on PyPI; its own index serves it (hashes still checked).
FLAVOUR_EXTRA_INDEX = {"cpu": "https://download.pytorch.org/whl/cpu"}


@deploy(STEP)
def python_environment(plan: HostPlan, recorder: HostRecorder) -> None:
    settings, lock = plan.settings, plan.lock
    root = settings.python.install_root

    install_packages(plan, "Install python3-venv", PYTHON_PACKAGES, STEP)  # the system layer pushed the bundle
    files.directory(name="Environment root", path=root, user="root", group="root", mode="755")
    for directory in (layout.venvs_dir(root), layout.locks_dir(root)):
        files.directory(name=f"Directory {directory}", path=directory, user="root", group="root", mode="755")
    managed_file(
        name=f"Lock {lock.id}",
        path=plan.lock_path,
        content=lock.text,
        user="root",
        group="root",
        mode="644",
        summary=f"(lock {lock.id}: {len(lock.pins)} pinned packages, hashes checked)",
        recorder=recorder,
    )

    if plan.wheelhouse_dir is not None:
        files.directory(name="Wheelhouse directory", path=plan.wheelhouse_dir, user="root", group="root", mode="755")
        wheels_pushed(
            name=f"Push wheels for lock {lock.flavour}",
            wheels=[(str(wheel.path), wheel.path.name, wheel.sha256) for wheel in plan.wheels],
            directory=plan.wheelhouse_dir,
        )

    state = host.get_fact(Venv, path=plan.venv_dir)
    pip_options = _pip_options(settings, lock, plan.wheelhouse_dir)
    if not state.complete:
        built = server.shell(
            name=f"Build venv {lock.id}",
            commands=[_build_script(plan.interpreter, plan.venv_dir, plan.lock_path, pip_options)],
            _env=_pip_environment(settings),
        )
        recorder.feeds_service("venv", built)
        return

    if compare_installed(lock, state.environment, state.packages):
        restored = venv_restored(
            name=f"Restore the locked packages of venv {lock.id}",
            venv=plan.venv_dir,
            lock=lock,
            installed=state.packages,
            environment=state.environment,
            lock_path=plan.lock_path,
            pip_options=pip_options,
            recorder=recorder,
            _env=_pip_environment(settings),
        )
        recorder.feeds_service("venv", restored)  # repaired in place: the service reloads what it imported


@operation()
def wheels_pushed(wheels: list[tuple[str, str, str]], directory: str):
    """
    Upload the wheels the host lacks (or has with another hash) into ``directory``.

    + wheels: (local path, file name, sha256) of each wanted wheel
    + directory: remote wheelhouse directory
    """
    present = host.get_fact(WheelHashes, directory=directory)
    for local, name, digest in wheels:
        if present.get(name) != digest:
            remote = f"{directory}/{name}"
            # Upload beside, then rename: an interrupted push never leaves a short wheel under its name.
            yield FileUploadCommand(local, f"{remote}.partial", remote_temp_filename=None)
            yield f"mv -f {shlex.quote(remote + '.partial')} {shlex.quote(remote)}"


@operation()
def venv_restored(
    venv: str,
    lock: Lock,
    installed: dict[str, str],
    environment: dict[str, str],
    lock_path: str,
    pip_options: list[str],
    recorder: HostRecorder,
):
    """
    Put a drifted venv back to its lock: remove what the lock lacks, reinstall the rest.

    + venv: the venv directory
    + lock: its lock; installed/environment: what the Venv fact read
    + lock_path: the lock file on the host; pip_options: how pip reaches the wheels
    + recorder: where the diff and notes go
    """
    problems = compare_installed(lock, environment, installed)
    if not problems:
        return
    expected = lock.expected(environment)
    have: dict[str, str] = {canonicalize_name(name): version for name, version in installed.items()}
    extras = unlocked_packages(lock, environment, installed)
    diff = [f"--- venv {venv} (on host)", f"+++ lock {lock.id}"]
    for name in sorted(set(expected) | set(extras)):
        if have.get(name) != expected.get(name):
            if name in have:
                diff.append(f"-{name}=={have[name]}")
            if name in expected:
                diff.append(f"+{name}=={expected[name]}")
    recorder.diff("\n".join(diff) + "\n")
    for problem in problems:
        recorder.note(f"venv {lock.id}: {problem}", done=f"venv {lock.id}: put back to its lock")
    yield _repair_script(venv, lock_path, pip_options, extras)


def _pip_environment(settings: HostSettings) -> dict[str, str]:
    return {
        "PIP_CACHE_DIR": settings.cache.pip_cache,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _pip_options(settings: HostSettings, lock: Lock, find_links: str | None) -> list[str]:
    options = ["--require-hashes", "--only-binary=:all:", "--no-color", "--progress-bar=off"]
    if find_links or settings.python.find_links:
        options.append("--no-index")
        options += [f"--find-links={link}" for link in (find_links, settings.python.find_links) if link]
    elif lock.flavour in FLAVOUR_EXTRA_INDEX:
        options.append(f"--extra-index-url={FLAVOUR_EXTRA_INDEX[lock.flavour]}")
    return options


def _build_script(interpreter: str, venv: str, lock_path: str, pip_options: list[str]) -> str:
    return render_script(
        "venv-build.sh",
        venv_name=venv.rsplit("/", 1)[-1],
        interpreter=interpreter,
        venv=venv,
        lock=lock_path,
        pip_options=pip_options,
        stamp=COMPLETE_STAMP,
    )


def _repair_script(venv: str, lock_path: str, pip_options: list[str], extras: list[str]) -> str:
    return render_script(
        "venv-repair.sh",
        venv=venv,
        lock=lock_path,
        pip_options=pip_options,
        extras=extras,
        remove="yes" if extras else "",
    )
