"""The ``sd35-provision`` command line: parse, call the library, render.

Exit codes: 0 success; 1 a host failed or the input is invalid; 2 drift found
(``drift`` only); 3 the run was aborted (more than ``--fail-percent`` of the
hosts failed, or a canary or batch failed and the rollout stopped); 64 the
command line itself is wrong; 130 interrupted (Ctrl-C).

Importing this module changes nothing (gevent patches the standard library
only when a command that runs pyinfra starts), so tests drive it in-process
with click's CliRunner.
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import click

from sd35_provision.errors import Sd35Error, SpecError, UsageError
from sd35_provision.jsonreport import run_json

EXIT_FAILED = 1
EXIT_DRIFT = 2
EXIT_ABORTED = 3
EXIT_USAGE = 64
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C

EXIT_CODES_HELP = (
    "Exit codes: 0 success; 1 a host failed, or the spec or input is invalid; "
    "2 drift found (drift); 3 the run was aborted because more than --fail-percent of the hosts failed "
    "(hosts it did not finish are listed as aborted), or a canary or batch failed and the rollout stopped "
    "(hosts it did not start are listed as not started); 64 the command line is wrong "
    "(or --limit names no host or group); "
    "130 interrupted (Ctrl-C; each host's state is printed)."
)

spec_argument = click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
limit_option = click.option(
    "-l",
    "--limit",
    "limit",
    multiple=True,
    metavar="PATTERN",
    help="Only these hosts or groups: names, comma lists or globs (node1,node2 or 'gpu-*'); repeatable.",
)
json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the result as one JSON document (schemas/report.schema.json; progress stays on stderr).",
)


def runs_pyinfra(function: Callable[..., Any]) -> Callable[..., Any]:
    """For commands that connect with pyinfra: gevent's patches go in before anything opens a socket.

    pyinfra runs hosts in gevent greenlets, so sockets, ssl and threads must be
    gevent's. Patching here, when such a command starts, rather than at import
    keeps ``import sd35_provision.cli`` free of side effects.
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from gevent import monkey

        if not monkey.is_module_patched("socket"):
            monkey.patch_all()
        _interrupt_in_main_greenlet()
        return function(*args, **kwargs)

    return wrapper


def _interrupt_in_main_greenlet() -> None:
    """Ctrl-C raises KeyboardInterrupt in this (the main) greenlet.

    Python raises it in whatever runs when the signal comes: with gevent that is
    often a connection's greenlet, where paramiko turns it into an SSH error
    and the run goes on. gevent's handler runs in its loop and hands it here.
    """
    import signal

    import gevent

    main_greenlet = gevent.getcurrent()
    gevent.signal_handler(signal.SIGINT, gevent.kill, main_greenlet, KeyboardInterrupt)


def fleet_run_options(function):
    """``--parallel`` and ``--fail-percent``, for the commands that run over the fleet."""
    function = click.option(
        "--fail-percent",
        type=click.IntRange(0, 100),
        default=None,
        metavar="P",
        help="Abort the run once more than P% of the hosts have failed: no further operation starts "
        "anywhere, and the hosts not finished are reported as aborted (exit 3). Default: never abort; "
        "a failed host never stops the others.",
    )(function)
    return click.option(
        "--parallel",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        metavar="N",
        help="Work on at most N hosts at a time (0: all hosts at once).",
    )(function)


accept_new_option = click.option(
    "--accept-new-host-keys",
    is_flag=True,
    help="Trust and record host keys of hosts not yet in known_hosts (first contact). A changed key is still refused.",
)


