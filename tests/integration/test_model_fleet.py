"""The model layer over real SSH on one test host, with the tiny SD3 pipeline:

- ``git``: served as a git+LFS repo over file:// from a read-only bind-mounted mirror: fresh
  apply, no-op re-apply, a corrupted weight named by ``drift`` (exit 2) and only it fetched again,
  and the pointer trap (a clone made without git-lfs) detected and repaired;
- ``push``: files missing or broken on the host are the only ones sent again;
- ``hf``: a fake hub (tests/fakehub.py) on the fleet's loopback block, requiring the token:
  download, repair of one file, the token never in any output, host file (but its own), journal
  or process list, and a gated repo's 403 reported with what to do.

Each test asks ``states`` for the host it starts from, so it runs alone or in any order.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest

from sd35_provision.hostplan import model_location
from sd35_provision.hostspec import load_spec
from sd35_provision.tinymodel import generate_tiny_pipeline
from tests.conftest import booted_fleet, cpu_fleet_defaults
from tests.fakehub import FakeHub, FakeRepo
from tests.integration.support import PROVISIONED, cli
from tests.integration.test_provision_fleet import json_report

pytestmark = pytest.mark.fleet
WEIGHT = "transformer/diffusion_pytorch_model.safetensors"
WEIGHTS = [
    "text_encoder/model.safetensors",
    "text_encoder_2/model.safetensors",
    "text_encoder_3/model.safetensors",
    WEIGHT,
    "vae/diffusion_pytorch_model.safetensors",
]
HUB_REVISION = "5ad3d1b3c0b1e0f2a4c6e8d0b2a4c6e8d0f2a4c6"
TOKEN = "hf_fleetTestToken_9f8e7d6c5b4a3210"


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, cpu_wheelhouse):
    work = tmp_path_factory.mktemp("model-fleet")
    tiny = generate_tiny_pipeline(work / "tiny-sd3")
    source = work / "src"
    subprocess.run(["cp", "-a", str(tiny), str(source)], check=True)
    git("init", "-q", cwd=source)
    git("lfs", "track", "*.safetensors", cwd=source)
    git("add", "-A", cwd=source)
    git("commit", "-qm", "tiny SD3 pipeline", cwd=source)
    mirror = work / "mirror"
    mirror.mkdir()
    git("clone", "-q", "--bare", str(source), str(mirror / "tiny.git"), cwd=work)
    git("lfs", "push", "--all", f"file://{mirror / 'tiny.git'}", cwd=source)
    subprocess.run(["chmod", "-R", "a+rX", str(mirror)], check=True)
    (work / "hf-token").write_text(TOKEN + "\n")

    with booted_fleet(1, work / "fleet", binds=(f"{mirror}:/mirror",)) as booted:
        booted.tiny = tiny
        booted.revision = git("rev-parse", "HEAD", cwd=source)
        booted.wheelhouse = cpu_wheelhouse
        booted.token_file = work / "hf-token"
        yield booted


def write_spec(fleet, name: str, model: dict) -> Path:
    defaults = cpu_fleet_defaults(fleet, model, service={"precision": "fp32", "port": 8610})
    return fleet.write_spec(fleet.state_dir / name, extra_defaults=defaults)


def sh(fleet, command: str) -> str:
    result = fleet.run("node1", command, timeout=300)
    assert result.exit_status == 0, f"{command}: {result.stderr}"
    return result.stdout.strip()


def model_dir(spec: Path) -> str:
    return model_location(load_spec(spec).host("node1")).directory


def stats(fleet, directory: str, names: list[str]) -> dict[str, str]:
    """inode and mtime of each file: a file fetched again gets a new one."""
    out = sh(fleet, "cd " + directory + " && stat -L -c '%n %i %Y.%y' " + " ".join(names))
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.splitlines()}


def host_sha256(fleet, path: str) -> str:
    return sh(fleet, f"sha256sum {path}").split()[0]


def local_sha256(fleet, name: str) -> str:
    return hashlib.sha256((fleet.tiny / name).read_bytes()).hexdigest()


def assert_unchanged(result) -> None:
    assert re.search(r"node1\s+unchanged\s+0", result.stdout), result.stdout + result.stderr


def git_spec(fleet) -> Path:
    return write_spec(
        fleet, "git.yaml", {"source": "git", "url": "file:///mirror/tiny.git", "revision": fleet.revision}
    )


def test_git_fresh_apply_noop_and_a_corrupted_weight_fetched_again_alone(fleet, states):
    states.fresh()
    spec = git_spec(fleet)
    directory = model_dir(spec)
    plan = cli("plan", str(spec), check_exit=0)
    assert f"Model | Fetch model file:///mirror/tiny.git at {fleet.revision[:12]}" in plan.stdout
    assert "note: model not fetched yet" in plan.stdout

    cli("apply", str(spec), check_exit=0)
    for name in WEIGHTS:
        assert host_sha256(fleet, f"{directory}/{name}") == local_sha256(fleet, name), name
    assert sh(fleet, f"stat -c '%U %a' {directory}/{WEIGHT}") == "sd35 644"
    assert sh(fleet, "readlink -f /opt/sd35/current/model") == directory
    assert sh(fleet, f"ls {directory}/.git/lfs") in ("", "tmp")  # git-lfs's second copy is gone
    assert_unchanged(cli("apply", str(spec), check_exit=0))

    others = [name for name in WEIGHTS if name != WEIGHT]
    before = stats(fleet, directory, others)
    sh(fleet, f"printf 'XXXX' | dd of={directory}/{WEIGHT} bs=1 seek=1000 conv=notrunc status=none")
    drift = cli("drift", str(spec), check_exit=2)
    assert re.search(
        rf"- {re.escape(WEIGHT)}: checksum mismatch: sha256 [0-9a-f]{{12}}\.\.\., expected "
        rf"{local_sha256(fleet, WEIGHT)[:12]}\.\.\.",
        drift.stdout,
    ), drift.stdout
    assert f"+ fetch again: {WEIGHT}" in drift.stdout
    report = json_report(cli("drift", str(spec), "--json", check_exit=2))
    [host] = report["hosts"]
    assert report["drift"] and any(WEIGHT in (change["diff"] or "") for change in host["changes"])

    cli("apply", str(spec), check_exit=0)
    assert host_sha256(fleet, f"{directory}/{WEIGHT}") == local_sha256(fleet, WEIGHT)
    assert stats(fleet, directory, others) == before  # nothing else was fetched again
    cli("drift", str(spec), check_exit=0)
    states.are(spec)


def test_pointer_trap_a_clone_made_without_git_lfs_is_found_and_repaired(fleet, states):
    spec = git_spec(fleet)
    states.converged(spec)
    directory = model_dir(spec)
    # What a host does when git-lfs was never set up (GIT_CONFIG_NOSYSTEM hides `git lfs install --system`).
    sh(
        fleet,
        f"rm -rf {directory} && GIT_CONFIG_NOSYSTEM=1 git clone -q file:///mirror/tiny.git {directory} && "
        f"chown -R sd35:sd35 {directory} && head -c 42 {directory}/{WEIGHT}",
    )
    drift = cli("drift", str(spec), check_exit=2)
    for name in WEIGHTS:
        assert re.search(
            rf"- {re.escape(name)}: Git LFS pointer file \(1\d\d bytes\) instead of the \d+-byte content "
            r"\(fetched without git-lfs\)",
            drift.stdout,
        ), drift.stdout
    cli("apply", str(spec), check_exit=0)
    for name in WEIGHTS:
        assert host_sha256(fleet, f"{directory}/{name}") == local_sha256(fleet, name), name
    cli("drift", str(spec), check_exit=0)
    states.are(spec)


def test_push_sends_only_what_the_host_lacks_or_holds_broken(fleet, states):
    spec = write_spec(fleet, "push.yaml", {"source": "push", "path": str(fleet.tiny)})
    directory = model_dir(spec)
    cli("apply", str(spec), check_exit=0)
    assert sh(fleet, "readlink -f /opt/sd35/current/model") == directory
    assert sh(fleet, f"stat -c '%U' {directory}/{WEIGHT}") == "sd35"  # save_pretrained wrote it 0600 here

    gone, corrupt = "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"
    kept = [name for name in WEIGHTS if name not in (gone, corrupt)]
    before = stats(fleet, directory, kept)
    sh(
        fleet,
        f"rm {directory}/{gone} && printf 'X' | dd of={directory}/{corrupt} bs=1 seek=99 conv=notrunc status=none",
    )
    drift = cli("drift", str(spec), check_exit=2)
    assert f"- {gone}: missing" in drift.stdout and f"- {corrupt}: checksum mismatch" in drift.stdout
    assert f"+ fetch again: {corrupt}, {gone}" in drift.stdout

    cli("apply", str(spec), check_exit=0)
    assert stats(fleet, directory, kept) == before
    for name in (gone, corrupt):
        assert host_sha256(fleet, f"{directory}/{name}") == local_sha256(fleet, name)
    assert_unchanged(cli("apply", str(spec), check_exit=0))
    states.are(spec)


@pytest.fixture
def hub(fleet):
    repos = {
        "sd35-test/tiny-sd3": FakeRepo.from_directory(fleet.tiny, HUB_REVISION),
        "sd35-test/gated-sd3": FakeRepo.from_directory(fleet.tiny, HUB_REVISION, gated=True),
    }
    fake = FakeHub(repos=repos, tokens={TOKEN}, delay_s=0.3)
    address = fleet.host("node1").address.rsplit(".", 1)[0] + ".254"  # in the fleet's claimed block
    with fake.serve(address) as running:
        fake.url = running.url
        yield fake


def hf_spec(fleet, hub, repo: str = "sd35-test/tiny-sd3", name: str = "hf.yaml") -> Path:
    return write_spec(
        fleet,
        name,
        {
            "source": "hf",
            "repo": repo,
            "revision": HUB_REVISION,
            "endpoint": hub.url,
            "token_file": str(fleet.token_file),
        },
    )


def test_hf_download_repair_and_the_token_never_leaks(fleet, states, hub):
    spec = hf_spec(fleet, hub)
    directory = model_dir(spec)
    # Sample the host's process list during the whole apply: the token must never be in it.
    sh(
        fleet,
        "rm -f /tmp/ps.log; nohup sh -c 'while :; do ps -eo args >> /tmp/ps.log; sleep 0.05; done' "
        ">/dev/null 2>&1 & echo $! > /tmp/ps.pid",
    )
    try:
        outputs = [cli("plan", str(spec), check_exit=0), cli("apply", str(spec), check_exit=0)]
    finally:
        sh(fleet, "kill $(cat /tmp/ps.pid)")
    assert "hf-fetch --repo sd35-test/tiny-sd3" in sh(fleet, "cat /tmp/ps.log")  # sampled while it downloaded
    assert {token for _, _, token in hub.log} == {TOKEN}  # every request carried it
    assert sh(fleet, "readlink -f /opt/sd35/current/model") == directory
    for name in WEIGHTS:
        assert host_sha256(fleet, f"{directory}/{name}") == local_sha256(fleet, name), name
    assert sh(fleet, f"stat -L -c '%U' {directory}/{WEIGHT}") == "sd35"
    assert sh(fleet, "stat -c '%a %U' /etc/sd35/hf-token") == "600 sd35"

    blob = sh(fleet, f"readlink -f {directory}/{WEIGHT}")
    sh(fleet, f"printf 'XXXX' | dd of={blob} bs=1 seek=500 conv=notrunc status=none")
    drift = cli("drift", str(spec), check_exit=2)
    assert f"- {WEIGHT}: checksum mismatch" in drift.stdout
    hub.log.clear()
    outputs += [drift, cli("drift", str(spec), "--json", check_exit=2), cli("apply", str(spec), check_exit=0)]
    assert hub.downloads() == [WEIGHT]
    outputs += [cli("drift", str(spec), check_exit=0)]

    for output in outputs:
        assert TOKEN not in output.stdout + output.stderr
    found = sh(
        fleet, f"grep -rlF -e '{TOKEN}' /etc /opt /var/lib /var/log /var/tmp /srv /tmp /root /home 2>/dev/null || true"
    )
    assert found.split() == ["/etc/sd35/hf-token"]
    assert sh(fleet, f"journalctl --no-pager -o cat | grep -cF -e '{TOKEN}' || true") == "0"
    states.are(spec)


def test_gated_repo_403_names_host_step_and_what_to_do(fleet, states, hub):
    states.provisioned(git_spec(fleet))  # a release is serving (which one does not matter)
    spec = hf_spec(fleet, hub, repo="sd35-test/gated-sd3", name="gated.yaml")
    serving = sh(fleet, "readlink /opt/sd35/current")
    result = cli("apply", str(spec), check_exit=1)
    assert re.search(
        r"node1\s+failed\s+\d+\s+Model \| Download model sd35-test/gated-sd3 at 5ad3d1b3c0b1: "
        r"403 Forbidden",
        result.stdout,
    ), result.stdout
    assert (
        f"403 Forbidden from {hub.url}: sd35-test/gated-sd3 is a gated repository and the account that owns the "
        f"token in model.token_file has not been granted access; open {hub.url}/sd35-test/gated-sd3 logged in "
        "as that account, accept the license, then run apply again"
    ) in result.stderr
    assert TOKEN not in result.stdout + result.stderr
    assert sh(fleet, "readlink /opt/sd35/current") == serving  # the running release is untouched
    states.are(PROVISIONED)
