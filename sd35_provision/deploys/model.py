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
from pyinfra.api import deploy, operation
from pyinfra.api.command import FileUploadCommand
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files

from sd35_provision import layout, modelstore
from sd35_provision.facts.disk import FreeSpace
from sd35_provision.facts.model import ModelCheck, ModelFiles, hashes_path, modelcheck_command
from sd35_provision.hostplan import MODEL_STEP as STEP
from sd35_provision.hostplan import HostPlan, ModelNotReady
from sd35_provision.hostscripts import render_script
from sd35_provision.operations import HostRecorder, managed_file

__all__ = ["STEP", "ModelNotReady", "model_layer"]

HF_TOKEN_PATH = layout.HF_TOKEN_FILE


def model_check(plan: HostPlan) -> ModelCheck:
    """The ModelFiles fact for this host's model, as the layer reads it (read once per run)."""
    return host.get_fact(ModelFiles, **model_check_arguments(plan))


def model_check_arguments(plan: HostPlan) -> dict:
    """The ModelFiles fact's arguments for this host's model."""
    arguments = {
        "directory": plan.model_dir,
        "manifest_path": plan.model_manifest_path,
        "user": plan.settings.service.user,
    }
    if plan.model_manifest_text is not None:  # push: the manifest is computed here, not read there
        return {**arguments, "manifest": plan.model_manifest_text}
    return {**arguments, "git": plan.settings.model.source == "git"}


@deploy(STEP)
def model_layer(plan: HostPlan, recorder: HostRecorder) -> None:
    settings = plan.settings
    model = settings.model
    user = settings.service.user
    for directory in (layout.models_dir(settings.cache.root), layout.manifests_dir(settings.cache.root)):
        files.directory(name=f"Directory {directory}", path=directory, user=user, group=user, mode="750")
    if model.source == "hf" and model.token_file is not None:
        try:
            token = modelstore.read_token(settings)
        except modelstore.ModelSourceError as error:
            raise ModelNotReady(host.name, STEP, str(error)) from None
        managed_file(
            name="Hugging Face token",
            path=HF_TOKEN_PATH,
            content=token + "\n",
            user=user,
            group=user,
            mode="600",
            secret=True,
            recorder=recorder,
        )

    check = model_check(plan)
    if model.source == "push":
        fetched = _push(plan, check, recorder)
    elif model.source == "git":
        assert model.url is not None and model.revision is not None  # the loader requires both for source git
        fresh = not (check.manifest and check.exists) or not (check.git_head or "").startswith(model.revision)
        fetched = model_cloned(
            name=f"Fetch model {model.url} at {model.revision[:12]}",
            plan=plan,
            check=check,
            fresh=fresh,
            recorder=recorder,
        )
    else:
        assert model.revision is not None  # the loader requires it for source hf
        fetched = model_downloaded(
            name=f"Download model {model.repo} at {model.revision[:12]}",
            plan=plan,
            check=check,
            fresh=not (check.manifest and check.exists),
            recorder=recorder,
        )
    _note(check, recorder, fetched)
    recorder.feeds_service("model", fetched)


# -- push ---------------------------------------------------------------------------


def _push(plan: HostPlan, check: ModelCheck, recorder: HostRecorder):
    manifest, text = plan.model_manifest, plan.model_manifest_text
    assert manifest is not None and text is not None
    directory = plan.model_dir
    names = sorted(manifest["files"]) if not check.exists else list(check.refetch)
    needed = sum(manifest["files"][name]["size"] for name in names)
    if needed:
        space = host.get_fact(FreeSpace, path=directory)
        if needed > space.free_bytes:
            raise ModelNotReady(
                host.name,
                STEP,
                (
                    f"not enough disk space for the model at {directory}: {needed / 1e9:.2f} GB to push, "
                    f"{space.free_bytes / 1e9:.2f} GB free on {space.mount or space.nearest}; free some space or "
                    "point cache.root at a larger disk"
                ),
            )
    user = plan.settings.service.user
    total = sum(entry["size"] for entry in manifest["files"].values())
    managed_file(
        name="Model manifest",
        path=plan.model_manifest_path,
        content=text,
        user=user,
        group=user,
        mode="640",
        summary=f"(manifest of {len(manifest['files'])} files, {total / 1e6:.1f} MB, sha256 of each)",
        recorder=recorder,
    )
    return model_pushed(name=f"Push model files to {directory}", plan=plan, check=check, names=names, recorder=recorder)


@operation()
def model_pushed(plan: HostPlan, check: ModelCheck, names: list[str], recorder: HostRecorder):
    """
    Upload the named files of ``model.path`` into the model directory (each staged, then renamed).

    + plan: the host's plan
    + check: what the ModelFiles fact found
    + names: files (relative paths) to send: all of them, or only the broken ones
    + recorder: where the diff goes
    """
    if not names and check.healthy:
        return
    settings, directory = plan.settings, plan.model_dir
    assert settings.model.path is not None  # the loader requires it for source push
    recorder.diff(describe_changes(check, directory, f"push of {settings.model.path}", names))
    user = settings.service.user
    parents = sorted({f"{directory}/{name}".rsplit("/", 1)[0] for name in names} | {directory})
    yield f"install -d -o {user} -g {user} -m 750 {' '.join(shlex.quote(p) for p in parents)}"
    for name in names:
        remote = f"{directory}/{name}"
        yield FileUploadCommand(str(settings.model.path / name), f"{remote}.partial")
        yield f"mv -f {shlex.quote(remote + '.partial')} {shlex.quote(remote)}"
    yield hand_over_script(directory, user)
    yield verify_command(plan)


# -- git ----------------------------------------------------------------------------


