"""Check a model directory against its manifest; write manifests; fetch from a hub.

This one file runs in three places: imported on the control machine (to hash
a ``push`` directory), and shipped to hosts as ``python3 -c <this source>
<command> ...`` by the model fact and the model layer. On hosts it needs only
the standard library (Python 3.8+), except ``hf-fetch``, which runs in the
host venv and imports huggingface_hub.

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

Commands (each prints one JSON object on stdout unless noted):
  verify      --dir D (--manifest M | --expected-stdin) --hashes H [--user U] [--strict] [--git]
  git-manifest --dir D --out M          (manifest of the checked-out HEAD: LFS oids and blob ids)
  space       --dir D --manifest M [--factor F]   (exit 4, one line on stderr, when the disk is too full)
  hf-fetch    --repo R --revision REV --cache-dir C --manifest M [--endpoint E] [--repair PATH ...]
"""

from __future__ import annotations

import argparse
import grp
import hashlib
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"
LFS_POINTER_MAX_SIZE = 1024  # git-lfs itself treats anything larger as content
CHUNK = 8 * 1024 * 1024
# The checkout may belong to the service user while root reads it: this run only, trust it.
GIT = ["git", "-c", "safe.directory=*"]

PIPELINE_INDEX = "model_index.json"  # what diffusers loads first

EXIT_BROKEN = 1  # verify --strict: something is still broken
EXIT_UNREACHABLE = 3  # hf-fetch: the hub refused or could not be reached
EXIT_NO_SPACE = 4


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
    return {"size": int(fields["size"]), "sha256": oid[len("sha256:"):]}


def git_manifest(directory: str) -> dict:
    """The manifest of HEAD in the git checkout ``directory``: LFS files by oid, the rest by blob id."""
    listing = subprocess.run(GIT + ["-C", directory, "ls-tree", "-r", "-l", "-z", "--full-tree", "HEAD"],
                             check=True, stdout=subprocess.PIPE).stdout.decode()
    head = subprocess.run(GIT + ["-C", directory, "rev-parse", "HEAD"], check=True,
                          stdout=subprocess.PIPE).stdout.decode().strip()
    blobs = []
    for record in filter(None, listing.split("\0")):
        meta, _, path = record.partition("\t")
        mode, kind, oid, size = meta.split()
        if kind == "blob" and mode != "120000":
            blobs.append((path, oid, int(size)))
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
    output = subprocess.run(GIT + ["-C", directory, "cat-file", "--batch"], check=True,
                            input=("\n".join(oids) + "\n").encode(), stdout=subprocess.PIPE).stdout
    contents, position = {}, 0
    while position < len(output):
        header_end = output.index(b"\n", position)
        oid, _, size = output[position:header_end].decode().split()
        start = header_end + 1
        contents[oid] = output[start:start + int(size)]
        position = start + int(size) + 1
    return contents


def write_json(path: str, data: dict) -> None:
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.write("\n")
    os.replace(temporary, path)


# -- verification -----------------------------------------------------------------


def is_lfs_pointer_file(path: str, size: int) -> bool:
    if size > LFS_POINTER_MAX_SIZE:
        return False
    with open(path, "rb") as handle:
        return parse_lfs_pointer(handle.read(LFS_POINTER_MAX_SIZE + 1)) is not None


def _reader(user: str | None) -> tuple[int, set[int]] | None:
    if not user:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None  # the user does not exist yet: nothing to say about access
    groups = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    return entry.pw_uid, groups


def _can_read(info: os.stat_result, reader: tuple[int, set[int]], need_exec: bool) -> bool:
    uid, gids = reader
    if uid == 0:
        return True
    if info.st_uid == uid:
        bits = stat.S_IRUSR | (stat.S_IXUSR if need_exec else 0)
    elif info.st_gid in gids:
        bits = stat.S_IRGRP | (stat.S_IXGRP if need_exec else 0)
    else:
        bits = stat.S_IROTH | (stat.S_IXOTH if need_exec else 0)
    return info.st_mode & bits == bits


def _unreadable(directory: str, name: str, reader: tuple[int, set[int]] | None) -> str | None:
    """Why ``reader`` cannot read ``directory/name`` (its folders inside ``directory``, the file itself)."""
    if reader is None:
        return None
    parts = name.split("/")
    for depth in range(len(parts)):
        path = os.path.join(directory, *parts[: depth + 1])
        info = os.stat(path)
        if not _can_read(info, reader, need_exec=depth < len(parts) - 1):
            owner = _name_of(pwd.getpwuid, info.st_uid) + ":" + _name_of(grp.getgrgid, info.st_gid)
            return f"{'/'.join(parts[: depth + 1])} is {owner} mode {stat.S_IMODE(info.st_mode):04o}"
    return None


