"""The model check that runs on hosts: verify a model directory, check free space, fetch from a hub.

Shipped to hosts with the manifest library as ``python3 -c <program>
<command> ...`` (sd35_provision/facts/model.py ``modelcheck_command``; the
program is ``hostside.program("modelcheck.py", "manifests.py")``). On hosts it
needs only the standard library (Python 3.8+), except ``hf-fetch``, which runs
in the host venv and imports huggingface_hub. Manifests and the hash cache:
sd35_provision/hostside/manifests.py.

Commands (each prints one JSON object on stdout unless noted):
  verify      --dir D (--manifest M | --expected-stdin) --hashes H [--user U] [--strict] [--git]
  git-manifest --dir D --out M          (manifest of the checked-out HEAD: LFS oids and blob ids)
  space       --dir D --manifest M [--factor F]   (exit 4, one line on stderr, when the disk is too full)
  hf-fetch    --repo R --revision REV --cache-dir C --manifest M [--endpoint E] [--repair PATH ...]
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import pwd
import shutil
import stat
import sys
from typing import Any

from sd35_provision.hostside.manifests import (
    PIPELINE_INDEX,
    HashCache,
    git_manifest,
    is_lfs_pointer_file,
    pipeline_files,
    walk_files,
    write_json,
)

EXIT_BROKEN = 1  # verify --strict: something is still broken
EXIT_UNREACHABLE = 3  # hf-fetch: the hub refused or could not be reached
EXIT_NO_SPACE = 4


# -- verification -----------------------------------------------------------------


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
    ref = head[len("ref: ") :]
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


def verify(
    directory: str, manifest: dict | None, cache_path: str | None, user: str | None = None, with_git: bool = False
) -> dict:
    """What is wrong with ``directory`` against ``manifest``: ``{"broken": [{"path", "problem", "detail"}], ...}``.

    Problems: ``missing``, ``lfs-pointer`` (a Git LFS pointer instead of the
    content), ``size``, ``checksum``, ``unreadable`` (the service user cannot
    read it). Without a manifest only pointer files can be found.
    """
    broken: list[dict[str, str]] = []
    result: dict[str, Any] = {
        "directory": os.path.isdir(directory),
        "manifest": manifest is not None,
        "files": 0,
        "bytes": 0,
        "rehashed": 0,
        "broken": broken,
    }
    if with_git:
        result["git_head"] = git_head(directory) if result["directory"] else None
    if not result["directory"]:
        return result
    reader = _reader(user)
    cache = HashCache(cache_path)
    if manifest is None:
        for name in walk_files(directory):
            full = os.path.join(directory, name)
            if is_lfs_pointer_file(full, os.stat(full).st_size):
                broken.append(
                    {
                        "path": name,
                        "problem": "lfs-pointer",
                        "detail": "Git LFS pointer file instead of the content (fetched without git-lfs)",
                    }
                )
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
            broken.append(
                {
                    "path": name,
                    "problem": "lfs-pointer",
                    "detail": f"Git LFS pointer file ({info.st_size} bytes) instead of the "
                    f"{expected['size']}-byte content (fetched without git-lfs)",
                }
            )
            continue
        if info.st_size != expected["size"]:
            broken.append(
                {
                    "path": name,
                    "problem": "size",
                    "detail": f"wrong size: {info.st_size} bytes, expected {expected['size']}",
                }
            )
            continue
        algorithm = "sha256" if weight else "git_sha1"
        actual = cache.digests(name, full, info, (algorithm,))[algorithm]
        if actual != expected[algorithm]:
            label = "sha256" if weight else "git blob id"
            broken.append(
                {
                    "path": name,
                    "problem": "checksum",
                    "detail": f"checksum mismatch: {label} {actual[:12]}..., expected {expected[algorithm][:12]}...",
                }
            )
            continue
        why = _unreadable(directory, name, reader)
        if why:
            broken.append(
                {"path": name, "problem": "unreadable", "detail": f"not readable by the service user {user} ({why})"}
            )
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
    return (
        f"not enough disk space for the model at {directory}: {needed / 1e9:.2f} GB needed{why}, "
        f"{free / 1e9:.2f} GB free on {where}; free some space or point cache.root at a larger disk"
    )


# -- hub download (runs in the host venv) -------------------------------------------


def hf_fetch(
    repo: str, revision: str, cache_dir: str, manifest_path: str, endpoint: str | None, repair: list[str]
) -> int:
    """Write the manifest from the hub's listing, drop broken files, download what is missing.

    The token, if any, is read by huggingface_hub from ``HF_TOKEN_PATH`` (set
    by the caller); it is never an argument.
    """
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=endpoint)
    shown_endpoint = (endpoint or api.endpoint).rstrip("/")
    try:
        entries = [
            entry
            for entry in api.list_repo_tree(repo, revision=revision, recursive=True)
            if isinstance(entry, RepoFile)
        ]
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
            index_path = hf_hub_download(
                repo, PIPELINE_INDEX, revision=revision, cache_dir=cache_dir, endpoint=endpoint
            )
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
        snapshot_download(
            repo, revision=revision, cache_dir=cache_dir, endpoint=endpoint, allow_patterns=wanted or sorted(files)
        )
    except Exception as error:  # noqa: BLE001
        return _hub_error(error, repo, revision, shown_endpoint)
    return 0


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
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    status = getattr(getattr(error, "response", None), "status_code", None)
    page = f"{endpoint}/{repo}"
    token_path = os.environ.get("HF_TOKEN_PATH")
    if isinstance(error, GatedRepoError) and status == 403:
        message = (
            f"403 Forbidden from {endpoint}: {repo} is a gated repository and the account that owns the token "
            f"in model.token_file has not been granted access; open {page} logged in as that account, "
            "accept the license, then run apply again"
        )
    elif status == 401 or isinstance(error, GatedRepoError):
        if token_path and os.path.isfile(token_path):
            message = (
                f"401 Unauthorized from {endpoint} for {repo}: the token in model.token_file was refused "
                "(expired, revoked or without read access); put a valid read token in that file"
            )
        else:
            message = (
                f"401 Unauthorized from {endpoint} for {repo}: no token was sent; set model.token_file to a "
                f"file holding a read token (gated repos also need their license accepted at {page})"
            )
    elif isinstance(error, RevisionNotFoundError):
        message = f"revision {revision} not found in {repo} on {endpoint}; check model.revision"
    elif isinstance(error, RepositoryNotFoundError):
        message = (
            f"{repo} not found on {endpoint} (or private and the token cannot see it); "
            "check model.repo and model.token_file"
        )
    elif isinstance(error, HfHubHTTPError):
        message = f"{endpoint} answered {status} for {repo}: {str(error).splitlines()[0]}"
    else:
        first_line = str(error).splitlines()[0] if str(error) else ""
        message = f"cannot download {repo} from {endpoint}: {error.__class__.__name__}: {first_line}"
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