@operation()
def model_cloned(plan: HostPlan, check: ModelCheck, fresh: bool, recorder: HostRecorder):
    """
    Clone ``model.url`` at the pinned commit with its LFS content, or fetch again only the broken files.

    + plan: the host's plan
    + check: what the ModelFiles fact found
    + fresh: no verified checkout at the pinned commit yet (clone, or complete an interrupted one)
    + recorder: where the diff goes
    """
    if check.healthy and not fresh:
        return
    model = plan.settings.model
    repair = None if fresh else list(check.refetch)
    recorder.diff(describe_changes(check, plan.model_dir, f"{model.url} at {model.revision}", repair))
    yield git_fetch_script(plan, repair)


def git_fetch_script(plan: HostPlan, repair: list[str] | None) -> str:
    """The commands that bring the checkout to the pinned commit: everything (``repair`` None) or those files."""
    model = plan.settings.model
    assert model.url is not None and model.revision is not None  # the loader requires both for source git
    directory, manifest = plan.model_dir, plan.model_manifest_path
    space = modelcheck_command(
        "python3",
        "space",
        "--dir",
        directory,
        "--manifest",
        manifest,
        "--factor",
        "2",
        "--why",
        " (git-lfs holds a second copy until the checkout is done)",
    )
    lines = ["set -eu", "umask 022"]
    if repair is None:
        lines += [
            render_script(
                "model-git-checkout.sh",
                dir=directory,
                partial=f"{directory}.partial",
                url=model.url,
                revision=model.revision,
            ),
            modelcheck_command("python3", "git-manifest", "--dir", directory, "--out", manifest),
            space,
            render_script("model-git-pull.sh", include=[]),
        ]
    elif repair:
        lines += [
            render_script("model-git-restore.sh", dir=directory, names=repair, revision=model.revision),
            space,
            render_script("model-git-pull.sh", include=[f"--include={','.join(repair)}"]),
        ]
    lines.append(render_script("model-git-clean.sh", dir=directory))
    lines.append(hand_over_script(directory, plan.settings.service.user))
    lines.append(verify_command(plan))
    return "\n".join(lines)


# -- hf -----------------------------------------------------------------------------


@operation()
def model_downloaded(plan: HostPlan, check: ModelCheck, fresh: bool, recorder: HostRecorder):
    """
    Download the pinned revision into the hub cache (as the service user), or only the broken files again.

    + plan: the host's plan
    + check: what the ModelFiles fact found
    + fresh: no verified snapshot yet (download, or complete an interrupted one)
    + recorder: where the diff goes
    """
    if check.healthy and not fresh:
        return
    model = plan.settings.model
    where = f"{model.repo} at {model.revision}" + (f" from {model.endpoint}" if model.endpoint else "")
    repair = None if fresh else list(check.refetch)
    recorder.diff(describe_changes(check, plan.model_dir, where, repair))
    yield hf_fetch_script(plan, repair)


def hf_fetch_script(plan: HostPlan, repair: list[str] | None) -> str:
    settings = plan.settings
    model, user = settings.model, settings.service.user
    assert model.revision is not None  # the loader requires it for source hf
    environment = {
        "HOME": settings.cache.root,
        **layout.cache_environment(settings.cache),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    if model.token_file is not None:
        environment["HF_TOKEN_PATH"] = HF_TOKEN_PATH  # a path: the token itself never reaches argv or an environment
    args = [
        "hf-fetch",
        "--repo",
        model.repo,
        "--revision",
        model.revision,
        "--cache-dir",
        layout.hub_cache(settings.cache.hf_home),
        "--manifest",
        plan.model_manifest_path,
    ]
    if model.endpoint:
        args += ["--endpoint", model.endpoint]
    for name in repair or ():
        args += ["--repair", name]
    env = " ".join(f"{key}={shlex.quote(value)}" for key, value in environment.items())
    storage = layout.hub_storage(settings.cache.hf_home, model.repo)
    lines = ["set -eu"]
    if repair is None or repair:
        lines.append(f"runuser -u {user} -- env {env} {modelcheck_command(plan.venv_python, *args)}")
    lines.append(f"if [ -d {shlex.quote(storage)} ]; then\n{hand_over_script(storage, user)}\nfi")
    lines.append(verify_command(plan))
    return "\n".join(lines)


# -- shared ---------------------------------------------------------------------------


def hand_over_script(root: str, user: str) -> str:
    """Give the service user what it does not own yet under ``root``, readable (see hostside/hand-over.sh)."""
    return render_script("hand-over.sh", root=root, user=user, owner=f"{user}:{user}")


def verify_command(plan: HostPlan) -> str:
    """Check the result before calling the host done: exits non-zero naming each file still broken."""
    manifest = plan.model_manifest_path
    return (
        modelcheck_command(
            "python3",
            "verify",
            "--strict",
            "--dir",
            plan.model_dir,
            "--manifest",
            manifest,
            "--hashes",
            hashes_path(manifest),
            "--user",
            plan.settings.service.user,
        )
        + " >/dev/null"
    )


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


def _note(check: ModelCheck, recorder: HostRecorder, fetched: OperationMeta) -> None:
    """What is wrong with the model before this run; once ``fetched`` has run: that it was fetched and verified."""
    done = "model fetched and verified"
    if not check.exists:
        recorder.note("model not fetched yet", until=fetched, done=done)
        return
    problems = check.problems()
    if not check.manifest:
        problems.insert(0, "no manifest")
    if problems:
        shown = problems[:3] + ([f"{len(problems) - 3} more"] if len(problems) > 3 else [])
        recorder.note("model: " + "; ".join(shown), until=fetched, done=done)
