"""Model layer: the SD3.5 weights fetched onto the SSD cache and verified file by file.

Sources (``model.source``):

- ``push`` copies ``model.path`` from the control machine (air-gapped
  fleets); its manifest is computed there, and only files the host lacks or
  holds broken are sent, each staged as ``.partial`` and renamed.
- ``git`` clones ``model.url`` at the pinned commit with git-lfs: pointers
  are checked out first, the manifest is written from the commit (LFS oids,
  blob ids), the free space is checked, then ``git lfs pull`` fetches the
  content (and resumes what an interrupted pull left).
- ``hf`` runs huggingface_hub's ``snapshot_download`` of the pinned
  revision into the hub cache, as the service user, in the host venv. The
  manifest is the hub's own listing at that revision, narrowed to what the
  pipeline loads (``model_index.json`` and its component folders; SD3.5's
  repos also hold a single-file checkpoint and ComfyUI encoders, ~33 GB the
  service never reads). The token, if any, is
  a 0600 file of the service user, named to huggingface_hub by
  ``HF_TOKEN_PATH``: it is never on a command line, in an environment, a
  diff or a log. A gated repository whose license the token's account has not
  accepted (403) fails the host with what to do.

The ``ModelFiles`` fact checks every file against the manifest (missing,
Git-LFS pointer, size, checksum, readable by the service user): ``plan`` and
``drift`` name each broken file and why, and ``apply`` fetches only those
again, then checks the result before calling the host done.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import OperationError, deploy, operation
from pyinfra.api.command import FileUploadCommand
from pyinfra.operations import files

from sd35_provision import layout, modelstore
from sd35_provision.errors import HostError
from sd35_provision.facts.disk import FreeSpace
from sd35_provision.facts.model import ModelCheck, ModelFiles, hashes_path, modelcheck_command
from sd35_provision.operations import managed_file, record_diff, record_note
from sd35_provision.hostspec.settings import HostSettings

STEP = "Model"
HF_TOKEN_PATH = modelstore.HF_TOKEN_PATH
# Run git as root on the service user's checkout (then hand it over): git refuses a repo owned by
# another user unless told; the command-line setting covers this run only.
GIT = "git -c safe.directory='*' -c advice.detachedHead=false"


class ModelNotReady(HostError, OperationError):
    """The model cannot be put on this host as the spec says (too little disk, unusable source)."""


def hub_python(settings: HostSettings) -> str:
    """The interpreter that runs huggingface_hub on the host: the locked venv's (one place to change it)."""
    from sd35_provision.deploys.python_env import venv_python

    return venv_python(settings)


def model_check(settings: HostSettings) -> ModelCheck:
    """The ModelFiles fact for this host's model, as the layer reads it (pyinfra caches the read)."""
    directory, manifest = modelstore.model_directory(settings), modelstore.manifest_path(settings)
    user = settings.service.user
    if settings.model.source == "push":
        return host.get_fact(ModelFiles, directory=directory, manifest_path=manifest, user=user,
                             manifest=modelstore.push_manifest(settings)[1])
    return host.get_fact(ModelFiles, directory=directory, manifest_path=manifest, user=user,
                         git=settings.model.source == "git")


@deploy(STEP)
def model_layer() -> None:
    settings: HostSettings = host.data.sd35
    model = settings.model
    user = settings.service.user
    for directory in (modelstore.models_dir(settings), modelstore.manifests_dir(settings)):
        files.directory(name=f"Directory {directory}", path=directory, user=user, group=user, mode="750")
    if model.source == "hf" and model.token_file is not None:
        try:
            token = modelstore.read_token(settings)
        except modelstore.ModelSourceError as error:
            raise ModelNotReady(host.name, STEP, str(error)) from None
        managed_file(name="Hugging Face token", path=HF_TOKEN_PATH, content=token + "\n",
                     user=user, group=user, mode="600", secret=True)

    try:
        check = model_check(settings)
    except modelstore.ModelSourceError as error:
        raise ModelNotReady(host.name, STEP, str(error)) from None
    _note(check, settings)
    if model.source == "push":
        _push(settings, check)
    elif model.source == "git":
        fresh = not (check.manifest and check.exists) or not (check.git_head or "").startswith(model.revision)
        model_cloned(name=f"Fetch model {model.url} at {model.revision[:12]}", settings=settings, check=check,
                     fresh=fresh)
    else:
        model_downloaded(name=f"Download model {model.repo} at {model.revision[:12]}", settings=settings,
                         check=check, fresh=not (check.manifest and check.exists))


# -- push ---------------------------------------------------------------------------