def _name_of(lookup, number: int) -> str:
    try:
        return lookup(number)[0]
    except KeyError:
        return str(number)


def git_head(directory: str) -> str | None:
    """The commit checked out in ``directory`` (read from .git, no git run: the repo may belong to another user)."""
    git_dir = os.path.join(directory, ".git")
    try:
        with open(os.path.join(git_dir, "HEAD")) as handle:
            head = handle.read().strip()
    except OSError:
        return None
    if not head.startswith("ref: "):
        return head
    ref = head[len("ref: "):]
    try:
        with open(os.path.join(git_dir, ref)) as handle:
            return handle.read().strip()
    except OSError:
        pass
    try:
        with open(os.path.join(git_dir, "packed-refs")) as handle:
            for line in handle:
                oid, _, name = line.strip().partition(" ")
                if name == ref:
                    return oid
    except OSError:
        pass
    return None


def verify(directory: str, manifest: dict | None, cache_path: str | None, user: str | None = None,
           with_git: bool = False) -> dict:
    """What is wrong with ``directory`` against ``manifest``: ``{"broken": [{"path", "problem", "detail"}], ...}``.

    Problems: ``missing``, ``lfs-pointer`` (a Git LFS pointer instead of the
    content), ``size``, ``checksum``, ``unreadable`` (the service user cannot
    read it). Without a manifest only pointer files can be found.
    """
    result = {"directory": os.path.isdir(directory), "manifest": manifest is not None, "files": 0,
              "bytes": 0, "rehashed": 0, "broken": []}
    if with_git:
        result["git_head"] = git_head(directory) if result["directory"] else None
    if not result["directory"]:
        return result
    reader = _reader(user)
    cache = HashCache(cache_path)
    broken = result["broken"]
    if manifest is None:
        for name in walk_files(directory):
            full = os.path.join(directory, name)
            if is_lfs_pointer_file(full, os.stat(full).st_size):
                broken.append({"path": name, "problem": "lfs-pointer",
                               "detail": "Git LFS pointer file instead of the content (fetched without git-lfs)"})
        return result
    for name, expected in sorted(manifest["files"].items()):
        full = os.path.join(directory, *name.split("/"))
        try:
            info = os.stat(full)
        except OSError:
            broken.append({"path": name, "problem": "missing", "detail": "missing"})
            continue
        if not stat.S_ISREG(info.st_mode):
            broken.append({"path": name, "problem": "missing", "detail": "not a regular file"})
            continue
        result["files"] += 1
        result["bytes"] += info.st_size
        weight = "sha256" in expected
        if weight and is_lfs_pointer_file(full, info.st_size):
            broken.append({"path": name, "problem": "lfs-pointer",
                           "detail": f"Git LFS pointer file ({info.st_size} bytes) instead of the {expected['size']}-byte "
                                     "content (fetched without git-lfs)"})
            continue
        if info.st_size != expected["size"]:
            broken.append({"path": name, "problem": "size",
                           "detail": f"wrong size: {info.st_size} bytes, expected {expected['size']}"})
            continue
        algorithm = "sha256" if weight else "git_sha1"
        actual = cache.digests(name, full, info, (algorithm,))[algorithm]
        if actual != expected[algorithm]:
            label = "sha256" if weight else "git blob id"
            broken.append({"path": name, "problem": "checksum",
                           "detail": f"checksum mismatch: {label} {actual[:12]}..., expected {expected[algorithm][:12]}..."})
            continue
        why = _unreadable(directory, name, reader)
        if why:
            broken.append({"path": name, "problem": "unreadable",
                           "detail": f"not readable by the service user {user} ({why})"})
    result["rehashed"] = cache.rehashed
    cache.save()
    return result


# -- free space ---------------------------------------------------------------------


def bytes_needed(directory: str, manifest: dict) -> int:
    """Bytes of the manifest's files that are not in ``directory`` at their size yet."""
    needed = 0
    for name, expected in manifest["files"].items():
        full = os.path.join(directory, *name.split("/"))
        try:
            info = os.stat(full)
        except OSError:
            needed += expected["size"]
            continue
        if info.st_size != expected["size"] or ("sha256" in expected and is_lfs_pointer_file(full, info.st_size)):
            needed += expected["size"]
    return needed


