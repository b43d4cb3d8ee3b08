"""Where the model lives on a host, and what its files must hash to.

Every source ends in a directory the service loads with diffusers, plus a
manifest ``{relative path: {"size": n, "sha256": hex}}`` kept outside it:

- ``push``: the manifest is computed here, on the control machine, before
  anything is sent; the directory is named by the manifest's hash.
- ``git``: a clone at the pinned commit; the manifest takes the LFS oids
  (the SHA-256 of each weight) and hashes the small files git checked out.
- ``hf``: the hub cache's snapshot at the pinned revision; the manifest takes
  the hub's LFS sha256 of each file.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from pathlib import Path

from sd35_provision.spec.model import HostSettings
from sd35_provision.wheelhouse import sha256_of

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"


def local_manifest(directory: Path) -> dict[str, dict]:
    """The manifest of a directory on this machine (hidden files and folders left out)."""
    manifest = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            manifest[relative.as_posix()] = {"size": path.stat().st_size, "sha256": sha256_of(path)}
    return manifest


@lru_cache(maxsize=16)
def _push_manifest(directory: str, _stamp: float) -> tuple[str, str]:
    manifest = local_manifest(Path(directory))
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    return text, hashlib.sha256(text.encode()).hexdigest()


def push_manifest(settings: HostSettings) -> tuple[dict, str]:
    """(manifest, its text) of ``model.path``; recomputed when the directory changes."""
    directory = settings.model.path
    text, _ = _push_manifest(str(directory), max((p.stat().st_mtime for p in directory.rglob("*")), default=0.0))
    return json.loads(text), text


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[-60:] or "model"


def models_dir(settings: HostSettings) -> str:
    return f"{settings.cache.root}/models"


def manifests_dir(settings: HostSettings) -> str:
    return f"{settings.cache.root}/manifests"


def model_directory(settings: HostSettings) -> str:
    """The directory the service loads (``current/model`` points here)."""
    model = settings.model
    if model.source == "hf":
        org, name = model.repo.split("/", 1)
        return f"{settings.cache.hf_home}/hub/models--{org}--{name}/snapshots/{model.revision}"
    if model.source == "git":
        name = _slug(model.url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git"))
        return f"{models_dir(settings)}/git-{name}-{model.revision[:12]}"
    _, text = push_manifest(settings)
    return f"{models_dir(settings)}/push-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def manifest_path(settings: HostSettings) -> str:
    return f"{manifests_dir(settings)}/{model_directory(settings).rsplit('/', 1)[-1]}.json"
