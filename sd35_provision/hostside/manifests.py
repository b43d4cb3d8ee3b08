"""Model manifests: what a model directory should hold, and the hashing that checks it.

A manifest is JSON: ``{"source": ..., "files": {relative path: {"size": N,
"sha256": hex} or {"size": N, "git_sha1": hex}}}``. Weights (Git LFS
objects, pushed files) are checked by SHA-256; small files that a hub or a
git repo stores as plain git blobs are checked by their git blob id, which is
what the hub and git publish for them.

Hashing multi-GB weights on every ``drift`` would be slow, so hashes are
cached in a state file keyed by each file's (size, mtime_ns, ctime_ns,
inode, device), like git's index: a file is read again only when its stat
changed. ctime cannot be set back by hand, so even a corruption that keeps the
mtime is noticed.

Used in two places: on the control machine (the manifest of a ``push``
directory, sd35_provision/modelstore.py) and on hosts, shipped with the host
command ``modelcheck.py`` (see ``hostside.program``). So: standard library
only, Python 3.8+.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"
LFS_POINTER_MAX_SIZE = 1024  # git-lfs itself treats anything larger as content
CHUNK = 8 * 1024 * 1024
# The checkout may belong to the service user while root reads it: this run only, trust it.
GIT = ["git", "-c", "safe.directory=*"]

PIPELINE_INDEX = "model_index.json"  # what diffusers loads first


# -- hashing with a stat-keyed cache ----------------------------------------


def hash_file(path: str, algorithms: tuple[str, ...] = ("sha256",)) -> dict[str, str]:
    """Hex digests of one file in one read: ``sha256`` and/or ``git_sha1`` (git's blob id)."""
    size = os.stat(path).st_size
    hashers = {}
    if "sha256" in algorithms:
        hashers["sha256"] = hashlib.sha256()
    if "git_sha1" in algorithms:
        hashers["git_sha1"] = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(CHUNK)
            if not chunk:
                break
            for hasher in hashers.values():
                hasher.update(chunk)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def stat_key(info: os.stat_result) -> list[int]:
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev]


class HashCache:
    """``{relative path: {"stat": [...], "sha256": ..., "git_sha1": ...}}`` in a JSON file."""

    def __init__(self, path: str | None):
        self.path = path
        self.entries: dict[str, dict] = {}
        self.changed = False
        self.rehashed = 0
        if path and os.path.isfile(path):
            try:
                with open(path) as handle:
                    data = json.load(handle)
                if data.get("version") == 1:
                    self.entries = data.get("files", {})
            except (OSError, ValueError):
                self.entries = {}  # a damaged cache only costs a rehash

    def digests(self, name: str, full_path: str, info: os.stat_result, algorithms: tuple[str, ...]) -> dict[str, str]:
        key = stat_key(info)
        entry = self.entries.get(name)
        if entry is None or entry.get("stat") != key:
            entry = {"stat": key}
        missing = tuple(a for a in algorithms if a not in entry)
        if missing:
            entry.update(hash_file(full_path, missing))
            self.entries[name] = entry
            self.changed = True
            self.rehashed += 1
        return {a: entry[a] for a in algorithms}

    def save(self) -> None:
        if not self.path or not self.changed:
            return
        parent = os.path.dirname(self.path)
        if not os.path.isdir(parent):
            return  # nothing fetched yet: nothing to remember
        temporary = f"{self.path}.{os.getpid()}.tmp"
        with open(temporary, "w") as handle:
            json.dump({"version": 1, "files": self.entries}, handle, sort_keys=True)
        os.replace(temporary, self.path)


# -- manifests ----------------------------------------------------------------


def walk_files(root: str) -> list[str]:
    """Relative paths of the regular files under ``root`` (symlinks to files followed), sorted.

    Hidden files and folders (``.git``, huggingface_hub's ``.cache``, editor litter) are left out.
    """
    found = []
    for current, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            full = os.path.join(current, name)
            if not name.startswith(".") and os.path.isfile(full):
                found.append(os.path.relpath(full, root).replace(os.sep, "/"))
    return sorted(found)