def nearest_existing(path: str) -> str:
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_space(directory: str, needed: int, why: str = "") -> str | None:
    """A one-line complaint when the filesystem of ``directory`` has less than ``needed`` bytes free."""
    where = nearest_existing(directory)
    free = shutil.disk_usage(where).free
    if needed <= free:
        return None
    return (f"not enough disk space for the model at {directory}: {needed / 1e9:.2f} GB needed{why}, "
            f"{free / 1e9:.2f} GB free on {where}; free some space or point cache.root at a larger disk")


# -- hub download (runs in the host venv) -------------------------------------------


def hf_fetch(repo: str, revision: str, cache_dir: str, manifest_path: str, endpoint: str | None,
             repair: list[str]) -> int:
    """Write the manifest from the hub's listing, drop broken files, download what is missing.

    The token, if any, is read by huggingface_hub from ``HF_TOKEN_PATH`` (set
    by the caller); it is never an argument.
    """
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=endpoint)
    shown_endpoint = (endpoint or api.endpoint).rstrip("/")
    try:
        entries = [entry for entry in api.list_repo_tree(repo, revision=revision, recursive=True)
                   if isinstance(entry, RepoFile)]
    except Exception as error:  # noqa: BLE001 - every hub error becomes one line for the report
        return _hub_error(error, repo, revision, shown_endpoint)
    files = {}
    for entry in entries:
        if entry.lfs is not None:
            files[entry.path] = {"size": entry.lfs.size, "sha256": entry.lfs.sha256}
        else:
            files[entry.path] = {"size": entry.size, "git_sha1": entry.blob_id}
    if PIPELINE_INDEX in files:
        try:
            index_path = hf_hub_download(repo, PIPELINE_INDEX, revision=revision, cache_dir=cache_dir,
                                         endpoint=endpoint)
        except Exception as error:  # noqa: BLE001
            return _hub_error(error, repo, revision, shown_endpoint)
        with open(index_path, encoding="utf-8") as handle:
            files = pipeline_files(files, json.load(handle))
    manifest = {"source": "hf", "repo": repo, "revision": revision, "endpoint": shown_endpoint, "files": files}
    write_json(manifest_path, manifest)

    storage = os.path.join(cache_dir, "models--" + repo.replace("/", "--"))
    snapshot = os.path.join(storage, "snapshots", revision)
    for name in repair:
        _drop_cached_file(storage, os.path.join(snapshot, *name.split("/")))
    wanted: list[str] = []
    if repair:  # a blob shared by several files may have gone with one of them: fetch those too
        gone = {name for name in files if not os.path.isfile(os.path.join(snapshot, *name.split("/")))}
        wanted = sorted(set(repair) | gone)
    problem = check_space(storage, bytes_needed(snapshot, manifest))
    if problem:
        print(problem, file=sys.stderr)
        return EXIT_NO_SPACE
    try:
        snapshot_download(repo, revision=revision, cache_dir=cache_dir, endpoint=endpoint,
                          allow_patterns=wanted or sorted(files))
    except Exception as error:  # noqa: BLE001
        return _hub_error(error, repo, revision, shown_endpoint)
    return 0


