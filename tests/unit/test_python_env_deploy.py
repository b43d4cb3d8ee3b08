"""The Python environment and release layers against recorded facts: which lock, what runs, what is pushed."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest

from sd35_provision.appbundle import service_bundle
from sd35_provision.deploys.python_env import EnvironmentNotReady, python_environment
from sd35_provision.deploys.release import release_layer
from sd35_provision.hostspec.settings import GpuSettings, HostSettings, PythonSettings
from sd35_provision.locks import load_lock
from tests.pyinfra_fakes import Output, existing_files, fact_case, merge_facts, plan_for, run_deploy
from tests.unit.test_locks import PY311

ROOT = "/opt/sd35"
DEBIAN_PYTHONS = Output(["python3 /usr/bin/python3 3.11.2", "python3.11 /usr/bin/python3.11 3.11.2"])


def settings(flavour: str = "auto", accelerator: str = "nvidia", wheelhouse: Path | None = None) -> HostSettings:
    return HostSettings(
        name="gpu-a1",
        address="10.0.0.1",
        gpu=GpuSettings(accelerator=accelerator),
        python=PythonSettings(torch_flavour=flavour, wheelhouse=wheelhouse),
    )


def venv_fact(lock_id: str, packages: dict[str, str] | None) -> dict:
    path = f"path={ROOT}/venvs/{lock_id}"
    if packages is None:
        return {"Venv": {path: Output(["absent"])}}
    return {"Venv": {path: Output(["complete", json.dumps({"environment": PY311, "packages": packages})])}}


def dirs(*paths: str) -> dict:
    return {"Directory": {f"path={p}": {"mode": 755, "user": "root", "group": "root"} for p in paths}}


def run(
    host: HostSettings,
    lock_id: str,
    packages: dict[str, str] | None,
    gpus: str = "h100_recorded",
    wheels: dict[str, str] | None = None,
):
    lock_path = f"{ROOT}/locks/{lock_id}.txt"
    facts = merge_facts(
        {
            "DebPackages": {"python3-venv": ["3.11.2-1+b1"]},
            "PythonVersions": DEBIAN_PYTHONS,
            "NvidiaGpus": fact_case("NvidiaGpus", gpus),
            "InterpreterEnvironment": {"interpreter=/usr/bin/python3": PY311},
            "WheelHashes": {f"directory={ROOT}/wheelhouse": wheels or {}},
        },
        dirs(ROOT, f"{ROOT}/venvs", f"{ROOT}/locks", f"{ROOT}/wheelhouse"),
        existing_files({lock_path: load_lock(lock_id.split("-")[0]).text}),
        venv_fact(lock_id, packages),
    )
    return run_deploy(python_environment, facts, host)


def test_h100_host_gets_the_cuda_13_lock_and_a_new_venv_built_with_hashes():
    lock = load_lock("cu130")
    result = run(settings(), lock.id, None)
    [build] = result.commands(f"Build venv {lock.id}")
    assert f"python3 -m venv {ROOT}/venvs/{lock.id}" in build
    assert "pip install --quiet --require-hashes --only-binary=:all:" in build
    assert f"-r {ROOT}/locks/{lock.id}.txt" in build
    assert "--no-index" not in build and "--extra-index-url" not in build  # PyPI serves the CUDA builds
    # only a finished build is stamped, and only a stamped venv is ever used
    assert build.rstrip().endswith(f"cp {ROOT}/locks/{lock.id}.txt {ROOT}/venvs/{lock.id}/.sd35-complete")


def test_cpu_hosts_get_the_cpu_build_from_its_own_index():
    cpu = load_lock("cpu")
    [build] = run(settings(accelerator="cpu"), cpu.id, None).commands(f"Build venv {cpu.id}")
    assert "--extra-index-url=https://download.pytorch.org/whl/cpu" in build
    # driver 560 runs none of the CUDA builds we ship (preflight refuses such a GPU host before this)
    assert run(settings(), cpu.id, None, gpus="l4_ada").commands(f"Build venv {cpu.id}") == [build]
    cu128 = load_lock("cu128")
    assert run(settings(flavour="cu128"), cu128.id, None).commands(f"Build venv {cu128.id}")


def test_complete_venv_matching_its_lock_changes_nothing():
    lock = load_lock("cu130")
    result = run(settings(flavour="cu130"), lock.id, {**lock.expected(PY311), "pip": "23.0.1"})
    assert result.changes == []


def test_hand_changed_packages_are_diffed_and_restored():
    lock = load_lock("cpu")
    installed = {**lock.expected(PY311), "torch": "2.5.0", "requests-mock": "1.12.1"}
    del installed["pillow"]
    result = run(settings(flavour="cpu"), lock.id, installed)
    [restore] = result.changes
    assert restore.name == f"Python environment | Restore the locked packages of venv {lock.id}"
    [script] = restore.commands
    assert f"{ROOT}/venvs/{lock.id}/bin/python -m pip uninstall --quiet --yes requests-mock" in script
    assert "pip install --quiet --require-hashes" in script
    assert result.diffs == [
        f"--- venv {ROOT}/venvs/{lock.id} (on host)\n+++ lock {lock.id}\n"
        "+pillow==13.0.0\n-requests-mock==1.12.1\n-torch==2.5.0\n+torch==2.13.0+cpu\n"
    ]
    assert f"venv {lock.id}: torch is 2.5.0, the lock pins 2.13.0+cpu" in result.notes
    # The apply's result: the venv was put back (the notes made before the change go).
    assert result.notes_after(succeeded=["Restore the locked packages"]) == [f"venv {lock.id}: put back to its lock"]


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory):
    """Two fake wheels whose hashes we put into a lock of our own."""
    directory = tmp_path_factory.mktemp("wheels")
    for name in ("alpha-1.0-py3-none-any.whl", "beta-2.0-py3-none-any.whl", "stray-9.9-py3-none-any.whl"):
        (directory / name).write_bytes(name.encode())
    return directory


def test_wheelhouse_pushes_only_what_the_host_lacks(wheelhouse, monkeypatch):
    hashes = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in wheelhouse.glob("*.whl")}
    text = "".join(
        f"{n}=={v} --hash=sha256:{hashes[f'{n}-{v}-py3-none-any.whl']}\n"
        for n, v in (("alpha", "1.0"), ("beta", "2.0"))
    )
    lock_file = wheelhouse / "lock.txt"
    lock_file.write_text(text)
    host = HostSettings(
        name="h",
        address="10.0.0.2",
        gpu=GpuSettings(accelerator="cpu"),
        python=PythonSettings(wheelhouse=wheelhouse, lock_file=lock_file),
    )
    from sd35_provision.locks import load_lock_file

    lock = load_lock_file(lock_file)
    facts = merge_facts(
        {
            "DebPackages": {"python3-venv": ["3.11.2-1+b1"]},
            "PythonVersions": DEBIAN_PYTHONS,
            "InterpreterEnvironment": {"interpreter=/usr/bin/python3": PY311},
            # beta is there already with its hash; alpha is there but truncated
            "WheelHashes": {
                f"directory={ROOT}/wheelhouse": {
                    "alpha-1.0-py3-none-any.whl": "0" * 64,
                    "beta-2.0-py3-none-any.whl": hashes["beta-2.0-py3-none-any.whl"],
                }
            },
        },
        dirs(ROOT, f"{ROOT}/venvs", f"{ROOT}/locks", f"{ROOT}/wheelhouse"),
        existing_files({f"{ROOT}/locks/{lock.id}.txt": text}),
        venv_fact(lock.id, None),
    )
    result = run_deploy(python_environment, facts, host)
    assert result.commands("Push wheels") == [
        [
            "upload",
            str(wheelhouse / "alpha-1.0-py3-none-any.whl"),
            f"{ROOT}/wheelhouse/alpha-1.0-py3-none-any.whl.partial",
        ],
        f"mv -f {ROOT}/wheelhouse/alpha-1.0-py3-none-any.whl.partial {ROOT}/wheelhouse/alpha-1.0-py3-none-any.whl",
    ]
    [build] = result.commands("Build venv")
    assert f"--no-index --find-links={ROOT}/wheelhouse" in build

    # a wheelhouse missing a locked wheel fails the host before anything is pushed, naming the pin
    (wheelhouse / "beta-2.0-py3-none-any.whl").rename(wheelhouse / "beta.moved")
    try:
        with pytest.raises(EnvironmentNotReady, match=r"has no wheel matching lock custom's hashes for beta==2.0"):
            run_deploy(python_environment, facts, host)
    finally:
        (wheelhouse / "beta.moved").rename(wheelhouse / "beta-2.0-py3-none-any.whl")


MODELS = "/var/lib/sd35/models"


def store_fact(output: Output) -> dict:
    return {"ReleaseStoreContents": {f"models={MODELS}, root={ROOT}": output}}


def store_output(current: str, previous: str, releases: dict[str, tuple[str, str, str]], dirs: list[str]) -> Output:
    """What ReleaseStoreContents's command prints on a host."""
    lines = [f"root {ROOT}", f"current {current}", f"previous {previous}"]
    for release, parts in releases.items():
        lines += [
            f"link {release} {part} {target}" for part, target in zip(("venv", "app", "model"), parts, strict=False)
        ]
    return Output(lines + [f"dir {entry}" for entry in dirs])


