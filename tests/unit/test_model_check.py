"""The model checker (sd35_provision/hostside/modelcheck.py, with hostside/manifests.py) on real
files: every kind of broken file, the stat-keyed hash cache, git+LFS manifests and the pointer
trap, the free-space check, the fact's command as the host runs it, and ``hf-fetch`` against a
fake hub (fresh download, repair of one file, 403/401/unknown revision, the token read from its
file only).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sd35_provision.facts.model import ModelFiles, modelcheck_source
from sd35_provision.hostside import manifests, modelcheck
from tests.fakehub import FakeHub, FakeRepo

WEIGHT = "transformer/diffusion_pytorch_model.safetensors"
REV = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_unitTestTokenDoNotLeak0123456789"


def make_model(root: Path) -> Path:
    (root / "transformer").mkdir(parents=True)
    (root / "model_index.json").write_text('{"_class_name": "StableDiffusion3Pipeline"}\n')
    (root / "transformer" / "config.json").write_text('{"num_layers": 1}\n')
    (root / WEIGHT).write_bytes(os.urandom(300_000))
    return root


def problems(result: dict) -> dict[str, str]:
    return {item["path"]: item["problem"] for item in result["broken"]}


def test_healthy_then_each_kind_of_broken_file(tmp_path):
    model = make_model(tmp_path / "m")
    manifest = manifests.directory_manifest(str(model))
    cache = str(tmp_path / "hashes.json")
    assert modelcheck.verify(str(model), manifest, cache)["broken"] == []

    (model / "transformer" / "config.json").unlink()
    (model / WEIGHT).write_bytes(
        b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"a" * 64 + b"\nsize 300000\n"
    )
    (model / "model_index.json").write_text('{"_class_name": "Other"}\n')
    result = modelcheck.verify(str(model), manifest, cache)
    assert problems(result) == {"transformer/config.json": "missing", WEIGHT: "lfs-pointer", "model_index.json": "size"}
    (model / "model_index.json").write_text('{"_class_name": "StableDiffusion3PipelinX"}\n')  # same size
    broken = modelcheck.verify(str(model), manifest, cache)["broken"]
    [checksum] = [i for i in broken if i["path"] == "model_index.json"]
    assert checksum["problem"] == "checksum" and checksum["detail"].startswith("checksum mismatch: sha256 ")


def test_hash_cache_rehashes_only_changed_files_even_when_the_mtime_is_put_back(tmp_path):
    model = make_model(tmp_path / "m")
    manifest = manifests.directory_manifest(str(model))
    cache = str(tmp_path / "hashes.json")
    assert modelcheck.verify(str(model), manifest, cache)["rehashed"] == 3
    assert modelcheck.verify(str(model), manifest, cache)["rehashed"] == 0  # stat unchanged: nothing read

    weight = model / WEIGHT
    before = weight.stat()
    with open(weight, "r+b") as handle:  # same size, a few bytes flipped, mtime set back by hand
        handle.seek(1000)
        handle.write(b"\xff\xfe\xfd")
    os.utime(weight, ns=(before.st_atime_ns, before.st_mtime_ns))
    result = modelcheck.verify(str(model), manifest, cache)
    assert result["rehashed"] == 1 and problems(result) == {WEIGHT: "checksum"}  # ctime still moved


def test_without_a_manifest_only_pointer_files_are_reported(tmp_path):
    model = make_model(tmp_path / "m")
    (model / WEIGHT).write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"b" * 64 + b"\nsize 9\n")
    result = modelcheck.verify(str(model), None, None)
    assert result["manifest"] is False and problems(result) == {WEIGHT: "lfs-pointer"}
    assert modelcheck.verify(str(tmp_path / "absent"), None, None)["directory"] is False


@pytest.mark.skipif(os.geteuid() != 0, reason="needs files owned by root and a user that is not")
def test_files_the_service_user_cannot_read_are_named_with_owner_and_mode(tmp_path):
    model = make_model(tmp_path / "m")
    manifest = manifests.directory_manifest(str(model))
    tmp_path.chmod(0o755)
    (model / WEIGHT).chmod(0o600)
    result = modelcheck.verify(str(model), manifest, None, user="nobody")
    [item] = result["broken"]
    assert item["path"] == WEIGHT and item["problem"] == "unreadable"
    assert f"({WEIGHT} is root:root mode 0600)" in item["detail"]


def git(*args: str, cwd: Path, env: dict | None = None) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    ).stdout.strip()


@pytest.fixture
def lfs_mirror(tmp_path) -> tuple[Path, str]:
    if shutil.which("git-lfs") is None:
        pytest.skip("git-lfs is not installed")
    source = make_model(tmp_path / "src")
    git("init", "-q", cwd=source)
    git("lfs", "track", "*.safetensors", cwd=source)
    git("add", "-A", cwd=source)
    git("commit", "-qm", "tiny", cwd=source)
    bare = tmp_path / "tiny.git"
    git("clone", "-q", "--bare", str(source), str(bare), cwd=tmp_path)
    git("lfs", "push", "--all", f"file://{bare}", cwd=source)
    return bare, git("rev-parse", "HEAD", cwd=source)


def test_git_manifest_takes_lfs_oids_and_blob_ids_and_catches_the_pointer_trap(tmp_path, lfs_mirror):
    bare, revision = lfs_mirror
    trap = tmp_path / "trap"  # cloned the way a host without git-lfs set up clones
    git("clone", "-q", f"file://{bare}", str(trap), cwd=tmp_path, env={"GIT_LFS_SKIP_SMUDGE": "1"})
    manifest = manifests.git_manifest(str(trap))
    assert manifest["revision"] == revision
    real = (tmp_path / "src" / WEIGHT).read_bytes()
    assert manifest["files"][WEIGHT] == {"size": len(real), "sha256": hashlib.sha256(real).hexdigest(), "lfs": True}
    blob = git("hash-object", "model_index.json", cwd=tmp_path / "src")
    assert manifest["files"]["model_index.json"] == {"size": 44, "git_sha1": blob}
    assert ".gitattributes" in manifest["files"]

    assert problems(modelcheck.verify(str(trap), manifest, None)) == {WEIGHT: "lfs-pointer"}
    assert modelcheck.git_head(str(trap)) == revision  # read from .git, no git run
    git("lfs", "pull", cwd=trap)
    assert modelcheck.verify(str(trap), manifest, None)["broken"] == []


def test_space_check_names_the_directory_and_both_sizes(tmp_path):
    model = make_model(tmp_path / "m")
    manifest = manifests.directory_manifest(str(model))
    assert modelcheck.bytes_needed(str(model), manifest) == 0
    (model / WEIGHT).unlink()
    assert modelcheck.bytes_needed(str(model), manifest) == 300_000
    message = modelcheck.check_space(str(tmp_path / "not" / "yet"), 10**15, " (twice)")
    assert message.startswith(
        f"not enough disk space for the model at {tmp_path}/not/yet: 1000000.00 GB needed (twice), "
    )
    assert f"GB free on {tmp_path}" in message
    assert modelcheck.check_space(str(model), 1) is None


def run_shipped(*args: str, python: str = "python3", stdin: str | None = None, env: dict | None = None):
    """The checker as a host runs it: ``python3 -c <source> ...``."""
    return subprocess.run(
        [python, "-c", modelcheck_source(), *args], capture_output=True, text=True, input=stdin, env=env, timeout=120
    )


def test_the_fact_command_runs_in_sh_with_an_inline_manifest(tmp_path):
    model = make_model(tmp_path / "m")
    manifest = manifests.directory_manifest(str(model))
    (model / "transformer" / "config.json").write_text("{}\n")
    fact = ModelFiles()
    command = fact.command(
        directory=str(model), manifest_path=str(tmp_path / "manifest.json"), manifest=json.dumps(manifest)
    )
    output = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout
    check = fact.process(output.splitlines())
    assert check.manifest and check.exists and check.mismatched == ("transformer/config.json",)
    assert (tmp_path / "manifest.hashes.json").is_file()  # the hash cache, beside the manifest


def test_strict_verify_exits_1_naming_each_broken_file(tmp_path):
    model = make_model(tmp_path / "m")
    manifests.write_json(str(tmp_path / "manifest.json"), manifests.directory_manifest(str(model)))
    (model / WEIGHT).unlink()
    result = run_shipped("verify", "--strict", "--dir", str(model), "--manifest", str(tmp_path / "manifest.json"))
    assert result.returncode == 1
    assert result.stderr.strip() == f"model files still broken after the fetch: {WEIGHT}: missing"


# -- hf-fetch against the fake hub, with this machine's huggingface_hub -----------------------


@pytest.fixture
def hub(tmp_path):
    pytest.importorskip("huggingface_hub")
    model = make_model(tmp_path / "tiny")
    # Laid out like stabilityai/stable-diffusion-3.5-large: what the pipeline loads, and what it never reads.
    (model / "model_index.json").write_text(
        '{"_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", "SD3Transformer2DModel"], '
        '"image_encoder": [null, null]}\n'
    )
    for name in NOT_LOADED:
        (model / name).parent.mkdir(parents=True, exist_ok=True)
        (model / name).write_bytes(os.urandom(1000))
    fake = FakeHub(
        repos={
            "sd35-test/tiny": FakeRepo.from_directory(model, REV),
            "sd35-test/gated": FakeRepo.from_directory(model, REV, gated=True),
        },
        tokens={TOKEN},
    )
    with fake.serve() as running:
        fake.url = running.url
        yield fake


NOT_LOADED = (
    "sd3.5_tiny.safetensors",
    "text_encoders/clip_l.safetensors",
    "README.md",
    "transformer/diffusion_pytorch_model.bin",
)


def test_pipeline_files_are_the_index_and_its_component_folders():
    files = {
        name: {}
        for name in (
            "model_index.json",
            "README.md",
            "sd3.5_large.safetensors",
            "text_encoders/t5xxl_fp16.safetensors",
            "vae/config.json",
            "vae/diffusion_pytorch_model.safetensors",
            "vae/diffusion_pytorch_model.bin",
            "tokenizer/vocab.json",
            "text_encoder/model.bin",
            "scheduler/scheduler_config.json",
        )
    }
    index = {
        "_class_name": "StableDiffusion3Pipeline",
        "_diffusers_version": "0.31.0",
        "vae": ["diffusers", "AutoencoderKL"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "image_encoder": [None, None],
    }
    assert sorted(manifests.pipeline_files(files, index)) == [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/model.bin",  # its only weights
        "tokenizer/vocab.json",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    assert manifests.pipeline_files(files, {"_class_name": "Custom"}) == files  # nothing to go by: all


def hf_fetch(
    tmp_path: Path,
    hub: FakeHub,
    repo: str = "sd35-test/tiny",
    token: str | None = TOKEN,
    revision: str = REV,
    repair: tuple[str, ...] = (),
):
    home = tmp_path / "hf"
    (home / "hub").mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    if token is not None:
        (tmp_path / "token").write_text(token + "\n")
        env["HF_TOKEN_PATH"] = str(tmp_path / "token")
    args = [
        "hf-fetch",
        "--repo",
        repo,
        "--revision",
        revision,
        "--cache-dir",
        str(home / "hub"),
        "--manifest",
        str(tmp_path / "manifest.json"),
        "--endpoint",
        hub.url,
    ]
    for name in repair:
        args += ["--repair", name]
    return run_shipped(*args, python=sys.executable, env=env)


def snapshot(tmp_path: Path, repo: str = "sd35-test/tiny") -> Path:
    return tmp_path / "hf" / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / REV


def test_hf_fetch_downloads_writes_the_hub_manifest_and_repairs_only_the_broken_file(tmp_path, hub):
    result = hf_fetch(tmp_path, hub)
    assert result.returncode == 0, result.stderr
    assert sorted(hub.downloads()) == ["model_index.json", "transformer/config.json", WEIGHT]
    assert {token for _, _, token in hub.log} == {TOKEN}  # sent on every request, read from the file
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    weight = (tmp_path / "tiny" / WEIGHT).read_bytes()
    assert manifest["files"][WEIGHT] == {"size": len(weight), "sha256": hashlib.sha256(weight).hexdigest()}
    assert set(manifest["files"]["model_index.json"]) == {"size", "git_sha1"}
    assert sorted(manifest["files"]) == ["model_index.json", "transformer/config.json", WEIGHT]  # NOT_LOADED left
    cache = str(tmp_path / "hashes.json")
    assert modelcheck.verify(str(snapshot(tmp_path)), manifest, cache)["broken"] == []

    blob = (snapshot(tmp_path) / WEIGHT).resolve()
    with open(blob, "r+b") as handle:
        handle.write(b"corrupt")
    assert problems(modelcheck.verify(str(snapshot(tmp_path)), manifest, cache)) == {WEIGHT: "checksum"}
    hub.log.clear()
    result = hf_fetch(tmp_path, hub, repair=(WEIGHT,))
    assert result.returncode == 0, result.stderr
    assert hub.downloads() == [WEIGHT]
    assert modelcheck.verify(str(snapshot(tmp_path)), manifest, cache)["broken"] == []


def test_hf_fetch_resumes_an_interrupted_download_with_what_is_missing(tmp_path, hub):
    assert hf_fetch(tmp_path, hub).returncode == 0
    (snapshot(tmp_path) / WEIGHT).resolve().unlink()  # as if the download stopped before this file
    (snapshot(tmp_path) / WEIGHT).unlink()
    hub.log.clear()
    assert hf_fetch(tmp_path, hub, repair=(WEIGHT,)).returncode == 0
    assert hub.downloads() == [WEIGHT]


@pytest.mark.parametrize(
    "repo, token, revision, message",
    [
        (
            "sd35-test/gated",
            TOKEN,
            REV,
            "403 Forbidden from {url}: sd35-test/gated is a gated repository and the "
            "account that owns the token in model.token_file has not been granted access; open {url}/sd35-test/gated "
            "logged in as that account, accept the license, then run apply again",
        ),
        (
            "sd35-test/gated",
            None,
            REV,
            "401 Unauthorized from {url} for sd35-test/gated: no token was sent; set "
            "model.token_file to a file holding a read token (gated repos also need their license accepted at "
            "{url}/sd35-test/gated)",
        ),
        (
            "sd35-test/tiny",
            "hf_revokedToken",
            REV,
            "401 Unauthorized from {url} for sd35-test/tiny: the token in "
            "model.token_file was refused (expired, revoked or without read access); "
            "put a valid read token in that file",
        ),
        (
            "sd35-test/tiny",
            TOKEN,
            "f" * 40,
            f"revision {'f' * 40} not found in sd35-test/tiny on {{url}}; check model.revision",
        ),
    ],
)
def test_hf_fetch_refusals_are_one_clear_line(tmp_path, hub, repo, token, revision, message):
    result = hf_fetch(tmp_path, hub, repo=repo, token=token, revision=revision)
    assert result.returncode == modelcheck.EXIT_UNREACHABLE
    assert result.stderr.strip().splitlines()[-1] == message.format(url=hub.url)
    assert TOKEN not in result.stdout + result.stderr
    assert not snapshot(tmp_path, repo).exists()
