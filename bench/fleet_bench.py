"""How long sd35-provision takes on a fleet of test hosts, and how many SSH round trips per host, beside Ansible.

Run by scripts/fleet_bench.sh (which makes the Ansible venv). For each fleet
size: boots that many test hosts (systemd-nspawn, their own 127.0.X.0/24
block), applies the spec from fresh (timed once), then times each command
``--runs`` times, sd35-provision and the Ansible playbook of bench/ansible
interleaved, and reports medians. Round trips are counted on the hosts: sshd
runs with ``LogLevel DEBUG1`` and every ``request exec`` / ``subsystem``
(SFTP) in each host's journal during a run is one SSH command. With
``--latency-ms`` the fleet's packets also get a netem delay on ``lo`` (half
each way, only packets to or from the fleet's block), or where this kernel's
tc has no netem every SSH connection goes through bench/delay_relay.py (a
listening relay per host for sd35-provision, Ansible's ProxyCommand), and
drift/no-op apply are timed again. The table goes into docs/benchmarks.md
between markers.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sd35_provision import layout  # noqa: E402
from sd35_provision.locks import load_lock  # noqa: E402
from sd35_provision.testfleet import Fleet, down, up  # noqa: E402
from sd35_provision.testfleet.system import port_in_use  # noqa: E402
from sd35_provision.tinymodel import generate_tiny_pipeline  # noqa: E402
from sd35_provision.wheelhouse import cached_wheelhouse  # noqa: E402

CLI = [sys.executable, "-m", "sd35_provision.cli"]
COMMANDS = ("validate", "plan", "drift", "status", "apply")
START, END = "<!-- fleet-bench:start -->", "<!-- fleet-bench:end -->"
NOTES: list[str] = []  # what the table could not show, and why
SSH_REQUEST = re.compile(r"server_input_channel_req: channel \d+ request (exec|subsystem)")


def free_block(count: int) -> str:
    for block in range(230, 250):
        # .n: the hosts' sshd; .(n+100): their latency relays (see relayed)
        if not any(port_in_use(f"127.0.{block}.{n}") for n in [*range(1, count + 1), *range(101, count + 101)]):
            return f"127.0.{block}.1"
    raise SystemExit("no free 127.0.X.0/24 block among 230..249")


def converged_spec(fleet: Fleet) -> Path:
    model = fleet.state_dir / "tiny-sd3"
    if not (model / "model_index.json").exists():
        generate_tiny_pipeline(model)
    wheels = cached_wheelhouse(load_lock("cpu"), "3.11")
    return fleet.write_spec(
        fleet.state_dir / "bench.yaml",
        extra_defaults={
            "cache": {"root": "/srv/sd35", "min_free_gb": 1},
            "python": {"torch_flavour": "cpu", "wheelhouse": str(wheels)},
            "model": {"source": "push", "path": model.name},
            "smoke": {"size": "64x64", "steps": 2},
        },
    )


def log_ssh_requests(fleet: Fleet) -> None:
    for host in fleet.hosts:
        (fleet.state_dir / "hosts" / host.name / "root/etc/ssh/sshd_config.d/01-bench.conf").write_text(
            "LogLevel DEBUG1\n"
        )
        fleet.run(host.name, "systemctl reload ssh")
    for host in fleet.hosts:  # sshd re-executes itself on reload: wait until it answers again
        for _ in range(50):
            try:
                fleet.run(host.name, "true")
                break
            except OSError:
                time.sleep(0.2)


def round_trips(fleet: Fleet, since: float, until: float) -> list[int]:
    """SSH commands each host's sshd saw between ``since`` and ``until`` (epoch seconds)."""
    counts = []
    for host in fleet.hosts:
        journal = fleet.state_dir / "hosts" / host.name / "root/var/log/journal"
        text = subprocess.run(
            [
                "journalctl",
                "-D",
                str(journal),
                "-u",
                "ssh.service",
                "--no-pager",
                "-o",
                "short-unix",
                f"--since=@{since:.3f}",
                f"--until=@{until:.3f}",
            ],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        counts.append(sum(1 for line in text.splitlines() if SSH_REQUEST.search(line)))
    return counts


def timed(fleet: Fleet, argv: list[str], env: dict | None = None) -> tuple[float, list[int], int]:
    """Wall seconds, SSH commands per host, exit code of one run of ``argv``."""
    time.sleep(1.1)  # the journal's --since/--until are to the second at best: keep runs apart
    start = time.time()
    began = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env={**os.environ, **(env or {})})
    wall = time.monotonic() - began
    time.sleep(1.1)  # let journald write the last lines
    return wall, round_trips(fleet, start, time.time() - 1.0), result.returncode


