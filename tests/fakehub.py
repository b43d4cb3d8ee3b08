"""A small stand-in for the Hugging Face hub, for tests: just the endpoints huggingface_hub 2.x
uses for ``list_repo_tree`` and ``snapshot_download`` (read from its source: hf_api.py
``_iter_repo_tree_pages``, file_download.py ``get_hf_file_metadata`` / ``http_get``,
utils/_http.py ``hf_raise_for_status``).

- ``GET /api/models/{org}/{name}/tree/{revision}`` -> the file listing (size, git blob id, LFS oid)
- ``HEAD|GET /{org}/{name}/resolve/{revision}/{path}`` -> metadata headers / the content

Every repo needs a valid bearer token. A gated repo answers 403 ``GatedRepo`` to a valid token
whose account was not granted access, as the real hub does when the license was not accepted,
and 401 without a token. Requests are logged (method, path, token) so tests can see what was
fetched and that the token was sent. ``delay_s`` slows each content download down, so a test
can look at the host's process list while a download runs.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class FakeRepo:
    revision: str  # the only commit the repo has (40 hex)
    files: dict[str, bytes]
    gated: bool = False
    lfs_suffixes: tuple[str, ...] = (".safetensors", ".bin")

    @classmethod
    def from_directory(cls, directory: Path, revision: str, gated: bool = False) -> FakeRepo:
        files = {
            p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
        }
        return cls(revision=revision, files=files, gated=gated)

    def is_lfs(self, path: str) -> bool:
        return path.endswith(self.lfs_suffixes)

    def etag(self, path: str) -> str:
        data = self.files[path]
        if self.is_lfs(path):
            return hashlib.sha256(data).hexdigest()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def listing(self) -> list[dict]:
        entries = []
        for path, data in sorted(self.files.items()):
            blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            entry = {"type": "file", "path": path, "size": len(data), "oid": blob}
            if self.is_lfs(path):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 132}
                entry["oid"] = hashlib.sha1(f"pointer {path}".encode()).hexdigest()
            entries.append(entry)
        return entries


@dataclass
class FakeHub:
    repos: dict[str, FakeRepo]
    tokens: set[str]  # valid tokens
    granted: set[str] = field(default_factory=set)  # tokens whose account accepted the gated repos' license
    delay_s: float = 0.0
    log: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, token)

    def downloads(self) -> list[str]:
        """Repo file paths whose content was downloaded (GET on resolve), in order."""
        return [
            path.split("/resolve/", 1)[1].split("/", 1)[1]
            for method, path, _ in self.log
            if method == "GET" and "/resolve/" in path
        ]

    def serve(self, address: str = "127.0.0.1") -> RunningHub:
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(head=True)

            def do_GET(self) -> None:  # noqa: N802
                self._answer(head=False)

            def _answer(self, head: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                auth = self.headers.get("Authorization", "")
                token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else None
                hub.log.append((self.command, path, token))
                if path.startswith("/api/models/"):
                    repo_id, rest = _split_repo(path[len("/api/models/") :])
                    kind, _, revision = rest.partition("/")
                    if kind != "tree":
                        return self._error(404, "EntryNotFound", "no such endpoint")
                    repo = self._repo(repo_id, token, revision.split("/", 1)[0])
                    if repo is not None:
                        self._send(200, json.dumps(repo.listing()).encode(), {"Content-Type": "application/json"}, head)
                    return
                repo_id, rest = _split_repo(path.lstrip("/"))
                kind, _, tail = rest.partition("/")
                revision, _, filename = tail.partition("/")
                if kind != "resolve":
                    return self._error(404, "EntryNotFound", "no such endpoint")
                repo = self._repo(repo_id, token, revision)
                if repo is None:
                    return
                if filename not in repo.files:
                    return self._error(
                        404, "EntryNotFound", f"{filename} not in {repo_id}", {"X-Repo-Commit": repo.revision}
                    )
                headers = {
                    "X-Repo-Commit": repo.revision,
                    "ETag": f'"{repo.etag(filename)}"',
                    "Content-Type": "application/octet-stream",
                }
                if repo.is_lfs(filename):
                    headers["X-Linked-Etag"] = f'"{repo.etag(filename)}"'
                    headers["X-Linked-Size"] = str(len(repo.files[filename]))
                if not head and hub.delay_s:
                    time.sleep(hub.delay_s)
                self._send(200, repo.files[filename], headers, head)

            def _repo(self, repo_id: str, token: str | None, revision: str) -> FakeRepo | None:
                repo = hub.repos.get(repo_id)
                if repo is None or token not in hub.tokens:
                    code = "GatedRepo" if repo is not None and repo.gated else "RepoNotFound"
                    self._error(401, code, "Invalid credentials in Authorization header")
                    return None
                if repo.gated and token not in hub.granted:
                    self._error(
                        403,
                        "GatedRepo",
                        f"Access to model {repo_id} is restricted and you are not in the "
                        "authorized list. Visit the repo page to ask for access.",
                    )
                    return None
                if revision not in (repo.revision, "main"):
                    self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                    return None
                return repo

            def _error(self, status: int, code: str, message: str, extra: dict | None = None) -> None:
                body = json.dumps({"error": message}).encode()
                self._send(
                    status,
                    body,
                    {
                        "X-Error-Code": code,
                        "X-Error-Message": message,
                        "Content-Type": "application/json",
                        **(extra or {}),
                    },
                    self.command == "HEAD",
                )

            def _send(self, status: int, body: bytes, headers: dict[str, str], head: bool) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

        server = http.server.ThreadingHTTPServer((address, 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        return RunningHub(server, f"http://{address}:{server.server_address[1]}")


@dataclass
class RunningHub:
    server: http.server.ThreadingHTTPServer
    url: str

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> RunningHub:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _split_repo(path: str) -> tuple[str, str]:
    org, name, rest = (path.split("/", 2) + ["", ""])[:3]
    return f"{org}/{name}", rest