def directory_manifest(root: str, cache_path: str | None = None, source: str = "push") -> dict:
    """SHA-256 and size of every file under ``root`` (the manifest of a ``push`` directory)."""
    cache = HashCache(cache_path)
    files = {}
    for name in walk_files(root):
        full = os.path.join(root, name)
        info = os.stat(full)
        files[name] = {"size": info.st_size, "sha256": cache.digests(name, full, info, ("sha256",))["sha256"]}
    if cache_path:
        os.makedirs(os.path.dirname(cache_path), exist_ok=True)
        cache.save()
    return {"source": source, "files": files}


def parse_lfs_pointer(data: bytes) -> dict | None:
    """``{"size": N, "sha256": hex}`` when ``data`` is a Git LFS pointer, else None."""
    if not data.startswith(LFS_POINTER_PREFIX) or len(data) > LFS_POINTER_MAX_SIZE:
        return None
    fields = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, _, value = line.partition(" ")
        fields[key] = value.strip()
    oid = fields.get("oid", "")
    if not oid.startswith("sha256:") or not fields.get("size", "").isdigit():
        return None
    return {"size": int(fields["size"]), "sha256": oid[len("sha256:") :]}


def git_manifest(directory: str) -> dict:
    """The manifest of HEAD in the git checkout ``directory``: LFS files by oid, the rest by blob id."""
    listing = subprocess.run(
        GIT + ["-C", directory, "ls-tree", "-r", "-l", "-z", "--full-tree", "HEAD"], check=True, stdout=subprocess.PIPE
    ).stdout.decode()
    head = (
        subprocess.run(GIT + ["-C", directory, "rev-parse", "HEAD"], check=True, stdout=subprocess.PIPE)
        .stdout.decode()
        .strip()
    )
    blobs: list[tuple[str, str, int]] = []
    for record in filter(None, listing.split("\0")):
        meta, _, path = record.partition("\t")
        mode, kind, oid, size_text = meta.split()
        if kind == "blob" and mode != "120000":
            blobs.append((path, oid, int(size_text)))
    small = [oid for _, oid, size in blobs if size <= LFS_POINTER_MAX_SIZE]
    contents = _cat_blobs(directory, small)
    files = {}
    for path, oid, size in blobs:
        pointer = parse_lfs_pointer(contents.get(oid, b""))
        files[path] = dict(pointer, lfs=True) if pointer else {"size": size, "git_sha1": oid}
    return {"source": "git", "revision": head, "files": files}


def _cat_blobs(directory: str, oids: list[str]) -> dict[str, bytes]:
    if not oids:
        return {}
    output = subprocess.run(
        GIT + ["-C", directory, "cat-file", "--batch"],
        check=True,
        input=("\n".join(oids) + "\n").encode(),
        stdout=subprocess.PIPE,
    ).stdout
    contents, position = {}, 0
    while position < len(output):
        header_end = output.index(b"\n", position)
        oid, _, size = output[position:header_end].decode().split()
        start = header_end + 1
        contents[oid] = output[start : start + int(size)]
        position = start + int(size) + 1
    return contents


def write_json(path: str, data: dict) -> None:
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.write("\n")
    os.replace(temporary, path)


def is_lfs_pointer_file(path: str, size: int) -> bool:
    if size > LFS_POINTER_MAX_SIZE:
        return False
    with open(path, "rb") as handle:
        return parse_lfs_pointer(handle.read(LFS_POINTER_MAX_SIZE + 1)) is not None


_OTHER_WEIGHT_FORMATS = (".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".onnx")


def pipeline_files(files: dict[str, dict], index: dict) -> dict[str, dict]:
    """The files of a diffusers repo that its pipeline loads: ``model_index.json`` and the component folders.

    Model repos also carry what diffusers never reads: stabilityai/stable-diffusion-3.5-large has a
    16 GB single-file checkpoint and ComfyUI text encoders (another 16 GB) beside its diffusers folders.
    Within a folder that has safetensors weights, other weight formats are left out too (diffusers
    prefers safetensors).
    """
    components = {
        name
        for name, value in index.items()
        if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and all(value)
    }
    if not components:
        return files  # not an index we understand: take the whole repo
    chosen = {
        name: info for name, info in files.items() if name == PIPELINE_INDEX or name.split("/", 1)[0] in components
    }
    with_safetensors = {name.rsplit("/", 1)[0] for name in chosen if name.endswith(".safetensors") and "/" in name}
    return {
        name: info
        for name, info in chosen.items()
        if not (name.endswith(_OTHER_WEIGHT_FORMATS) and name.rsplit("/", 1)[0] in with_safetensors)
    }