class Ansible:
    """The playbook of bench/ansible, run against the same fleet with the same files."""

    def __init__(self, fleet: Fleet, spec: Path, venv: Path):
        self.fleet, self.venv = fleet, venv
        self.work = Path(tempfile.mkdtemp(prefix="ansible-", dir=fleet.state_dir))
        host = fleet.hosts[0].name
        # The files sd35-provision keeps, each with the owner, group and mode it gave it on the host.
        instance_envs = fleet.run(host, f"ls {layout.INSTANCES_DIR}/*.env").stdout.split()
        lock = fleet.run(host, "ls /opt/sd35/locks/*.txt").stdout.split()[0]
        manifest = fleet.run(host, "ls /srv/sd35/manifests/*.json | grep -v hashes").stdout.split()[0]
        paths = [
            layout.ENV_FILE,
            layout.PROFILE_SNIPPET,
            layout.SERVICE_ENV_FILE,
            layout.UNIT_PATH,
            *instance_envs,
            lock,
            manifest,
        ]
        files = {}
        for path in paths:
            owner, group, mode = fleet.run(host, f"stat -c '%U %G %a' {shlex.quote(path)}").stdout.split()
            files[path] = (owner, group, mode.zfill(4))
        units = [layout.instance_unit(Path(env).stem) for env in instance_envs]
        # Each host's own copy: an instance's env names its host's address, so the bytes differ per host.
        entries = []
        for index, (path, (owner, group, mode)) in enumerate(files.items()):
            for each in fleet.hosts:
                local = self.work / each.name / f"file{index}"
                local.parent.mkdir(exist_ok=True)
                local.write_text(fleet.run(each.name, f"cat {shlex.quote(path)}").stdout)
            source = f"{self.work}/{{{{ inventory_hostname }}}}/file{index}"
            entries.append({"src": source, "dest": path, "owner": owner, "group": group, "mode": mode})
        model_dir = fleet.run(host, "ls -d /srv/sd35/models/*").stdout.split()[0]
        venv_dir = fleet.run(host, "ls -d /opt/sd35/venvs/*").stdout.split()[0]
        directories = [
            {"path": path, "owner": "sd35", "mode": "0750"}
            for path in (
                "/srv/sd35",
                "/srv/sd35/huggingface",
                "/srv/sd35/huggingface/hub",
                "/srv/sd35/torch",
                "/srv/sd35/pip",
                "/srv/sd35/models",
                "/srv/sd35/manifests",
            )
        ] + [
            {"path": path, "owner": "root", "mode": "0755"}
            for path in (
                "/etc/sd35",
                "/opt/sd35",
                "/opt/sd35/venvs",
                "/opt/sd35/locks",
                "/opt/sd35/wheelhouse",
                "/opt/sd35/releases",
                "/opt/sd35/apps",
                "/srv/sd35/smoke",
            )
        ]
        import json

        variables = {
            "directories": directories,
            "files": entries,
            "wheelhouse": str(cached_wheelhouse(load_lock("cpu"), "3.11")),
            "remote_wheelhouse": "/opt/sd35/wheelhouse",
            "model": str(fleet.state_dir / "tiny-sd3"),
            "remote_model": model_dir,
            "lock": lock,
            "venv": venv_dir,
            "units": units,
        }
        (self.work / "vars.json").write_text(json.dumps(variables))
        inventory = ["[fleet]"] + [
            f"{h.name} ansible_host={h.address} ansible_user=root "
            f"ansible_ssh_private_key_file={fleet.state_dir / 'id_ed25519'} "
            f"ansible_ssh_common_args='-o UserKnownHostsFile={fleet.state_dir / 'known_hosts'} "
            "-o StrictHostKeyChecking=yes' ansible_python_interpreter=/usr/bin/python3"
            for h in fleet.hosts
        ]
        (self.work / "hosts.ini").write_text("\n".join(inventory) + "\n")

    def argv(self) -> list[str]:
        return [
            str(self.venv / "bin/ansible-playbook"),
            "-i",
            str(self.work / "hosts.ini"),
            "-e",
            f"@{self.work / 'vars.json'}",
            "-f",
            str(len(self.fleet.hosts)),
            str(REPO / "bench/ansible/site.yml"),
        ]

    env = {"ANSIBLE_PIPELINING": "1", "ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_NOCOLOR": "1"}