def _push(settings: HostSettings, check: ModelCheck) -> None:
    manifest, text = modelstore.push_manifest(settings)
    directory = modelstore.model_directory(settings)
    names = sorted(manifest["files"]) if not check.exists else list(check.refetch)
    needed = sum(manifest["files"][name]["size"] for name in names)
    if needed:
        space = host.get_fact(FreeSpace, path=directory)
        if needed > space.free_bytes:
            raise ModelNotReady(host.name, STEP, (
                f"not enough disk space for the model at {directory}: {needed / 1e9:.2f} GB to push, "
                f"{space.free_bytes / 1e9:.2f} GB free on {space.mount or space.nearest}; free some space or "
                "point cache.root at a larger disk"))
    user = settings.service.user
    total = sum(entry["size"] for entry in manifest["files"].values())
    managed_file(name="Model manifest", path=modelstore.manifest_path(settings), content=text, user=user,
                 group=user, mode="640",
                 summary=f"(manifest of {len(manifest['files'])} files, {total / 1e6:.1f} MB, sha256 of each)")
    model_pushed(name=f"Push model files to {directory}", settings=settings, check=check, names=names)


@operation()
def model_pushed(settings: HostSettings, check: ModelCheck, names: list[str]):
    """
    Upload the named files of ``model.path`` into the model directory (each staged, then renamed).

    + settings: the host's settings
    + check: what the ModelFiles fact found
    + names: files (relative paths) to send: all of them, or only the broken ones
    """
    if not names and check.healthy:
        return
    directory = modelstore.model_directory(settings)
    record_diff(describe_changes(check, directory, f"push of {settings.model.path}", names))
    user, d = settings.service.user, shlex.quote(directory)
    parents = sorted({f"{directory}/{name}".rsplit("/", 1)[0] for name in names} | {directory})
    yield f"install -d -o {user} -g {user} -m 750 {' '.join(shlex.quote(p) for p in parents)}"
    for name in names:
        remote = f"{directory}/{name}"
        yield FileUploadCommand(str(settings.model.path / name), f"{remote}.partial")
        yield f"mv -f {shlex.quote(remote + '.partial')} {shlex.quote(remote)}"
    yield hand_over_script(d, user)
    yield verify_command(settings, directory)


# -- git ----------------------------------------------------------------------------


@operation()
def model_cloned(settings: HostSettings, check: ModelCheck, fresh: bool):
    """
    Clone ``model.url`` at the pinned commit with its LFS content, or fetch again only the broken files.

    + settings: the host's settings
    + check: what the ModelFiles fact found
    + fresh: no verified checkout at the pinned commit yet (clone, or complete an interrupted one)
    """
    if check.healthy and not fresh:
        return
    model = settings.model
    directory = modelstore.model_directory(settings)
    record_diff(describe_changes(check, directory, f"{model.url} at {model.revision}", None if fresh else list(check.refetch)))
    yield git_fetch_script(settings, None if fresh else list(check.refetch))


def git_fetch_script(settings: HostSettings, repair: list[str] | None) -> str:
    """The commands that bring the checkout to the pinned commit: everything (``repair`` None) or those files."""
    model = settings.model
    directory = modelstore.model_directory(settings)
    manifest = modelstore.manifest_path(settings)
    d, m, revision = shlex.quote(directory), shlex.quote(manifest), shlex.quote(model.revision)
    user = settings.service.user
    space = modelcheck_command("python3", "space", "--dir", directory, "--manifest", manifest, "--factor", "2",
                               "--why", " (git-lfs holds a second copy until the checkout is done)")
    lines = ["set -eu", "umask 022"]
    if repair is None:
        lines += [
            # Git objects only (pointers, no weights): cheap to redo if this was interrupted.
            f"if [ ! -d {d}/.git ]; then rm -rf {d}.partial && GIT_LFS_SKIP_SMUDGE=1 {GIT} clone --quiet "
            f"--no-checkout -- {shlex.quote(model.url)} {d}.partial && rm -rf {d} && mv -T {d}.partial {d}; fi",
            f"cd {d}",
            # The repo's own lfs filters: a host whose git-lfs was never set up system-wide still gets weights.
            f"{GIT} lfs install --local >/dev/null",
            f"{GIT} cat-file -e {revision}^{{commit}} 2>/dev/null || GIT_LFS_SKIP_SMUDGE=1 {GIT} fetch --quiet "
            f"origin {revision} 2>/dev/null || GIT_LFS_SKIP_SMUDGE=1 {GIT} fetch --quiet --tags origin",
            f"GIT_LFS_SKIP_SMUDGE=1 {GIT} checkout --quiet --force --detach {revision}",
            f"{modelcheck_command('python3', 'git-manifest', '--dir', directory, '--out', manifest)}",
            space,
            f"{GIT} lfs pull",
        ]
    elif repair:
        names = " ".join(shlex.quote(name) for name in repair)
        lines += [
            f"cd {d}",
            f"{GIT} lfs install --local >/dev/null",
            # Gone first, so git writes their pointers again instead of cleaning the broken content.
            f"rm -f -- {names}",
            f"GIT_LFS_SKIP_SMUDGE=1 {GIT} checkout --quiet {revision} -- {names}",
            space,
            f"{GIT} lfs pull --include={shlex.quote(','.join(repair))}",
        ]
    # The weights are checked out: git-lfs's own copies only double the disk use.
    lines.append(f"rm -rf {d}/.git/lfs/objects {d}/.git/lfs/tmp")
    lines.append(hand_over_script(d, user))
    lines.append(verify_command(settings, directory))
    return "\n".join(lines)