def test_old_releases_and_what_only_they_use_are_pruned_keeping_the_rollback_target():
    host = settings(accelerator="cpu")
    plan = plan_for(host)
    manifest, rid = plan.release_manifest, plan.release_id
    venv, app, model = (manifest["links"][part] for part in ("venv", "app", "model"))
    old = (f"{ROOT}/venvs/cpu-000000000001", f"{ROOT}/apps/aaaaaaaaaaaa", f"{MODELS}/push-000000000001")
    older = (f"{ROOT}/venvs/cpu-000000000000", f"{ROOT}/apps/aaaaaaaaaaaa", f"{MODELS}/push-000000000000")
    failed = (old[0], old[1], f"{MODELS}/push-badbadbadbad")
    releases = {"releases/old-1": old, "releases/older-0": older, "releases/failed-2": failed}
    entries = [old[0], older[0], venv, old[1], app, old[2], older[2], failed[2], model]
    facts = merge_facts(
        dirs(f"{ROOT}/releases", f"{ROOT}/apps", f"{ROOT}/releases/{rid}", app),
        {"Link": {f"path={ROOT}/current": {"link_target": "releases/old-1"}}},
        store_fact(store_output("releases/old-1", "releases/failed-2", releases, entries)),
    )
    result = run_deploy(release_layer, facts, host)
    # Switching to the new release: the old current becomes previous and stays, with what it uses.
    [prune] = result.commands("Prune what no kept release uses")
    removed = [line.removeprefix("rm -rf ") for line in prune.splitlines() if line.startswith("rm -rf ")]
    assert removed == [f"{ROOT}/releases/failed-2", f"{ROOT}/releases/older-0", older[0], older[2], failed[2]]
    assert "rm -f /var/lib/sd35/manifests/push-badbadbadbad.json" in prune

    # Already on the new release: current and previous are kept, nothing else is there.
    kept = {f"releases/{rid}": (venv, app, model), "releases/old-1": old}
    facts = merge_facts(
        dirs(f"{ROOT}/releases", f"{ROOT}/apps", f"{ROOT}/releases/{rid}", app),
        {"Link": {f"path={ROOT}/current": {"link_target": f"releases/{rid}"}}},
        store_fact(store_output(f"releases/{rid}", "releases/old-1", kept, [old[0], venv, old[1], app, old[2], model])),
    )
    assert run_deploy(release_layer, facts, host).changes == []