@dataclass
class Delay:
    """How the added latency is made: ``netem`` on lo, or ``relay`` (bench/delay_relay.py)."""

    how: str
    env: dict[str, str] = field(default_factory=dict)  # for sd35-provision (pyinfra reads ~/.ssh/config)
    ssh_args: str = ""  # for Ansible's ssh


def relay_command(ms: int) -> str:
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(REPO / 'bench/delay_relay.py'))} %h %p {ms}"


RELAY_OFFSET = 100  # the relay of 127.0.X.n listens on 127.0.X.(n+100), port 22


def relay_address(address: str) -> str:
    block, _, last = address.rpartition(".")
    return f"{block}.{int(last) + RELAY_OFFSET}"


@contextmanager
def relayed(fleet: Fleet, ms: int):
    """bench/delay_relay.py holding each chunk ms/2 each way: Ansible's ssh runs it as its ProxyCommand (-o);
    sd35-provision is pointed at a listening relay per host instead (a ``Hostname`` in a ~/.ssh/config of the
    bench's own HOME, which pyinfra's ssh connector reads: a ``Port`` there loses to the spec's port), since
    paramiko's ProxyCommand hangs under pyinfra's gevent. The hosts' keys are known at the relays' addresses
    too for the time of the runs."""
    home = fleet.state_dir / "bench-home"
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    config = [f"Host {host.address}\n    Hostname {relay_address(host.address)}\n" for host in fleet.hosts]
    (home / ".ssh/config").write_text("".join(config))
    known_hosts = fleet.state_dir / "known_hosts"
    known = known_hosts.read_text()
    relayed_keys = []
    for line in known.splitlines():
        name, _, key = line.partition(" ")
        if name in {host.address for host in fleet.hosts}:
            relayed_keys.append(f"{relay_address(name)} {key}")
    listeners = [
        subprocess.Popen(
            [
                sys.executable,
                str(REPO / "bench/delay_relay.py"),
                "--listen",
                f"{relay_address(host.address)}:22",
                host.address,
                "22",
                str(ms),
            ]
        )
        for host in fleet.hosts
    ]
    try:
        known_hosts.write_text(known.rstrip("\n") + "\n" + "\n".join(relayed_keys) + "\n")
        for host in fleet.hosts:  # listening before the first run
            for _ in range(50):
                if port_in_use(relay_address(host.address)):
                    break
                time.sleep(0.1)
        # Only HOME moves: the local caches stay where they were.
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        yield Delay(
            "relay",
            env={"HOME": str(home), "XDG_CACHE_HOME": cache},
            ssh_args=f"-o {shlex.quote('ProxyCommand=' + relay_command(ms))}",
        )
    finally:
        for listener in listeners:
            listener.terminate()
            listener.wait()
        known_hosts.write_text(known)


