"""What the model's files must hash to, and the hub token (control side).

Every source ends in a directory the service loads with diffusers, and a
manifest kept outside it (paths: ``sd35_provision/layout.py``; format:
``sd35_provision/hostside/manifests.py``):

- ``hf``: the hub cache's snapshot ``models--org--name/snapshots/<revision>``
  under ``HF_HUB_CACHE``; the manifest is the hub's own listing at that
  revision (LFS sha256 of each weight, git blob id of the small files),
  written on the host when it downloads.
- ``git``: a checkout at the pinned commit, ``<cache root>/models/git-<name>-<commit>``;
  the manifest takes the LFS oids (the SHA-256 of each weight) and the git
  blob ids of the rest, written on the host from the checked-out commit.
- ``push``: ``<cache root>/models/push-<hash>``, named by the manifest's hash;
  the manifest is computed here, before anything is sent. Hashes of the
  local files are cached in ``~/.cache/sd35-provision`` by (size, mtime,
  inode), so a 30 GB push directory is hashed once, not on every ``plan``.
"""

from __future__ import annotations

import json

from sd35_provision import localcache
from sd35_provision.errors import Sd35Error
from sd35_provision.hostside import manifests
from sd35_provision.hostspec.settings import HostSettings

PIPELINE_INDEX = manifests.PIPELINE_INDEX


class ModelSourceError(Sd35Error):
    """The model source on the control machine cannot be used (push directory, token file)."""


def read_token(settings: HostSettings) -> str:
    """The hub token from ``model.token_file`` (control machine), checked for shape, never shown."""
    path = settings.model.token_file
    assert path is not None
    try:
        token = path.read_text().strip()
    except OSError as error:
        raise ModelSourceError(f"model.token_file {path}: cannot read it ({error.strerror})") from None
    if not token:
        raise ModelSourceError(f"model.token_file {path} is empty")
    if any(ch.isspace() for ch in token):
        raise ModelSourceError(f"model.token_file {path} holds more than one word; put only the token in it")
    return token


# -- push: the manifest of a local directory --------------------------------------


def push_manifest(settings: HostSettings) -> tuple[dict, str]:
    """(manifest, its JSON text) of ``model.path``, hidden files left out."""
    directory = settings.model.path
    assert directory is not None
    if not (directory / PIPELINE_INDEX).is_file():
        raise ModelSourceError(f"model.path {directory} has no {PIPELINE_INDEX}: not a diffusers pipeline directory")
    manifest = manifests.directory_manifest(str(directory), str(localcache.hash_cache_path(directory, "push-hashes")))
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    return manifest, text
