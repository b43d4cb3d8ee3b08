"""Model layer: the SD3.5 weights fetched onto the SSD cache and verified file by file.

Sources (``model.source``): ``push`` copies a directory from the control
machine; ``git`` clones a URL at the pinned commit with git-lfs; ``hf``
downloads the pinned revision with huggingface_hub into the hub cache (token
by file path only, ``endpoint`` for mirrors). The ``ModelFiles`` fact checks
every file against the manifest (missing, Git-LFS pointer, wrong SHA-256);
``drift`` names the broken files and ``apply`` fetches only those again.
"""

from __future__ import annotations

import io
import shlex

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.api.command import FileUploadCommand
from pyinfra.operations import files, server

from deploys.python_env import venv_python
from sd35_provision import layout, modelstore
from sd35_provision.facts.model import ModelCheck, ModelFiles
from sd35_provision.operations import managed_file, record_diff, record_note
from sd35_provision.spec.model import HostSettings

STEP = "Model"
HF_TOKEN_PATH = f"{layout.CONFIG_DIR}/hf-token"

# Writes the manifest of a git checkout: LFS files by their oid (the weights' SHA-256), the rest hashed as checked out.
_GIT_MANIFEST = r'''
import hashlib, json, subprocess, sys
out = sys.argv[1]
git = ["git", "-c", "safe.directory=*"]
names = subprocess.run(git + ["ls-files", "-z"], check=True, capture_output=True).stdout.decode().split("\0")
manifest = {}
for name in filter(None, names):
    blob = subprocess.run(git + ["cat-file", "-p", "HEAD:" + name], check=True, capture_output=True).stdout
    if blob.startswith(b"version https://git-lfs.github.com/spec/v1"):
        fields = dict(line.split(" ", 1) for line in blob.decode().splitlines() if " " in line)
        manifest[name] = {"size": int(fields["size"]), "sha256": fields["oid"].split(":", 1)[1]}
    elif not name.startswith(".git"):
        manifest[name] = {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
with open(out + ".partial", "w") as handle:
    json.dump(manifest, handle, indent=1, sort_keys=True)
'''

# Downloads the pinned revision (resuming what an interrupted run left) and writes the manifest from hub metadata.
_HF_FETCH = r'''
import json, os, sys
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError
repo, revision, out, patterns = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:] or None
try:
    snapshot_download(repo, revision=revision, allow_patterns=patterns, force_download=bool(patterns))
    info = HfApi().model_info(repo, revision=revision, files_metadata=True)
except GatedRepoError:
    sys.exit(f"403 from the hub: {repo} is gated and the token in model.token_file has no access; accept its "
             f"license on the model page with that account, or use a token of an account that did")
except RepositoryNotFoundError:
    sys.exit(f"{repo} not found at the hub (or the token in model.token_file cannot see it)")
except HfHubHTTPError as error:
    status = getattr(error.response, "status_code", "?")
    hint = " (check model.token_file)" if status in (401, 403) else ""
    sys.exit(f"the hub answered {status} for {repo}@{revision}{hint}")
manifest = {}
for sibling in info.siblings:
    lfs = sibling.lfs
    if lfs is not None:
        manifest[sibling.rfilename] = {"size": lfs.size, "sha256": lfs.sha256}
    else:
        path = os.path.join(os.environ["SD35_SNAPSHOT"], sibling.rfilename)
        import hashlib
        with open(path, "rb") as handle:
            data = handle.read()
        manifest[sibling.rfilename] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
with open(out + ".partial", "w") as handle:
    json.dump(manifest, handle, indent=1, sort_keys=True)
'''


@deploy(STEP)
def model_layer() -> None:
    settings: HostSettings = host.data.sd35
    user = settings.service.user
    for directory in (modelstore.models_dir(settings), modelstore.manifests_dir(settings)):
        files.directory(name=f"Directory {directory}", path=directory, user=user, group=user, mode="750")

    source = settings.model.source
    directory, manifest = modelstore.model_directory(settings), modelstore.manifest_path(settings)
    check = model_check(settings)
    if source == "push":
        expected, text = modelstore.push_manifest(settings)
        _report(check, directory)
        if not check.healthy:
            model_pushed(name=f"Push model files to {directory}", directory=directory,
                         names=sorted(expected) if not check.exists else list(check.broken), user=user)
        managed_file(name="Model manifest", path=manifest, content=text, user=user, group=user, mode="640",
                     summary=f"(manifest of {len(expected)} files)")
        return

    _report(check, directory)
    if check.healthy:
        return
    if source == "git":
        command = _git_fetch(settings, directory, manifest, check)
        server.shell(name=f"Fetch model {settings.model.url}@{settings.model.revision[:12]}", commands=[command])
        return
    if settings.model.token_file is not None:
        managed_file(name="Hugging Face token", path=HF_TOKEN_PATH,
                     content=settings.model.token_file.read_text().strip() + "\n",
                     user=user, group=user, mode="600", secret=True)
    server.shell(
        name=f"Fetch model {settings.model.repo}@{settings.model.revision[:12]}",
        commands=[_hf_fetch(settings, directory, manifest, check)],
        _env=_hf_environment(settings),
    )