@contextmanager
def latency(fleet: Fleet, ms: int):
    """``ms`` more per round trip to and from the fleet's hosts, only those: a netem delay on lo (half each way,
    packets of the fleet's /24) where this kernel has prio and netem qdiscs, else bench/delay_relay.py."""
    block = fleet.hosts[0].address.rsplit(".", 1)[0] + ".0/24"
    tc = ["tc", "qdisc"]
    priomap = "1 2 2 2 1 2 0 0 1 1 1 1 1 1 1 1".split()
    added = subprocess.run(
        [*tc, "add", "dev", "lo", "root", "handle", "1:", "prio", "bands", "4", "priomap", *priomap],
        capture_output=True,
        text=True,
        check=False,
    )
    if added.returncode != 0:
        print(f"tc qdisc add dev lo root prio: {added.stderr.strip()}; using bench/delay_relay.py", file=sys.stderr)
        with relayed(fleet, ms) as delay:
            yield delay
        return
    try:
        netem = subprocess.run(
            [*tc, "add", "dev", "lo", "parent", "1:4", "handle", "40:", "netem", "delay", f"{ms / 2:g}ms"],
            capture_output=True,
            text=True,
            check=False,
        )
        if netem.returncode != 0:
            print(f"tc qdisc add ... netem: {netem.stderr.strip()}; using bench/delay_relay.py", file=sys.stderr)
            subprocess.run([*tc, "del", "dev", "lo", "root"], check=False, capture_output=True)
            with relayed(fleet, ms) as delay:
                yield delay
            return
        for direction in ("dst", "src"):
            subprocess.run(
                [
                    "tc",
                    "filter",
                    "add",
                    "dev",
                    "lo",
                    "protocol",
                    "ip",
                    "parent",
                    "1:0",
                    "prio",
                    "1",
                    "u32",
                    "match",
                    "ip",
                    direction,
                    block,
                    "flowid",
                    "1:4",
                ],
                check=True,
            )
        yield Delay("netem")
    finally:
        subprocess.run([*tc, "del", "dev", "lo", "root"], check=False, capture_output=True)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def bench_fleet(
    count: int,
    runs: int,
    latency_ms: int,
    ansible_venv: Path | None,
    ansible_runs: int,
    state_root: Path,
    reuse: Path | None = None,
    ansible_latency: bool = False,
) -> list[dict]:
    """The rows of one fleet size; ``reuse``: a fleet already booted there and converged (no fresh apply)."""
    state_dir = reuse or state_root / f"fleet{count}"
    fleet = Fleet.load(reuse) if reuse else up(count, state_dir, first_address=free_block(count))
    count = len(fleet.hosts)
    rows: list[dict] = []
    try:
        log_ssh_requests(fleet)
        spec = converged_spec(fleet)
        if not reuse:
            wall, trips, rc = timed(fleet, [*CLI, "apply", str(spec)])
            rows.append(row(count, "fresh apply", "", [wall], [trips], rc))
        ansible = Ansible(fleet, spec, ansible_venv) if ansible_venv and ansible_runs else None

        def measure(delay: Delay | None) -> None:
            label = f"+{latency_ms} ms ({delay.how})" if delay else ""
            env = delay.env if delay else {}
            for command in COMMANDS if not delay else ("drift", "apply"):
                ours = [timed(fleet, [*CLI, command, str(spec)], env) for _ in range(runs)]
                rows.append(
                    row(
                        count,
                        command if command != "apply" else "no-op apply",
                        label,
                        [w for w, _, _ in ours],
                        [t for _, t, _ in ours],
                        ours[-1][2],
                    )
                )
            # Minutes a run on this machine: with latency only when asked (--ansible-latency).
            if ansible is not None and (not delay or ansible_latency):
                extra = {"ANSIBLE_SSH_EXTRA_ARGS": delay.ssh_args} if delay and delay.ssh_args else {}
                theirs = [timed(fleet, ansible.argv(), {**ansible.env, **extra}) for _ in range(ansible_runs)]
                rows.append(
                    row(
                        count,
                        "Ansible playbook, no-op",
                        label,
                        [w for w, _, _ in theirs],
                        [t for _, t, _ in theirs],
                        theirs[-1][2],
                    )
                )

        measure(None)
        if latency_ms:
            with latency(fleet, latency_ms) as delay:
                measure(delay)
    finally:
        if not reuse:
            down(state_dir)
    return rows