def _batch_option(ctx: click.Context, param: click.Parameter, value: str | None):
    from sd35_provision.rollout import parse_batch

    if value is None:
        return None
    try:
        return parse_batch(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _progress(message: str) -> None:
    click.echo(message, err=True)


def _load(spec_path: Path, check_local_files: bool = True, accept_new_host_keys: bool = False):
    from sd35_provision.hostspec import load_spec

    spec = load_spec(spec_path, check_local_files=check_local_files, known_hosts_may_be_missing=accept_new_host_keys)
    for warning in spec.warnings:  # renamed keys still in the file
        click.echo(warning, err=True)
    return spec


# The runs of this command, so that Ctrl-C can say where each host was.
_runs: list = []


def _options(
    accept_new_host_keys: bool,
    quiet: bool = False,
    parallel: int = 0,
    fail_percent: int | None = None,
    wait_lock: int = 0,
):
    from sd35_provision.runner import RunOptions

    return RunOptions(
        accept_new_host_keys=accept_new_host_keys,
        progress=None if quiet else _progress,
        transfer_bars=not quiet and sys.stderr.isatty(),  # else plain lines, no control characters
        parallel=parallel,
        fail_percent=fail_percent,
        on_start=_runs.append,
        wait_lock=wait_lock,
    )


def _exit_for(report) -> None:
    """Exit with the documented code for a finished run (returns when everything went well)."""
    if report.aborted:
        click.echo(f"aborted: {report.aborted}", err=True)
        sys.exit(EXIT_ABORTED)
    if not report.ok:
        sys.exit(EXIT_FAILED)


def _verbosity(ctx: click.Context, param: click.Parameter, value: int) -> None:
    """-v/-vv add up wherever they are given (before or after the command's name)."""
    settings = ctx.find_root().ensure_object(dict)
    settings["verbose"] = settings.get("verbose", 0) + value
    verbose = settings["verbose"]
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(format="%(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(level)
    logging.getLogger("pyinfra").setLevel(level if verbose else logging.CRITICAL)
    logging.getLogger("paramiko").setLevel(logging.CRITICAL if verbose < 2 else logging.DEBUG)


def _debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    settings = ctx.find_root().ensure_object(dict)
    settings["debug"] = settings.get("debug", False) or value


def _common_options() -> list[click.Option]:
    return [
        click.Option(
            ["-v", "--verbose"],
            count=True,
            expose_value=False,
            callback=_verbosity,
            help="More output (-vv: pyinfra's and paramiko's debug log); before or after the command.",
        ),
        click.Option(
            ["--debug"], is_flag=True, expose_value=False, callback=_debug, help="Show tracebacks for errors."
        ),
    ]


def _with_common_options(command: click.Command) -> click.Command:
    """Give ``command`` (and a group's commands) -v and --debug, as Ansible and pyinfra take them anywhere."""
    if not any("--verbose" in param.opts for param in command.params):
        command.params.extend(_common_options())
    for sub in getattr(command, "commands", {}).values():
        _with_common_options(sub)
    return command


class Sd35Group(click.Group):
    """The command group: subpackages' command groups are imported only when used."""

    lazy_commands: ClassVar[dict[str, str]] = {
        "testfleet": "sd35_provision.testfleet.commands:testfleet",
        "bench": "sd35_provision.bench.commands:bench",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in self.lazy_commands:
            module, _, name = self.lazy_commands[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), name)
        return _with_common_options(command) if command is not None else None

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run, turning errors into one line and the documented exit codes (also under click's CliRunner)."""
        args = list(sys.argv[1:] if args is None else args)
        try:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as done:
            sys.exit(done.exit_code)
        except (KeyboardInterrupt, click.Abort):  # click turns Ctrl-C into Abort
            click.echo("interrupted", err=True)
            _say_where_hosts_were()
            sys.exit(EXIT_INTERRUPTED)
        except click.UsageError as error:
            error.show()
            sys.exit(EXIT_USAGE)
        except SpecError as error:
            for problem in error.problems:
                click.echo(problem, err=True)
            for note in error.notes:
                click.echo(note, err=True)
            click.echo(f"{len(error.problems)} problem(s); nothing was changed.", err=True)
            sys.exit(EXIT_FAILED)
        except UsageError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(EXIT_USAGE)
        except Sd35Error as error:
            if "--debug" in args:
                raise
            click.echo(f"error: {error}", err=True)
            sys.exit(EXIT_FAILED)


@click.group(cls=Sd35Group, epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sd35-provision", prog_name="sd35-provision")
def cli() -> None:
    """Provision Stable Diffusion 3.5 inference hosts from a YAML spec."""


cli.params.extend(_common_options())


@cli.command()
@spec_argument
@click.option("--skip-local-files", is_flag=True, help="Don't check that referenced local files exist.")
def validate(spec: Path, skip_local_files: bool) -> None:
    """Check SPEC against the schema and rules; print `ok` or every error."""
    fleet = _load(spec, check_local_files=not skip_local_files)
    click.echo(f"ok: {len(fleet.hosts)} host(s), {len(fleet.groups)} group(s)")


def _plan(
    spec: Path,
    limit: tuple[str, ...],
    accept_new_host_keys: bool,
    parallel: int,
    fail_percent: int | None,
    as_json: bool,
) -> None:
    from sd35_provision import workflow
    from sd35_provision.report import render_plan, render_table

    report = workflow.plan(
        _load(spec, accept_new_host_keys=accept_new_host_keys),
        limit,
        _options(accept_new_host_keys, parallel=parallel, fail_percent=fail_percent),
    )
    if as_json:
        click.echo(run_json(report))
    else:
        click.echo(render_plan(report))
        click.echo("")
        click.echo(render_table(report))
    _exit_for(report)


diff_option = click.option(
    "--diff", is_flag=True, help="Show the unified diff of each file that changes (plan always shows them)."
)


@cli.command(epilog=EXIT_CODES_HELP)
@spec_argument
@limit_option
@accept_new_option
@fleet_run_options
@diff_option
@json_option
@runs_pyinfra
def plan(
    spec: Path,
    limit: tuple[str, ...],
    accept_new_host_keys: bool,
    parallel: int,
    fail_percent: int | None,
    diff: bool,
    as_json: bool,
) -> None:
    """Dry run: per host, what would change, with diffs. Changes nothing."""
    _plan(spec, limit, accept_new_host_keys, parallel, fail_percent, as_json)


@cli.command(epilog=EXIT_CODES_HELP)
@spec_argument
@limit_option
@accept_new_option
@fleet_run_options
@click.option(
    "--canary",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Apply the first N hosts (spec order) on their own first; if any of them fails (its "
    "smoke test included) the rollout stops and the other hosts are not touched (exit 3).",
)
@click.option(
    "--batch",
    "batch",
    callback=_batch_option,
    default=None,
    metavar="N|P%",
    help="Apply N hosts (or P% of the hosts, rounded up) at a time; each batch must pass its "
    "smoke test before the next starts. A failed host is rolled back and the rollout stops "
    "(exit 3), unless --fail-percent still allows it.",
)
@click.option(
    "--wait-lock",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="S",
    help="A host whose run lock another run holds: wait up to S seconds for it; "
    "then (or at once with 0) the host fails, naming the holder, and nothing changes on it.",
)
@click.option(
    "--reboot",
    is_flag=True,
    help="Reboot the hosts that need it (/var/run/reboot-required, an NVIDIA driver that only a reboot "
    "loads) after their apply, a wave at a time: drain, reboot, wait for SSH, driver, service and smoke "
    "test, undrain. Without it (and without gpu.driver.allow_reboot) such a host is only reported.",
)
@click.option(
    "--reboot-timeout",
    type=click.IntRange(min=1),
    default=None,
    metavar="S",
    help="How long a rebooted host may take to come back with its service (default: gpu.driver.reboot_timeout_s, "
    "600); a host that takes longer fails and stops the rollout.",
)
@click.option("--check", is_flag=True, help="Change nothing: the same as `plan` (Ansible's check mode).")
@diff_option
@json_option
@runs_pyinfra
def apply(
    spec: Path,
    limit: tuple[str, ...],
    accept_new_host_keys: bool,
    parallel: int,
    fail_percent: int | None,
    canary: int | None,
    batch,
    wait_lock: int,
    reboot: bool,
    reboot_timeout: int | None,
    check: bool,
    diff: bool,
    as_json: bool,
) -> None:
    """Bring every host to the spec, all hosts in parallel; exit 0 only if every host succeeded."""
    if check:
        if canary or batch:
            raise click.UsageError("--check changes nothing, so --canary and --batch do not apply")
        _plan(spec, limit, accept_new_host_keys, parallel, fail_percent, as_json)
        return
    from sd35_provision import workflow
    from sd35_provision.reboots import RebootOptions
    from sd35_provision.report import render_failures, render_plan, render_table
    from sd35_provision.rollout import Rollout

    report = workflow.apply(
        _load(spec, accept_new_host_keys=accept_new_host_keys),
        limit,
        _options(accept_new_host_keys, parallel=parallel, fail_percent=fail_percent, wait_lock=wait_lock),
        rollout=Rollout(batch=batch, canary=canary or 0),
        reboots=RebootOptions(allowed=reboot, timeout_s=reboot_timeout),
    )
    if as_json:
        click.echo(run_json(report))
    else:
        if diff:
            click.echo(render_plan(report) + "\n")
        click.echo(render_table(report))
        if not report.ok:
            click.echo("\n" + render_failures(report), err=True)
    _exit_for(report)


@cli.command(epilog=EXIT_CODES_HELP)
@spec_argument
@limit_option
@fleet_run_options
@json_option
@runs_pyinfra
def drift(spec: Path, limit: tuple[str, ...], parallel: int, fail_percent: int | None, as_json: bool) -> None:
    """Like plan, for automation: exit 0 no drift, 2 drift, 1 error, 3 aborted."""
    from sd35_provision import workflow
    from sd35_provision.report import render_plan

    report = workflow.plan(
        _load(spec), limit, _options(False, quiet=as_json, parallel=parallel, fail_percent=fail_percent)
    )
    report.mode = "drift"
    click.echo(run_json(report) if as_json else render_plan(report))
    _exit_for(report)
    if report.drifted:
        sys.exit(EXIT_DRIFT)


@cli.command()
@spec_argument
@limit_option
@json_option
@runs_pyinfra
def facts(spec: Path, limit: tuple[str, ...], as_json: bool) -> None:
    """Gather and print per-host facts: OS, GPU, driver, FP8, disk, SSD."""
    from sd35_provision import workflow
    from sd35_provision.facts.table import facts_row, render_facts_table
    from sd35_provision.jsonreport import dumps, facts_document
    from sd35_provision.report import render_failures

    gathered, report = workflow.gather_facts(_load(spec), limit, _options(False, quiet=True))
    if as_json:
        click.echo(dumps(facts_document(gathered, report)))
    else:  # spec order, whichever host answered first
        click.echo(
            render_facts_table(
                [facts_row(host.name, gathered[host.name]) for host in report.hosts if host.name in gathered]
            )
        )
    if not report.ok:
        click.echo(render_failures(report), err=True)
        sys.exit(EXIT_FAILED)


@cli.command()
@spec_argument
@limit_option
@json_option
@runs_pyinfra
def smoke(spec: Path, limit: tuple[str, ...], as_json: bool) -> None:
    """Smoke-test each service instance of each host: one small image each, checked (exit 1 if any fails)."""
    from sd35_provision import workflow
    from sd35_provision.report import render_failures, render_smoke_table

    report = workflow.smoke(_load(spec), limit, _options(False))
    click.echo(run_json(report) if as_json else render_smoke_table(report))
    if not report.ok:
        if not as_json:
            click.echo(render_failures(report), err=True)
        sys.exit(EXIT_FAILED)


@cli.command(
    epilog="Exit codes: 0 every host was reachable and checked; 1 some host was not (its row says why), "
    "or its last smoke result is stale (of another release than it runs, or its service is not active); "
    "64 the command line is wrong. Drift does not change the exit code (use drift for that)."
)
@spec_argument
@limit_option
@click.option(
    "--parallel",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="N",
    help="Check at most N hosts at a time (0: all at once).",
)
@json_option
@click.option(
    "--html",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    metavar="FILE",
    help="Also write the table, with each host's last smoke image, as one self-contained HTML page.",
)
@runs_pyinfra
def status(spec: Path, limit: tuple[str, ...], parallel: int, as_json: bool, html: Path | None) -> None:
    """One row per host: reachable, OS, GPU, driver, FP8, service, release, model, last smoke, drift
    (and one per service instance when a host runs several).

    One SSH connection per host, all hosts in parallel; changes nothing.
    """
    from sd35_provision.jsonreport import status_json
    from sd35_provision.status import fleet_status, render_status_table, status_ok
    from sd35_provision.statuspage import StatusPage

    page = StatusPage(html, spec) if html is not None else None  # a bad path fails before any host is asked
    rows = fleet_status(
        _load(spec),
        limit,
        _options(False, quiet=True, parallel=parallel),
        also_read=page.read_host if page is not None else None,
    )
    click.echo(status_json(rows) if as_json else render_status_table(rows))
    if page is not None:
        page.write(rows)
    if not status_ok(rows):
        sys.exit(EXIT_FAILED)


@cli.command(
    epilog="Exit codes: 0 the file was written; 1 a host could not be read (nothing is written), "
    "or the spec or output path is unusable; 64 the command line is wrong."
)
@spec_argument
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="The targets file to write (replaced atomically), for Prometheus's file_sd_configs.",
)
@limit_option
@runs_pyinfra
def prometheus(spec: Path, output: Path, limit: tuple[str, ...]) -> None:
    """Write a Prometheus file_sd targets file: every service instance (and gateway) of SPEC.

    Each host's instances are read from the host (its GPUs decide them), over SSH;
    labels: job, host, group, instance, and gpu on NVIDIA hosts. Changes nothing on the hosts.
    """
    from sd35_provision.report import render_failures
    from sd35_provision.scrape_targets import (
        GATEWAY_JOB,
        check_output,
        fleet_targets,
        render_targets,
        unreachable_from_outside,
        write_targets,
    )

    fleet = _load(spec)
    check_output(output)  # before any host is asked
    targets, report = fleet_targets(fleet, limit, _options(False, quiet=True))
    if not report.ok:
        click.echo(render_failures(report), err=True)
        click.echo(f"{output} not written: every host must be read for a complete targets file", err=True)
        sys.exit(EXIT_FAILED)
    write_targets(output, render_targets(targets))
    for settings in fleet.hosts:
        unreachable = unreachable_from_outside(settings)
        if unreachable and any(target.labels.get("host") == settings.name for target in targets):
            click.echo(f"{settings.name}: {unreachable}: only a Prometheus on the host itself can scrape it", err=True)
    keys = sorted({str(target.api_key_file) for target in targets if target.api_key_file is not None})
    needs_key = f"; /metrics wants the bearer key in {', '.join(keys)} (authorization.credentials_file)" if keys else ""
    if any(target.labels["job"] == GATEWAY_JOB for target in targets):
        needs_key += f"; the gateways' /metrics want one of gateway.keys (job {GATEWAY_JOB})"
    click.echo(f"wrote {output}: {len(targets)} target(s){needs_key}")


def _size_option(ctx: click.Context, param: click.Parameter, value: str) -> str:
    width, _, height = value.partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise click.BadParameter(f"{value!r} is not WIDTHxHEIGHT (e.g. 512x512)")
    return value


@cli.command()
@spec_argument
@click.option("--prompt", required=True, help="What to draw.")
@click.option("--size", default="512x512", show_default=True, callback=_size_option, metavar="WxH")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Inference steps (default: the service's).")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Seed, for the same image again.")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("out.png"), show_default=True
)
@click.option("--host", "host_name", metavar="H", default=None, help="Ask host H's service (SSH tunnel if loopback).")
@click.option("--gateway", "via_gateway", is_flag=True, help="Ask through the gateway (the default with one).")
@click.option(
    "--key",
    "key_name",
    metavar="NAME",
    default=None,
    help="Which gateway.keys entry to send (default: the first); SD35_API_KEY in the environment wins.",
)
def generate(
    spec: Path,
    prompt: str,
    size: str,
    steps: int | None,
    seed: int | None,
    output: Path,
    host_name: str | None,
    via_gateway: bool,
    key_name: str | None,
) -> None:
    """One image through the gateway, or from one host's service; writes the PNG."""
    from sd35_provision import generate as generating

    if host_name and via_gateway:
        raise click.UsageError("--host and --gateway: choose one")
    fleet = _load(spec)
    if host_name is None and not via_gateway and fleet.gateway is None:
        raise click.UsageError("the spec has no gateway: name a host with --host H")
    target = (
        generating.host_target(fleet, host_name)
        if host_name is not None
        else generating.gateway_target(fleet, key_name)
    )
    result = generating.generate(target, generating.Request(prompt, size, steps, seed), output)
    click.echo(f"{result['output']}: {result['bytes']} bytes from {result['where']}")


@cli.command("import-ansible")
@click.argument("inventory", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the spec here (refused if it exists) instead of printing it.",
)
def import_ansible(inventory: Path, output: Path | None) -> None:
    """Turn an Ansible inventory (INI or YAML) into a host spec skeleton, keeping host and group names.

    ansible_host, ansible_port, ansible_user, ansible_ssh_private_key_file and
    ansible_become become each host's or group's address and ssh settings; the
    `all` group's become defaults. Check the model, gpu, cache and service
    settings before use.
    """
    from sd35_provision.ansible_import import read_inventory, spec_from_inventory

    text = spec_from_inventory(read_inventory(inventory))
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        with open(output, "x", encoding="utf-8") as written:
            written.write(text)
    except FileExistsError:
        raise click.UsageError(f"{output} exists; give a new file name") from None
    click.echo(f"wrote {output}; check it with: sd35-provision validate {output}", err=True)


@cli.command(epilog=EXIT_CODES_HELP)
@spec_argument
@click.option("--address", required=True, help="The box's address (IP or host name).")
@click.option("--name", required=True, help="Its name in the spec.")
@click.option("--user", default="root", show_default=True, help="Account for the first contact.")
@click.option(
    "--password-prompt",
    is_flag=True,
    help="First contact with USER's password, asked for here (never taken from the command line).",
)
@click.option(
    "--key", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="First contact with this private key."
)
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="SSH port (default: the spec's).")
@click.option("--group", "groups", multiple=True, metavar="G", help="Put the host in group G (repeatable).")
@click.option(
    "--deploy-user", default=None, help="Account sd35-provision logs in as from now on (default: the spec's ssh.user)."
)
@click.option(
    "--deploy-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Its private key (default: the spec's ssh.key, else --key); its .pub is authorized.",
)
@click.option("--sudo", is_flag=True, help="Give the deploy user passwordless sudo (and set ssh.sudo).")
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="SECTION.FIELD=VALUE",
    help="A setting of this host in the spec, e.g. --set service.bind=10.0.0.5 (repeatable).",
)
@click.option(
    "--accept-host-key",
    is_flag=True,
    help="Trust the host key shown (otherwise you are asked; without a terminal it is refused).",
)
@click.option("--skip-apply", is_flag=True, help="Stop after adding the host and gathering its facts.")
@runs_pyinfra
def onboard(
    spec: Path,
    address: str,
    name: str,
    user: str,
    password_prompt: bool,
    key: Path | None,
    port: int | None,
    groups: tuple[str, ...],
    deploy_user: str | None,
    deploy_key: Path | None,
    sudo: bool,
    settings: tuple[str, ...],
    accept_host_key: bool,
    skip_apply: bool,
) -> None:
    """Bring a fresh box into SPEC: host key, deploy account, spec entry, facts, apply to it only.

    Running it again for the same host changes nothing.
    """
    import getpass

    from sd35_provision.facts.table import facts_row, render_facts_table
    from sd35_provision.onboarding import OnboardRequest, settings_from
    from sd35_provision.onboarding import onboard as onboard_box
    from sd35_provision.report import render_failures, render_table

    if password_prompt == (key is not None):
        raise click.UsageError("give exactly one of --password-prompt and --key for the first contact")
    password = getpass.getpass(f"{user}@{address}'s password: ") if password_prompt else None

    def confirm(shown: str) -> bool:
        if accept_host_key:
            return True
        return sys.stdin.isatty() and click.confirm(f"Trust host key {shown} of {address}?", default=False)

    request = OnboardRequest(
        spec_path=spec,
        name=name,
        address=address,
        user=user,
        password=password,
        key=key,
        port=port,
        groups=groups,
        deploy_user=deploy_user,
        deploy_key=deploy_key,
        sudo=sudo,
        settings=settings_from(settings),
    )
    done = onboard_box(request, confirm, click.echo, apply=not skip_apply, options=_options(False))
    if done.facts is not None:
        click.echo(render_facts_table([facts_row(name, done.facts)]))
    if not done.facts_report.ok:
        click.echo(render_failures(done.facts_report), err=True)
        sys.exit(EXIT_FAILED)
    if done.apply_report is not None:
        click.echo(render_table(done.apply_report))
        if not done.apply_report.ok:
            click.echo("\n" + render_failures(done.apply_report), err=True)
        _exit_for(done.apply_report)


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--flavour",
    type=click.Choice(["cpu", "cu128", "cu130"]),
    default="cpu",
    show_default=True,
    help="Which shipped lock to download the wheels of.",
)
@click.option(
    "--lock-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Your own lock instead (python.lock_file).",
)
@click.option("--python", "python_version", default="3.11", show_default=True, help="The hosts' Python version (X.Y).")
def wheelhouse(directory: Path, flavour: str, lock_file: Path | None, python_version: str) -> None:
    """Download every wheel a lock needs into DIRECTORY, for python.wheelhouse (offline fleets)."""
    from sd35_provision.locks import load_lock, load_lock_file
    from sd35_provision.wheelhouse import fill_wheelhouse

    lock = load_lock_file(lock_file) if lock_file else load_lock(flavour)
    fill_wheelhouse(directory, lock, python_version)
    click.echo(f"{directory}: wheels of lock {lock.id} for Python {python_version}")


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path), required=False)
@limit_option
@click.option(
    "--release",
    "releases",
    multiple=True,
    metavar="CODENAME",
    help="A host OS release to download for (bookworm, noble...); repeatable. Without it: each SPEC host's.",
)
@click.option("--arch", default="amd64", show_default=True, help="The dpkg architecture, with --release.")
@click.option("--mirror", default=None, metavar="URL", help="Download from this mirror of the release's archive.")
@runs_pyinfra
def debs(
    directory: Path, spec: Path | None, limit: tuple[str, ...], releases: tuple[str, ...], arch: str, mirror: str | None
) -> None:
    """Download the .deb files the layers install (git, git-lfs, python3-venv) with every dependency.

    Into DIRECTORY/<release>-<arch>/, for each host's OS release read from SPEC (or each
    --release), with the index of a flat apt repository: set system.apt_bundle: DIRECTORY
    and hosts without a mirror install from it.
    """
    from sd35_provision import workflow
    from sd35_provision.aptbundle import download_bundle
    from sd35_provision.report import render_failures

    if (spec is None) == (not releases):
        raise click.UsageError("give SPEC (each host's release is read) or --release, not both")
    if releases:
        wanted = {(release, arch) for release in releases}
    else:
        assert spec is not None
        found, report = workflow.apt_releases(_load(spec), limit, _options(False, quiet=True))
        if not report.ok:
            click.echo(render_failures(report), err=True)
            sys.exit(EXIT_FAILED)
        for name, (release, host_arch) in found.items():
            click.echo(f"{name}: {release}-{host_arch}", err=True)
        wanted = set(found.values())
    for release, release_arch in sorted(wanted):
        download_bundle(directory, release, release_arch, mirror=mirror, progress=_progress)
    click.echo(f"{directory}: set system.apt_bundle: {directory} in the spec")


@cli.command()
@click.option("--hosts", default=2, show_default=True, type=click.IntRange(1, 20))
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Test fleet state directory (default: the testfleet default).",
)
@runs_pyinfra
def demo(hosts: int, state_dir: Path | None) -> None:
    """End to end on a local test fleet with the tiny model: validate, plan, apply, re-apply."""
    from sd35_provision.demo import run_demo
    from sd35_provision.testfleet import default_state_dir

    run_demo(hosts, state_dir or default_state_dir(), click.echo)


def _say_where_hosts_were() -> None:
    """After Ctrl-C: each host of the interrupted runs and how far it got."""
    from sd35_provision.interrupted import host_states

    for line in host_states(_runs):
        click.echo(line, err=True)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="sd35-provision")


if __name__ == "__main__":
    main()
