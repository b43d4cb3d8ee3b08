"""Rules for spec values that reach a host: paths, names, URLs, key files and service limits.

The schema checks shapes; these check what a value will do once it is on a
command line, in a file a shell sources, or in the service's settings: a path
that escapes with ``..`` or names ``/etc``, a URL git would read as an option,
a smoke test the service is bound to refuse. Each rule returns
``(section, key, message)`` for the merged settings of one host; the loader
puts the file and line of wherever the value was set in front.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any

from sd35_provision.service.config import MIN_API_KEY_CHARS, Limits, ServiceConfig
from sd35_provision.service.policy import CUDA_ONLY_PRECISIONS

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "host-spec.schema.json"
_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def is_valid_address(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
        return True
    except ValueError:
        pass
    if len(address) > 253 or address.endswith("."):
        return False
    labels = address.split(".")
    if all(label.isdigit() for label in labels):
        return False  # looks like a broken IPv4 address, e.g. 10.0.0.300
    return all(_HOSTNAME_LABEL.match(label) for label in labels)


Problem = tuple[str, str, str]  # (section, key, message)

# Host directories the tool creates, chowns and writes into.
HOST_DIRECTORY_FIELDS = (("cache", "root"), ("python", "install_root"))

# Characters a host path may hold: they need no quoting in any shell or in
# systemd's EnvironmentFile=, so a path can never carry `$(...)`, `;` or a space.
_SAFE_PATH = re.compile(r"^[A-Za-z0-9._@+/-]+$")

# Directories that belong to the system: never a cache or install root, nor anything inside them.
SYSTEM_TREES = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
)
# Directories that hold other things: fine to build inside, never to take over (and chown) whole.
SHARED_DIRECTORIES = frozenset(
    {
        "/",
        "/home",
        "/media",
        "/mnt",
        "/opt",
        "/root",
        "/srv",
        "/tmp",
        "/var",
        "/var/cache",
        "/var/lib",
        "/var/log",
        "/var/tmp",
        "/var/spool",
        "/var/mail",
    }
)

# Hub ids: letters, digits, '-', '_', '.', never '..' nor a part that starts or ends with '.' or '-'.
_REPO_PART = re.compile(r"^(?![.-])(?!.*\.\.)[A-Za-z0-9_.-]{1,96}(?<![.-])$")

_GIT_URL = re.compile(r"^((https?|ssh|git|file)://|/|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:)\S+$")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # line breaks and tabs are fine in a prompt


def host_directory_problems(section: str, key: str, value: str) -> list[Problem]:
    """An absolute, normalised path of plain characters, outside the system's own directories."""
    if not value.startswith("/"):
        return [(section, key, f"{value!r} is not an absolute path")]
    if not _SAFE_PATH.match(value):
        bad = "".join(sorted({c for c in value if not _SAFE_PATH.match(c)}))
        return [
            (
                section,
                key,
                f"{value!r} contains {bad!r}; a host path may only use letters, digits and "
                "'.', '_', '-', '+', '@', '/' (it is written into files a shell reads)",
            )
        ]
    if ".." in value.split("/") or "." in value.split("/")[1:]:
        return [(section, key, f"{value!r} contains '.' or '..'; write the directory itself")]
    normal = "/" + "/".join(part for part in value.split("/") if part)
    if normal != value:
        return [(section, key, f"{value!r} is not in normal form; write {normal!r}")]
    if normal in SHARED_DIRECTORIES or normal in SYSTEM_TREES:
        return [
            (
                section,
                key,
                f"{value!r} is a system directory; the tool owns and changes the mode of this "
                "directory, so name one of its own (for example /var/lib/sd35 or /opt/sd35)",
            )
        ]
    for tree in SYSTEM_TREES:
        if normal.startswith(tree + "/"):
            return [(section, key, f"{value!r} is inside {tree}, which belongs to the system")]
    return []


def repo_problems(repo: str) -> list[Problem]:
    if not all(_REPO_PART.match(part) for part in repo.split("/")):
        return [
            (
                "model",
                "repo",
                f"{repo!r} is not a hub repository id: each part uses letters, digits, '-', "
                "'_' and '.', without '..' and not starting or ending with '.' or '-'",
            )
        ]
    return []


def git_url_problems(url: str) -> list[Problem]:
    if url.startswith("-"):
        return [("model", "url", f"{url!r} starts with '-', which git would read as an option")]
    if _CONTROL.search(url) or not _GIT_URL.match(url):
        return [
            (
                "model",
                "url",
                f"{url!r} is not a git URL: use https://, ssh://, git://, file://, "
                "user@host:path or an absolute path, without spaces",
            )
        ]
    return []


