"""The systemd unit of the inference service, rendered by a pure function.

Hardening is as strict as CUDA allows: no MemoryDenyWriteExecute (torch.compile,
Triton and the CUDA driver's JIT map memory writable and executable), no
PrivateDevices and the default DevicePolicy (the GPU is /dev/nvidia*), no
ProcSubset=pid (the driver reads /proc/driver/nvidia), and the system call
filter is a deny list of groups a GPU server never needs, answered with EPERM
rather than a kill (the NVIDIA user-space driver's calls have not been audited
under systemd here; an error beats a SIGSYS in the middle of a model load).
The whole file system is read-only except the cache directories.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePosixPath

DEFAULT_ENV_FILE = "/etc/sd35/env"
# Exit status 2 is a configuration error (see __main__): restarting cannot fix it.
EXIT_BAD_CONFIG = 2

_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def _check_path(name: str, value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{name}: {value!r} is not an absolute path")
    if any(c in value for c in "\n\r\t ") or any(ord(c) < 32 for c in value):
        raise ValueError(f"{name}: {value!r} contains whitespace or control characters")
    return str(PurePosixPath(value))


def render_unit(
    venv_dir: str,
    working_dir: str,
    cache_dirs: Sequence[str],
    service_env_file: str | None = None,
    env_file: str = DEFAULT_ENV_FILE,
    user: str = "sd35",
    group: str | None = None,
    timeout_start_s: int = 900,
    restart_sec: int = 10,
    description: str = "Stable Diffusion 3.5 inference service",
    running_record: str | None = None,
    release_link: str | None = None,
    unit_path: str | None = None,
    instance_env_file: str | None = None,
) -> str:
    """The text of the template unit ``sd35-inference@.service`` (``%i``: the instance's number).

    + venv_dir: the pinned virtual environment; runs ``<venv_dir>/bin/python -m sd35_provision.service``
    + working_dir: directory holding ``sd35_provision/service/``
    + cache_dirs: the only writable paths (Hugging Face, torch.compile and Triton caches)
    + service_env_file: the service's own SD35_* settings, read after ``env_file``
    + env_file: host-wide settings
    + user, group: the unprivileged account it runs as (group defaults to user)
    + timeout_start_s: how long loading and warming up the model may take before systemd gives up
    + restart_sec: pause before a restart after a failure
    + running_record: ``/run/<dir>[/<dir>]/<file>``, e.g. ``/run/sd35/%i/running.json``: where the service
      states what it runs (service/running.py); its directory becomes the RuntimeDirectory, so the
      record goes when the service stops (and only this instance's)
    + release_link: the ``current`` link whose release the record names
    + unit_path: where this unit is installed; the record holds its digest with the environment files'
    + instance_env_file: one instance's own settings (port, device), read last, e.g. ``/etc/sd35/instances/%i.env``

    Raises ValueError for values that would break or inject into the unit file.
    """
    for name, value in (("user", user), ("group", group or user)):
        if not _USER_RE.match(value):
            raise ValueError(f"{name}: {value!r} is not a valid account name")
    if not cache_dirs:
        raise ValueError("cache_dirs: at least one writable cache directory is needed")
    if timeout_start_s < 1 or restart_sec < 0:
        raise ValueError("timeout_start_s must be positive and restart_sec not negative")
    if any(c in description for c in "\n\r"):
        raise ValueError("description: must be one line")
    venv = _check_path("venv_dir", venv_dir)
    work = _check_path("working_dir", working_dir)
    caches = [_check_path("cache_dirs", d) for d in cache_dirs]
    env_files = [_check_path("env_file", env_file)]
    if service_env_file is not None:
        env_files.append(_check_path("service_env_file", service_env_file))
    if instance_env_file is not None:
        env_files.append(_check_path("instance_env_file", instance_env_file))
    cache_root = caches[0]
    running: list[str] = []
    if running_record is not None:
        record = PurePosixPath(_check_path("running_record", running_record))
        if len(record.parts) not in (4, 5) or record.parts[1] != "run":
            raise ValueError(
                f"running_record: {running_record!r} is not /run/<directory>/<file> (or /run/<dir>/<dir>/<file>)"
            )
        reads = ([_check_path("unit_path", unit_path)] if unit_path else []) + env_files
        running = [
            # Only the innermost directory is removed when this instance stops, not its siblings'.
            f"RuntimeDirectory={'/'.join(record.parts[2:-1])}",
            "RuntimeDirectoryMode=0755",
            f"Environment=SD35_RUNNING_RECORD={record}",
            *([f"Environment=SD35_RELEASE_LINK={_check_path('release_link', release_link)}"] if release_link else []),
            # Quoted: systemd splits an unquoted Environment= line into assignments at spaces.
            f'Environment="SD35_RUNNING_FILES={" ".join(reads)}"',
        ]

    lines = [
        "# Managed by sd35-provision; local changes are overwritten.",
        "[Unit]",
        f"Description={description}",
        "Wants=network-online.target",
        "After=network-online.target",
        "StartLimitIntervalSec=600",
        "StartLimitBurst=5",
        "",
        "[Service]",
        # notify: the unit becomes active only once the model is loaded and warmed up.
        "Type=notify",
        "NotifyAccess=main",
        f"User={user}",
        f"Group={group or user}",
        f"WorkingDirectory={work}",
        *(f"EnvironmentFile={path}" for path in env_files),
        # Caches must live in the writable paths: the rest of the file system is read-only.
        f"Environment=HF_HOME={cache_root}/huggingface",
        "Environment=HF_HUB_OFFLINE=1",
        f"Environment=TORCHINDUCTOR_CACHE_DIR={cache_root}/torchinductor",
        f"Environment=TRITON_CACHE_DIR={cache_root}/triton",
        f"Environment=XDG_CACHE_HOME={cache_root}",
        "Environment=PYTHONUNBUFFERED=1",
        "Environment=PYTHONDONTWRITEBYTECODE=1",
        # What it runs, stated at start (service/running.py); /run/<dir> is writable despite ProtectSystem.
        *running,
        f"ExecStart={venv}/bin/python -m sd35_provision.service",
        "Restart=on-failure",
        f"RestartSec={restart_sec}",
        f"RestartPreventExitStatus={EXIT_BAD_CONFIG}",
        f"TimeoutStartSec={timeout_start_s}",
        "TimeoutStopSec=60",
        "KillMode=mixed",
        "LimitNOFILE=65536",
        "UMask=0077",
        "# Hardening (see sd35_provision/service/unit.py for what is left out and why).",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        f"ReadWritePaths={' '.join(caches)}",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "RestrictSUIDSGID=yes",
        "RestrictRealtime=yes",
        "RestrictNamespaces=yes",
        "LockPersonality=yes",
        "RemoveIPC=yes",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "SystemCallArchitectures=native",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "PrivateMounts=yes",
        "ProtectProc=invisible",
        "SystemCallFilter=~@clock @cpu-emulation @debug @module @mount @obsolete @raw-io @reboot @swap",
        "SystemCallErrorNumber=EPERM",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)