# -- hf -----------------------------------------------------------------------------


@operation()
def model_downloaded(settings: HostSettings, check: ModelCheck, fresh: bool):
    """
    Download the pinned revision into the hub cache (as the service user), or only the broken files again.

    + settings: the host's settings
    + check: what the ModelFiles fact found
    + fresh: no verified snapshot yet (download, or complete an interrupted one)
    """
    if check.healthy and not fresh:
        return
    model = settings.model
    directory = modelstore.model_directory(settings)
    where = f"{model.repo} at {model.revision}" + (f" from {model.endpoint}" if model.endpoint else "")
    record_diff(describe_changes(check, directory, where, None if fresh else list(check.refetch)))
    yield hf_fetch_script(settings, None if fresh else list(check.refetch))


def hf_fetch_script(settings: HostSettings, repair: list[str] | None) -> str:
    model, user = settings.model, settings.service.user
    environment = {"HOME": settings.cache.root, **layout.cache_environment(settings),
                   "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    if model.token_file is not None:
        environment["HF_TOKEN_PATH"] = HF_TOKEN_PATH  # a path: the token itself never reaches argv or an environment
    args = ["hf-fetch", "--repo", model.repo, "--revision", model.revision, "--cache-dir",
            modelstore.hub_cache(settings), "--manifest", modelstore.manifest_path(settings)]
    if model.endpoint:
        args += ["--endpoint", model.endpoint]
    for name in repair or ():
        args += ["--repair", name]
    env = " ".join(f"{key}={shlex.quote(value)}" for key, value in environment.items())
    storage = shlex.quote(modelstore.hub_storage(settings))
    lines = ["set -eu"]
    if repair is None or repair:
        lines.append(f"runuser -u {user} -- env {env} {modelcheck_command(hub_python(settings), *args)}")
    lines.append(f"if [ -d {storage} ]; then {hand_over_script(storage, user)}; fi")
    lines.append(verify_command(settings, modelstore.model_directory(settings)))
    return "\n".join(lines)


# -- shared ---------------------------------------------------------------------------


def hand_over_script(quoted_root: str, user: str) -> str:
    """Give the service user what it does not own yet under a root, readable; leave the rest untouched
    (a chown changes ctime, which would make the next check hash every file again)."""
    return (f"find {quoted_root} \\( ! -user {user} -o ! -group {user} \\) -exec chown -h {user}:{user} {{}} + && "
            f"find {quoted_root} \\( -type f ! -perm -u=r -exec chmod u+r {{}} + \\) -o "
            f"\\( -type d ! -perm -u=rx -exec chmod u+rx {{}} + \\)")


def verify_command(settings: HostSettings, directory: str) -> str:
    """Check the result before calling the host done: exits non-zero naming each file still broken."""
    manifest = modelstore.manifest_path(settings)
    return modelcheck_command("python3", "verify", "--strict", "--dir", directory, "--manifest", manifest,
                              "--hashes", hashes_path(manifest), "--user", settings.service.user) + " >/dev/null"


def describe_changes(check: ModelCheck, directory: str, source: str, fetching: list[str] | None) -> str:
    """The diff ``plan``/``drift`` show: each broken file and why, and what apply fetches."""
    lines = [f"--- {directory} (on host)", f"+++ {directory} ({source})"]
    if not check.exists:
        lines.append("  not fetched yet")
    elif not check.manifest:
        lines.append("  no manifest yet (not fetched to the end, or the manifest was removed)")
    lines += [f"- {problem}" for problem in check.problems()]
    if fetching is None:
        lines.append("+ fetch every file" if not check.exists else "+ fetch what is missing or broken, then verify all")
    elif fetching:
        lines.append(f"+ fetch again: {', '.join(fetching)}")
    unreadable = check.names("unreadable")
    if unreadable:
        lines.append(f"+ give the service user: {', '.join(unreadable)}")
    return "\n".join(lines) + "\n"


def _note(check: ModelCheck, settings: HostSettings) -> None:
    if not check.exists:
        record_note("model not fetched yet")
        return
    problems = check.problems()
    if not check.manifest:
        problems.insert(0, "no manifest")
    if problems:
        shown = problems[:3] + ([f"{len(problems) - 3} more"] if len(problems) > 3 else [])
        record_note("model: " + "; ".join(shown))