def test_a_change_of_service_settings_makes_a_new_release():
    # The release keeps the settings it was tested with, so a rollback restores them too.
    host = settings(accelerator="cpu")
    changed = replace(host, service=replace(host.service, queue_size=host.service.queue_size + 1))
    assert plan_for(changed).release_id != plan_for(host).release_id
    assert plan_for(settings(accelerator="cpu")).release_id == plan_for(host).release_id


def test_no_new_enough_python():
    facts = {"DebPackages": {"python3-venv": ["x"]}, "PythonVersions": Output(["python3 /usr/bin/python3 3.10.12"])}
    with pytest.raises(EnvironmentNotReady, match=r"no Python 3.11\+ on the host"):
        run_deploy(python_environment, facts, settings(accelerator="cpu"))


def test_release_is_created_then_switched_atomically_and_then_left_alone():
    host = settings(accelerator="cpu")
    plan = plan_for(host)
    manifest, rid = plan.release_manifest, plan.release_id
    assert manifest["links"]["venv"] == f"{ROOT}/venvs/{load_lock('cpu').id}"
    app = plan.app_dir
    assert manifest["links"]["app"] == app == f"{ROOT}/apps/{service_bundle()[1][:12]}"
    base = merge_facts(dirs(f"{ROOT}/releases", f"{ROOT}/apps"), store_fact(Output([])))
    fresh = run_deploy(
        release_layer,
        merge_facts(
            base,
            {
                "Directory": {f"path={ROOT}/releases/{rid}": None, f"path={app}": None},
                "Link": {f"path={ROOT}/current": None},
            },
        ),
        host,
    )
    [upload, unpack] = fresh.commands("Unpack service code")
    assert upload[0] == "upload" and upload[2] == f"{app}.tar"
    assert unpack.endswith(f"mv -T {app}.new {app}")
    [create] = fresh.commands(f"Create release {rid}")
    assert f"mv -T {ROOT}/releases/.{rid}.new {ROOT}/releases/{rid}" in create
    assert "SD35_PRECISION=auto" in create and f"> {ROOT}/releases/.{rid}.new/service.env" in create
    [switch] = fresh.commands("Switch current")
    assert "mv -T .current.new current" in switch and "previous" in switch

    current_link = {"Link": {f"path={ROOT}/current": {"link_target": f"releases/{rid}"}}}
    done = run_deploy(release_layer, merge_facts(base, dirs(f"{ROOT}/releases/{rid}", app), current_link), host)
    assert done.changes == []