PIPELINE_INDEX = "model_index.json"
_OTHER_WEIGHT_FORMATS = (".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".onnx")


def pipeline_files(files: dict[str, dict], index: dict) -> dict[str, dict]:
    """The files of a diffusers repo that its pipeline loads: ``model_index.json`` and the component folders.

    Model repos also carry what diffusers never reads: stabilityai/stable-diffusion-3.5-large has a
    16 GB single-file checkpoint and ComfyUI text encoders (another 16 GB) beside its diffusers folders.
    Within a folder that has safetensors weights, other weight formats are left out too (diffusers
    prefers safetensors).
    """
    components = {name for name, value in index.items()
                  if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and all(value)}
    if not components:
        return files  # not an index we understand: take the whole repo
    chosen = {name: info for name, info in files.items()
              if name == PIPELINE_INDEX or name.split("/", 1)[0] in components}
    with_safetensors = {name.rsplit("/", 1)[0] for name in chosen if name.endswith(".safetensors") and "/" in name}
    return {name: info for name, info in chosen.items()
            if not (name.endswith(_OTHER_WEIGHT_FORMATS) and name.rsplit("/", 1)[0] in with_safetensors)}


def _drop_cached_file(storage: str, path: str) -> None:
    """Remove a snapshot entry and the blob it points to, so the download fetches it again."""
    blobs = os.path.realpath(os.path.join(storage, "blobs"))
    if os.path.islink(path):
        target = os.path.realpath(path)
        if os.path.dirname(target) == blobs and os.path.isfile(target):
            os.unlink(target)
    if os.path.lexists(path):
        os.unlink(path)


def _hub_error(error: Exception, repo: str, revision: str, endpoint: str) -> int:
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    status = getattr(getattr(error, "response", None), "status_code", None)
    page = f"{endpoint}/{repo}"
    token_path = os.environ.get("HF_TOKEN_PATH")
    if isinstance(error, GatedRepoError) and status == 403:
        message = (f"403 Forbidden from {endpoint}: {repo} is a gated repository and the account that owns the token "
                   f"in model.token_file has not been granted access; open {page} logged in as that account, "
                   "accept the license, then run apply again")
    elif status == 401 or isinstance(error, GatedRepoError):
        if token_path and os.path.isfile(token_path):
            message = (f"401 Unauthorized from {endpoint} for {repo}: the token in model.token_file was refused "
                       "(expired, revoked or without read access); put a valid read token in that file")
        else:
            message = (f"401 Unauthorized from {endpoint} for {repo}: no token was sent; set model.token_file to a "
                       f"file holding a read token (gated repos also need their license accepted at {page})")
    elif isinstance(error, RevisionNotFoundError):
        message = f"revision {revision} not found in {repo} on {endpoint}; check model.revision"
    elif isinstance(error, RepositoryNotFoundError):
        message = (f"{repo} not found on {endpoint} (or private and the token cannot see it); "
                   "check model.repo and model.token_file")
    elif isinstance(error, HfHubHTTPError):
        message = f"{endpoint} answered {status} for {repo}: {str(error).splitlines()[0]}"
    else:
        message = f"cannot download {repo} from {endpoint}: {error.__class__.__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    print(message, file=sys.stderr)
    return EXIT_UNREACHABLE


# -- command line ----------------------------------------------------------------------


def _load_manifest(path: str | None) -> dict | None:
    if not path or not os.path.isfile(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelcheck")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("verify")
    check.add_argument("--dir", required=True)
    check.add_argument("--manifest")
    check.add_argument("--expected-stdin", action="store_true", help="read the manifest from stdin")
    check.add_argument("--hashes")
    check.add_argument("--user")
    check.add_argument("--strict", action="store_true", help="exit 1 naming each broken file")
    check.add_argument("--git", action="store_true", help="also report the commit checked out")
    manifest_of_git = commands.add_parser("git-manifest")
    manifest_of_git.add_argument("--dir", required=True)
    manifest_of_git.add_argument("--out", required=True)
    space = commands.add_parser("space")
    space.add_argument("--dir", required=True)
    space.add_argument("--manifest", required=True)
    space.add_argument("--factor", type=float, default=1.0)
    space.add_argument("--why", default="")
    fetch = commands.add_parser("hf-fetch")
    fetch.add_argument("--repo", required=True)
    fetch.add_argument("--revision", required=True)
    fetch.add_argument("--cache-dir", required=True)
    fetch.add_argument("--manifest", required=True)
    fetch.add_argument("--endpoint")
    fetch.add_argument("--repair", action="append", default=[])
    args = parser.parse_args(argv)

    if args.command == "verify":
        manifest = json.load(sys.stdin) if args.expected_stdin else _load_manifest(args.manifest)
        result = verify(args.dir, manifest, args.hashes, args.user, args.git)
        if args.strict:
            problems = [f"{item['path']}: {item['detail']}" for item in result["broken"]]
            if manifest is None:
                problems.insert(0, f"no manifest at {args.manifest}")
            elif PIPELINE_INDEX not in manifest["files"]:
                problems.insert(0, f"the source has no {PIPELINE_INDEX}: not a diffusers pipeline")
            if problems:
                print("model files still broken after the fetch: " + "; ".join(problems), file=sys.stderr)
                return EXIT_BROKEN
        print(json.dumps(result, sort_keys=True))
        return 0
    if args.command == "git-manifest":
        write_json(args.out, git_manifest(args.dir))
        return 0
    if args.command == "space":
        manifest = _load_manifest(args.manifest)
        needed = int(bytes_needed(args.dir, manifest) * args.factor) if manifest else 0
        problem = check_space(args.dir, needed, args.why)
        if problem:
            print(problem, file=sys.stderr)
            return EXIT_NO_SPACE
        return 0
    return hf_fetch(args.repo, args.revision, args.cache_dir, args.manifest, args.endpoint, args.repair)


if __name__ == "__main__":
    sys.exit(main())