def local_file_problems(
    merged: dict[str, Any], file_fields: dict[str, tuple[str, ...]], directory_fields: dict[str, tuple[str, ...]]
) -> list[Problem]:
    """Local paths that exist but are the wrong kind: a key file that is a directory, and so on."""
    problems: list[Problem] = []
    for fields, want_directory in ((file_fields, False), (directory_fields, True)):
        for section, keys in fields.items():
            for key in keys:
                path = merged[section].get(key)
                if not isinstance(path, Path) or not path.exists():
                    continue
                if want_directory and not path.is_dir():
                    problems.append((section, key, f"{path} is not a directory"))
                elif not want_directory and not path.is_file():
                    problems.append(
                        (
                            section,
                            key,
                            f"{path} is a directory, not a file" if path.is_dir() else f"{path} is not a regular file",
                        )
                    )
    return problems


def api_key_problems(path: Path) -> list[Problem]:
    """The service refuses keys it considers unsafe (service/config.py read_api_key); say so now."""
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        return [("service", "api_key_file", f"{path} cannot be read: {error}")]
    # Only the length is named: the key itself never appears in a message.
    if len(key) < MIN_API_KEY_CHARS:
        return [
            (
                "service",
                "api_key_file",
                f"{path} holds a key of {len(key)} characters; at least {MIN_API_KEY_CHARS} are needed",
            )
        ]
    if any(character.isspace() for character in key):
        return [("service", "api_key_file", f"{path}: the key contains whitespace")]
    return []


def service_limit_problems(service: dict[str, Any], smoke: dict[str, Any]) -> list[Problem]:
    """What the service would refuse later, on every host, with a rollback: refused here instead."""
    problems: list[Problem] = []
    default_steps = service.get("default_steps", ServiceConfig.default_steps)
    if service["max_steps"] < default_steps:
        problems.append(
            (
                "service",
                "max_steps",
                f"{service['max_steps']} is below the service's default steps "
                f"({default_steps}), so the service would not start",
            )
        )
    if smoke["steps"] > service["max_steps"]:
        problems.append(
            (
                "smoke",
                "steps",
                f"{smoke['steps']} is above service.max_steps {service['max_steps']}, "
                "so the service would refuse the smoke test",
            )
        )
    prompt = smoke["prompt"]
    max_chars = service.get("max_prompt_chars", Limits.max_prompt_chars)
    if len(prompt) > max_chars:
        problems.append(("smoke", "prompt", f"{len(prompt)} characters; the service accepts at most {max_chars}"))
    if _CONTROL_IN_TEXT.search(prompt):
        problems.append(("smoke", "prompt", "contains a control character"))
    return problems


def instance_count(setting: Any) -> int:
    """How many instances ``service.instances`` makes at least: N, the list's length, 1 for ``auto``."""
    if isinstance(setting, list | tuple):
        return len(setting)
    return setting if isinstance(setting, int) else 1


def instances_problems(service: dict[str, Any], accelerator: str) -> list[Problem]:
    """What the spec alone says is wrong with ``service.instances`` (the host's GPUs are checked at preflight)."""
    setting, port = service["instances"], service["port"]
    problems: list[Problem] = []
    if isinstance(setting, list | tuple):
        if accelerator == "cpu":
            problems.append(("service", "instances", "lists GPUs, but gpu.accelerator is cpu; give a number instead"))
        seen: set[int | str] = set()
        for entry in setting:
            if entry in seen:
                what = f"GPU {entry}" if isinstance(entry, int) else entry
                problems.append(("service", "instances", f"{what} is listed twice (one instance per device)"))
            seen.add(entry)
    last = port + instance_count(setting) - 1
    if last > 65535:
        problems.append(
            (
                "service",
                "instances",
                f"{instance_count(setting)} instances from service.port {port} need ports up to {last}, above 65535",
            )
        )
    return problems


def device_problems(gpu: dict[str, Any], python: dict[str, Any], service: dict[str, Any]) -> list[Problem]:
    """Settings no device of the host can run: the service would fail to start and be rolled back on every host."""
    problems: list[Problem] = []
    no_cuda = (
        "gpu.accelerator is cpu"
        if gpu["accelerator"] == "cpu"
        else "python.torch_flavour cpu installs torch without CUDA"
        if python["torch_flavour"] == "cpu"
        else None
    )
    precision = service["precision"]
    if no_cuda and precision in CUDA_ONLY_PRECISIONS:
        problems.append(("service", "precision", f"{precision} needs a CUDA GPU, and {no_cuda}"))
    if gpu["accelerator"] == "cpu" and gpu.get("require_fp8"):
        problems.append(("gpu", "require_fp8", "FP8 needs an NVIDIA GPU, and gpu.accelerator is cpu"))
    return problems


def endpoint(address: str, port: int) -> tuple[str, int]:
    """One spelling per address: IPv6 compressed and lower case, IPv4-mapped IPv6 as IPv4, names lower case."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address.lower().rstrip("."), port
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.compressed, port
