"""The model layer against recorded facts: what each source fetches, only what is broken, and no secret anywhere."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path

import pytest
from pyinfra.api.util import get_kwargs_str

from sd35_provision import layout, modelstore
from sd35_provision.deploys.model import ModelNotReady, model_layer
from sd35_provision.facts.disk import FreeSpaceInfo
from sd35_provision.facts.model import BrokenFile, ModelCheck, ModelFiles, modelcheck_source
from sd35_provision.hostspec.settings import CacheSettings, GpuSettings, HostSettings, ModelSettings, PythonSettings
from sd35_provision.locks import load_lock
from tests.pyinfra_fakes import existing_files, merge_facts, plan_for, run_deploy

REV = "447068b6f7224c7d6673756e2605a4abdd802414"
ROOT = "/srv/sd35"
TOKEN = "hf_unitTestTokenDoNotLeak0123456789"
WEIGHT = "transformer/diffusion_pytorch_model.safetensors"
SOURCE = shlex.quote(modelcheck_source())


@pytest.fixture
def push_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = tmp_path / "tiny"
    (model / "transformer").mkdir(parents=True)
    (model / "model_index.json").write_text('{"_class_name": "StableDiffusion3Pipeline"}\n')
    (model / "transformer" / "config.json").write_text('{"num_layers": 1}\n')
    (model / WEIGHT).write_bytes(bytes(range(256)) * 40)
    (model / ".gitattributes").write_text("*.safetensors filter=lfs\n")  # hidden: left out
    return model


def settings(source: str, **model) -> HostSettings:
    defaults = {
        "push": {},
        "git": {"url": "file:///mirror/tiny.git", "revision": REV},
        "hf": {"repo": "sd35-test/tiny-sd3", "revision": REV},
    }[source]
    return HostSettings(
        name="gpu-a1",
        address="10.0.0.1",
        gpu=GpuSettings(accelerator="cpu"),
        cache=CacheSettings(root=ROOT),
        python=PythonSettings(torch_flavour="cpu"),
        model=ModelSettings(source=source, **{**defaults, **model}),
    )


def model_dir(host: HostSettings) -> str:
    return plan_for(host).model_dir


def manifest_path(host: HostSettings) -> str:
    return plan_for(host).model_manifest_path


def model_fact(host: HostSettings, check: ModelCheck) -> dict:
    """The ModelFiles reading the layer makes for ``host``, answered with ``check``."""
    args = {
        "directory": model_dir(host),
        "git": host.model.source == "git",
        "manifest": None,
        "manifest_path": manifest_path(host),
        "user": "sd35",
    }
    if host.model.source == "push":
        args["manifest"], args["git"] = modelstore.push_manifest(host)[1], False
    return {"ModelFiles": {get_kwargs_str(args): check}}


def run(host: HostSettings, check: ModelCheck, free_gb: float = 100.0, extra_files: dict | None = None):
    dirs = {
        f"path={p}": {"mode": 750, "user": "sd35", "group": "sd35"} for p in (f"{ROOT}/models", f"{ROOT}/manifests")
    }
    files = {manifest_path(host): None, layout.HF_TOKEN_FILE: None}
    facts = merge_facts(
        existing_files(files),
        existing_files(extra_files or {}, user="sd35", group="sd35", mode=640),
        {"Directory": dirs},
        model_fact(host, check),
        {
            "FreeSpace": {
                f"path={model_dir(host)}": FreeSpaceInfo(
                    path=model_dir(host),
                    nearest=ROOT,
                    mount="/srv",
                    source="/dev/nvme0n1p1",
                    total_bytes=10**12,
                    free_bytes=int(free_gb * 1e9),
                )
            }
        },
    )
    result = run_deploy(model_layer, facts, host)
    for op in result.operations:  # the shipped checker's source is noise to these tests
        op.commands = [c.replace(SOURCE, "MODELCHECK") if isinstance(c, str) else c for c in op.commands]
    return result


HEALTHY = ModelCheck(manifest=True, exists=True, files=3, git_head=REV)
ABSENT = ModelCheck(manifest=False, exists=False)


def test_model_directory_per_source(push_dir):
    assert model_dir(settings("hf")) == f"{ROOT}/huggingface/hub/models--sd35-test--tiny-sd3/snapshots/{REV}"
    assert model_dir(settings("git")) == f"{ROOT}/models/git-tiny-{REV[:12]}"
    pushed = model_dir(settings("push", path=push_dir))
    assert pushed.startswith(f"{ROOT}/models/push-") and len(pushed.rsplit("-", 1)[1]) == 12
    for source in ("hf", "git"):
        assert manifest_path(settings(source)).startswith(f"{ROOT}/manifests/")


def test_push_manifest_hashes_each_file_once_and_leaves_hidden_files_out(push_dir):
    host = settings("push", path=push_dir)
    manifest, text = modelstore.push_manifest(host)
    assert sorted(manifest["files"]) == ["model_index.json", "transformer/config.json", WEIGHT]
    import hashlib

    assert manifest["files"][WEIGHT] == {
        "size": 10240,
        "sha256": hashlib.sha256((push_dir / WEIGHT).read_bytes()).hexdigest(),
    }
    # the second time, from the stat-keyed cache (a changed file is hashed again)
    before = model_dir(host)
    (push_dir / WEIGHT).write_bytes(b"changed")
    assert model_dir(host) != before


def test_push_directory_without_a_pipeline_is_refused(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    with pytest.raises(modelstore.ModelSourceError, match="has no model_index.json"):
        modelstore.push_manifest(settings("push", path=tmp_path / "junk"))


def test_push_to_a_fresh_host_sends_every_file_then_checks_them(push_dir):
    host = settings("push", path=push_dir)
    result = run(host, ABSENT)
    directory = model_dir(host)
    [push] = [op for op in result.changes if op.name.startswith("Model | Push model files")]
    uploads = [c for c in push.commands if isinstance(c, list) and c[0] == "upload"]
    assert [c[2] for c in uploads] == [
        f"{directory}/{n}.partial" for n in ("model_index.json", "transformer/config.json", WEIGHT)
    ]
    assert push.commands[0] == f"install -d -o sd35 -g sd35 -m 750 {directory} {directory}/transformer"
    assert f"mv -f {directory}/{WEIGHT}.partial {directory}/{WEIGHT}" in push.commands
    assert "verify --strict" in push.commands[-1] and "--user sd35" in push.commands[-1]
    assert any(op.name == "Model | Model manifest" and op.changed for op in result.operations)
    assert "model not fetched yet" in result.notes
    assert any("not fetched yet" in diff for diff in result.diffs)
    # After the run: what was done, not what was planned; a push that did not run leaves the plan's note.
    done = result.notes_after(succeeded=["Model |"])
    assert "model not fetched yet" not in done and "model fetched and verified" in done
    assert "model not fetched yet" in run(host, ABSENT).notes_after(failed=["Push model files"])


def test_push_sends_only_the_broken_file_and_names_it(push_dir):
    host = settings("push", path=push_dir)
    manifest = manifest_path(host)
    mismatch = BrokenFile(WEIGHT, "checksum", "checksum mismatch: sha256 0a1b..., expected 9c2d...")
    broken = replace(HEALTHY, broken=(mismatch,))
    result = run(host, broken, extra_files={manifest: modelstore.push_manifest(host)[1]})
    [push] = result.changes
    assert [c[2] for c in push.commands if isinstance(c, list)] == [f"{model_dir(host)}/{WEIGHT}.partial"]
    [diff] = result.diffs
    assert f"- {WEIGHT}: checksum mismatch: sha256 0a1b..., expected 9c2d..." in diff
    assert f"+ fetch again: {WEIGHT}" in diff
    assert result.notes == [f"model: {WEIGHT}: checksum mismatch: sha256 0a1b..., expected 9c2d..."]


def test_healthy_push_changes_nothing(push_dir):
    host = settings("push", path=push_dir)
    result = run(host, HEALTHY, extra_files={manifest_path(host): modelstore.push_manifest(host)[1]})
    assert result.changes == [] and result.notes == []


def test_push_that_does_not_fit_fails_before_sending_anything(push_dir):
    (push_dir / WEIGHT).write_bytes(b"\0" * 3_000_000)
    with pytest.raises(
        ModelNotReady,
        match=r"gpu-a1: Model: not enough disk space .* 0\.00 GB to push|"
        r"not enough disk space for the model at .*: "
        r"0\.00 GB to push, 0\.00 GB free",
    ):
        run(settings("push", path=push_dir), ABSENT, free_gb=0.001)


def test_git_fresh_clone_checks_out_pointers_then_pulls_lfs_content_after_a_space_check():
    host = settings("git")
    result = run(host, ABSENT)
    [fetch] = result.changes
    assert fetch.name == f"Model | Fetch model file:///mirror/tiny.git at {REV[:12]}"
    [script] = fetch.commands
    steps = script.splitlines()
    directory = model_dir(host)
    order = [
        "clone --quiet --no-checkout -- file:///mirror/tiny.git",
        "lfs install --local",
        f"fetch --quiet origin {REV}",
        f"checkout --quiet --force --detach {REV}",
        " git-manifest ",
        " space ",
        "lfs pull",
        f"rm -rf {directory}/.git/lfs/objects",
        "chown -h sd35:sd35",
        " verify --strict ",
    ]
    positions = [next(i for i, line in enumerate(steps) if part in line) for part in order]
    assert positions == sorted(positions), steps
    assert "--include" not in script


def test_git_pointer_trap_is_repaired_by_pulling_only_those_files():
    host = settings("git")
    check = replace(
        HEALTHY,
        broken=(
            BrokenFile(WEIGHT, "lfs-pointer", "Git LFS pointer file (132 bytes) instead of the content"),
            BrokenFile("vae/diffusion_pytorch_model.safetensors", "lfs-pointer", "Git LFS pointer file"),
        ),
    )
    [fetch] = run(host, check).changes
    [script] = fetch.commands
    assert "clone" not in script
    assert f"rm -f -- {WEIGHT} vae/diffusion_pytorch_model.safetensors" in script
    assert f"checkout --quiet {REV} -- {WEIGHT} vae/diffusion_pytorch_model.safetensors" in script
    assert f"lfs pull --include={WEIGHT},vae/diffusion_pytorch_model.safetensors" in script


def test_git_checkout_at_another_commit_is_fetched_again():
    check = replace(HEALTHY, git_head="0" * 40)
    [fetch] = run(settings("git"), check).changes
    assert "checkout --quiet --force --detach" in fetch.commands[0]


def test_unreadable_files_only_change_owners():
    check = replace(HEALTHY, broken=(BrokenFile(WEIGHT, "unreadable", "not readable by the service user sd35"),))
    [fetch] = run(settings("git"), check).changes
    [script] = fetch.commands
    assert "lfs pull" not in script and "checkout" not in script
    assert "chown -h sd35:sd35" in script


def test_healthy_git_and_hf_change_nothing():
    for source in ("git", "hf"):
        result = run(settings(source), HEALTHY)
        assert result.changes == [], source


def test_hf_download_runs_as_the_service_user_with_the_token_by_path_only(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    host = settings("hf", token_file=token_file, endpoint="https://hf-mirror.example.eu")
    result = run(host, ABSENT)
    names = [op.name for op in result.changes]
    assert names == ["Model | Hugging Face token", f"Model | Download model sd35-test/tiny-sd3 at {REV[:12]}"]
    [upload] = result.commands("Hugging Face token")[:1]
    assert upload == ["upload", TOKEN + "\n", "/etc/sd35/hf-token"]  # by SFTP, not by command line
    assert "chmod 600 /etc/sd35/hf-token" in result.commands("Hugging Face token")
    [script] = result.commands("Download model")
    venv = f"/opt/sd35/venvs/{load_lock('cpu').id}/bin/python"
    assert f"runuser -u sd35 -- env HOME={ROOT} HF_HOME={ROOT}/huggingface" in script
    assert "HF_TOKEN_PATH=/etc/sd35/hf-token" in script and f"{venv} -c" in script
    assert f"hf-fetch --repo sd35-test/tiny-sd3 --revision {REV} --cache-dir {ROOT}/huggingface/hub" in script
    assert "--endpoint https://hf-mirror.example.eu" in script and "--repair" not in script
    visible = json.dumps([op.commands for op in result.operations if op.name != "Model | Hugging Face token"])
    assert TOKEN not in visible + "".join(result.diffs) + "".join(result.notes)
    assert "(secret file: content not shown)" in "".join(result.diffs)


def test_hf_repair_names_the_broken_files():
    check = replace(
        HEALTHY,
        broken=(
            BrokenFile(WEIGHT, "checksum", "checksum mismatch"),
            BrokenFile("vae/config.json", "missing", "missing"),
        ),
    )
    [fetch] = run(settings("hf"), check).changes
    assert f"--repair {WEIGHT} --repair vae/config.json" in fetch.commands[0]
    assert "HF_TOKEN_PATH" not in fetch.commands[0]  # no token_file: none named


def test_empty_token_file_fails_the_host_naming_the_file(tmp_path):
    (tmp_path / "token").write_text("\n")
    with pytest.raises(ModelNotReady, match=r"model.token_file .*/token is empty"):
        run(settings("hf", token_file=tmp_path / "token"), ABSENT)


def test_model_fact_reads_what_the_checker_prints():
    output = json.dumps(
        {
            "manifest": True,
            "directory": True,
            "files": 2,
            "bytes": 10,
            "rehashed": 1,
            "git_head": REV,
            "broken": [{"path": WEIGHT, "problem": "lfs-pointer", "detail": "Git LFS pointer file"}],
        }
    )
    check = ModelFiles().process(["some warning", output])
    assert check.pointers == (WEIGHT,) and check.refetch == (WEIGHT,) and not check.healthy
    assert check.problems() == [f"{WEIGHT}: Git LFS pointer file"]
    with pytest.raises(ValueError, match="unexpected output"):
        ModelFiles().process(["Traceback (most recent call last):"])
