"""Hostile and careless specs: every one refused with the FILE:LINE it names, quickly, without a traceback.

The corpus is tests/specs/hostile/: one spec per case, its header saying what
must be reported, one ``# expect: LINE: fragment`` per problem. A case passes
when the problems are exactly those, each at its line.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sd35_provision.errors import SpecError
from sd35_provision.hostspec import load_spec
from sd35_provision.hostspec.yamlsource import MAX_FILE_BYTES
from sd35_provision.layout import render_env_file

CORPUS = Path(__file__).resolve().parents[1] / "specs" / "hostile"
CASES = sorted(CORPUS.glob("*.yaml"))
_EXPECT = re.compile(r"^# expect: (\d+): (.+)$")
# The parser's bounds must make even the bombs cheap; generous for a loaded 2-core machine.
SECONDS_PER_CASE = 3.0


def expectations(case: Path) -> list[tuple[int, str]]:
    header = case.read_bytes().decode("ascii", errors="replace").splitlines()
    found = [_EXPECT.match(line) for line in header if line.startswith("# expect:")]
    assert found and all(found), f"{case.name}: no well-formed '# expect: LINE: fragment' header"
    return [(int(m[1]), m[2].replace("{dir}", str(CORPUS))) for m in found if m]


def test_the_corpus_covers_the_cases_of_the_issue() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[case.stem for case in CASES])
def test_hostile_spec_is_refused_at_its_line(case: Path) -> None:
    expected = expectations(case)
    begin = time.monotonic()
    with pytest.raises(SpecError) as caught:
        load_spec(case)
    assert time.monotonic() - begin < SECONDS_PER_CASE
    problems = caught.value.problems
    assert len(problems) == len(expected), problems
    for line, fragment in expected:
        prefix = f"{case}:{line}: "
        assert any(p.startswith(prefix) and fragment in p for p in problems), (prefix + fragment, problems)


@pytest.mark.parametrize(
    "name", ["alias-bomb", "deep-nesting", "host-name-integer", "python-object-tag", "invalid-utf8", "cache-root-shell"]
)
def test_validate_prints_file_line_and_exits_1_without_a_traceback(name: str) -> None:
    case = CORPUS / f"{name}.yaml"
    [(line, fragment)] = expectations(case)
    result = subprocess.run(
        [sys.executable, "-m", "sd35_provision.cli", "validate", str(case)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"{case}:{line}: ") and fragment in first, result.stderr


def test_a_spec_larger_than_the_limit_is_refused_before_parsing(tmp_path: Path) -> None:
    spec = tmp_path / "huge.yaml"
    spec.write_text("hosts:\n  a: {address: 10.0.0.1}\n" + "# padding\n" * (MAX_FILE_BYTES // 10))
    with pytest.raises(SpecError) as caught:
        load_spec(spec, check_local_files=False)
    assert caught.value.problems == [
        f"{spec}:1: (top level): the file is larger than {MAX_FILE_BYTES} bytes; a host spec is a few kilobytes"
    ]


DEFAULTS = """\
defaults:
  model: {source: git, url: 'file:///srv/mirror/tiny.git', revision: 0123456789abcdef0123456789abcdef01234567}
"""


def test_two_hosts_on_one_address_with_ports_from_a_group_are_valid(tmp_path: Path) -> None:
    spec = tmp_path / "fleet.yaml"
    spec.write_text(
        DEFAULTS
        + textwrap.dedent("""\
        groups:
          alt-port:
            ssh: {port: 2222}
        hosts:
          a: {address: 10.0.0.11}
          b: {address: 10.0.0.11, groups: [alt-port]}
        """)
    )
    fleet = load_spec(spec)
    assert [(host.address, host.ssh.port) for host in fleet.hosts] == [("10.0.0.11", 22), ("10.0.0.11", 2222)]


def test_plain_paths_and_long_keys_pass(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("k" * 16 + "\n")
    spec = tmp_path / "fleet.yaml"
    spec.write_text(
        DEFAULTS
        + textwrap.dedent("""\
          cache: {root: /mnt/nvme0/sd35-cache}
          python: {install_root: /opt/sd35.v2}
          service: {bind: 0.0.0.0, api_key_file: key, max_steps: 28}
          smoke: {steps: 28, prompt: "a cat,\\nin two lines"}
        hosts:
          a: {address: '::ffff:10.0.0.12'}
          b: {address: 10.0.0.12, ssh: {port: 2200}}
        """)
    )
    host = load_spec(spec).host("a")
    assert (host.cache.root, host.python.install_root) == ("/mnt/nvme0/sd35-cache", "/opt/sd35.v2")


def test_the_env_file_a_shell_sources_never_runs_a_value(tmp_path: Path) -> None:
    """Even with a cache root that slipped past validation, sourcing /etc/sd35/env runs nothing."""
    from sd35_provision.hostspec.settings import CacheSettings, HostSettings

    marker = tmp_path / "ran"
    root = f"/srv/$(touch {marker})`touch {marker}`;touch {marker} 'x'"
    env_file = tmp_path / "env"
    settings = HostSettings(name="a", address="10.0.0.1", cache=CacheSettings(root=root))
    env_file.write_text(render_env_file(settings.cache))
    # What /etc/profile.d/sd35.sh does.
    shown = subprocess.run(
        ["sh", "-c", 'set -a; . "$1"; set +a; printf %s "$HF_HOME"', "sh", str(env_file)],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == f"{root}/huggingface"
    assert not marker.exists()


def test_plain_env_file_values_stay_unquoted() -> None:
    """Quoting changes nothing for the paths validation allows, so hosts see no drift in /etc/sd35/env."""
    from sd35_provision.hostspec.settings import HostSettings

    text = render_env_file(HostSettings(name="a", address="10.0.0.1").cache)
    assert "HF_HOME=/var/lib/sd35/huggingface\n" in text and "'" not in text