def row(count: int, what: str, delay: str, walls: list[float], trips: list[list[int]], rc: int) -> dict:
    per_host = [max(t) if t else 0 for t in trips]
    return {
        "hosts": count,
        "what": what,
        "delay": delay or "-",
        "median": median(walls),
        "min": min(walls),
        "max": max(walls),
        "trips": int(median(per_host)),
        "rc": rc,
        "runs": len(walls),
    }


def table(rows: list[dict], command: str, load_before: tuple, load_after: tuple) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        START,
        "## Provisioning speed on the local test fleet (converged hosts, tiny model, CPU wheelhouse)",
        "",
        f"- Command: `{command}` ({when}, {os.cpu_count()} cores shared with other work; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after).",
        "- Wall seconds of the whole command (median of the runs, min-max), sd35-provision and the Ansible "
        "playbook (bench/ansible/site.yml, ansible-core, pipelining on) interleaved. SSH commands: per host (the "
        "busiest), counted in each host's sshd log (`LogLevel DEBUG1`: `request exec`/`subsystem`). `+N ms (netem)`: "
        "a netem delay on the fleet's packets (tc on lo), N ms per round trip; `+N ms (relay)`: where this "
        "kernel's tc has no netem, every SSH connection goes through bench/delay_relay.py (Ansible: as "
        "ProxyCommand; sd35-provision: a listening relay per host, named by a ~/.ssh/config Hostname), holding "
        "each chunk N/2 ms each way.",
        "",
        "| hosts | command | added latency | wall s median (min-max) | SSH commands per host | runs | exit |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['hosts']} | {r['what']} | {r['delay']} | {r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})"
            f" | {r['trips']} | {r['runs']} | {r['rc']} |"
        )
    return "\n".join([*lines, *(f"\n{note}" for note in NOTES), END]) + "\n"


def write_table(path: Path, text: str) -> None:
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    if START in current and END in current:
        before, _, rest = current.partition(START)
        _, _, after = rest.partition(END)
        current = before + text + after.lstrip("\n")
    else:
        current = current.rstrip("\n") + "\n\n" + text
    path.write_text(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", default="1,4", help="fleet sizes, comma-separated (default 1,4)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency-ms", type=int, default=50, help="0: no run with added latency")
    parser.add_argument("--ansible-venv", type=Path, help="a venv with ansible-core (none: no Ansible rows)")
    parser.add_argument("--ansible-runs", type=int, default=1, help="runs of the playbook (default 1: minutes each)")
    parser.add_argument(
        "--ansible-latency", action="store_true", help="run the playbook with the added latency too (minutes more)"
    )
    parser.add_argument("--reuse", type=Path, help="bench this converged test fleet's state dir as it is (no boot)")
    parser.add_argument("--state-dir", type=Path, default=Path("/var/tmp/sd35-fleet-bench"))
    parser.add_argument("--write", type=Path, help="put the table into this markdown file (docs/benchmarks.md)")
    parser.add_argument("--command-line", default=None, help="the command to print in the table")
    args = parser.parse_args()
    load_before = os.getloadavg()
    rows: list[dict] = []
    counts = [0] if args.reuse else [int(n) for n in args.hosts.split(",")]
    for count in counts:
        rows += bench_fleet(
            count,
            args.runs,
            args.latency_ms,
            args.ansible_venv,
            args.ansible_runs,
            args.state_dir,
            args.reuse,
            args.ansible_latency,
        )
    text = table(rows, args.command_line or " ".join(sys.argv), load_before, os.getloadavg())
    print(text)
    if args.write:
        write_table(args.write, text)


if __name__ == "__main__":
    main()