def model_check(settings: HostSettings) -> ModelCheck:
    """The ModelFiles fact for this host's model, as the layer reads it (pyinfra caches the read)."""
    directory, manifest = modelstore.model_directory(settings), modelstore.manifest_path(settings)
    if settings.model.source == "push":
        return host.get_fact(ModelFiles, directory=directory, manifest_path=manifest,
                             manifest=modelstore.push_manifest(settings)[1])
    return host.get_fact(ModelFiles, directory=directory, manifest_path=manifest)


def _report(check: ModelCheck, directory: str) -> None:
    if not check.manifest or not check.exists:
        record_note(f"model {directory} is not fetched yet")
        return
    problems = check.problems()
    if problems:
        shown = problems[:6] + ([f"{len(problems) - 6} more"] if len(problems) > 6 else [])
        record_note(f"model {directory}: " + "; ".join(shown))


@operation()
def model_pushed(directory: str, names: list[str], user: str):
    """
    Upload the named files of ``model.path`` into ``directory`` (each staged, then renamed).

    + directory: the model directory on the host
    + names: files (relative paths) to send: all of them, or only the broken ones
    + user: who owns them (the service user)
    """
    settings: HostSettings = host.data.sd35
    record_diff("".join(f"+ {name}\n" for name in names))
    parents = sorted({f"{directory}/{name}".rsplit("/", 1)[0] for name in names})
    yield f"mkdir -p {' '.join(shlex.quote(p) for p in parents)}"
    for name in names:
        remote = f"{directory}/{name}"
        yield FileUploadCommand(str(settings.model.path / name), f"{remote}.partial")
        yield f"mv -f {shlex.quote(remote + '.partial')} {shlex.quote(remote)}"
    yield f"chown -R {user}:{user} {shlex.quote(directory)} && chmod -R u=rwX,g=rX,o= {shlex.quote(directory)}"


def _git_fetch(settings: HostSettings, directory: str, manifest: str, check: ModelCheck) -> str:
    d, m = shlex.quote(directory), shlex.quote(manifest)
    url, revision, user = shlex.quote(settings.model.url), shlex.quote(settings.model.revision), settings.service.user
    git = "git -c safe.directory='*' -c advice.detachedHead=false"
    lines = ["set -eu"]
    if check.manifest and check.exists and not check.missing and not check.mismatched:
        # Only pointer files: a clone made before git-lfs was set up. Fetch their content.
        include = ",".join(check.pointers)
        lines += [f"cd {d}", f"{git} lfs install --local", f"{git} lfs pull --include={shlex.quote(include)}"]
    elif check.manifest and check.exists:
        broken = " ".join(shlex.quote(name) for name in check.broken)
        lines += [f"cd {d}", f"rm -f -- {broken}", f"{git} checkout --force {revision} -- {broken}",
                  f"{git} lfs install --local", f"{git} lfs pull --include={shlex.quote(','.join(check.broken))}"]
    else:
        lines += [
            f"if [ ! -d {d}/.git ]; then rm -rf {d}.partial && {git} clone --no-checkout {url} {d}.partial "
            f"&& mv -T {d}.partial {d}; fi",
            f"cd {d}",
            f"{git} lfs install --local",
            f"{git} cat-file -e {revision}^{{commit}} 2>/dev/null || {git} fetch origin {revision}",
            f"{git} checkout --force {revision}",
            f"{git} lfs pull",
            f"python3 -c {shlex.quote(_GIT_MANIFEST)} {m}",
            f"mv -f {m}.partial {m}",
        ]
    lines.append(f"chown -R {user}:{user} {d} && chmod -R u=rwX,g=rX,o= {d}")
    return "\n".join(lines)


def _hf_environment(settings: HostSettings) -> dict[str, str]:
    env = {"HF_HOME": settings.cache.hf_home, "HF_HUB_CACHE": f"{settings.cache.hf_home}/hub",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "SD35_SNAPSHOT": modelstore.model_directory(settings)}
    if settings.model.token_file is not None:
        env["HF_TOKEN_PATH"] = HF_TOKEN_PATH  # a path: the token itself never reaches argv or the environment
    if settings.model.endpoint:
        env["HF_ENDPOINT"] = settings.model.endpoint
    return env


def _hf_fetch(settings: HostSettings, directory: str, manifest: str, check: ModelCheck) -> str:
    patterns = list(check.broken) if check.manifest and check.exists else []
    m, user = shlex.quote(manifest), settings.service.user
    args = " ".join(shlex.quote(a) for a in (settings.model.repo, settings.model.revision, manifest, *patterns))
    return "\n".join([
        "set -eu",
        f"{shlex.quote(venv_python(settings))} -c {shlex.quote(_HF_FETCH)} {args}",
        f"mv -f {m}.partial {m}",
        f"chown -R {user}:{user} {shlex.quote(settings.cache.hf_home)}",
    ])
