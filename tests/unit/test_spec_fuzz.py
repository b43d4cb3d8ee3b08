"""Whatever a spec file holds, loading it gives settings or SpecError lines naming FILE:LINE, never a traceback."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sd35_provision.errors import SpecError
from sd35_provision.hostspec import load_spec
from sd35_provision.hostspec.settings import SECTIONS

SETTING_NAMES = {
    "ssh": ["user", "port", "key", "known_hosts", "sudo", "connect_timeout"],
    "gpu": ["accelerator", "require_fp8", "driver"],
    "cache": ["root", "require_ssd", "min_free_gb"],
    "python": ["min_version", "torch_flavour", "wheelhouse", "install_root", "lock_file", "find_links"],
    "model": ["source", "repo", "revision", "endpoint", "token_file", "url", "path"],
    "service": ["user", "bind", "port", "api_key_file", "precision", "queue_size", "max_side", "max_steps"],
    "smoke": ["enabled", "size", "steps", "prompt", "timeout_s"],
    "system": ["apt_bundle"],
}
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(["/", "/srv/x", "/etc", "../x", "10.0.0.1", "::1", "64x64", "$(id)", "-x", "a/b", "~", "0777"]),
)
# Values of the right type and form, so that a spec gets past the schema to the rules behind it.
FITTING = {
    ("ssh", "port"): [22, 2222, 65535],
    ("ssh", "user"): ["root", "deploy"],
    ("ssh", "sudo"): [True, False],
    ("gpu", "accelerator"): ["cpu", "nvidia"],
    ("cache", "root"): ["/srv/sd35", "/", "/var", "/etc/x", "/srv/../etc", "/srv/x/", "/srv//x", "/srv/a@b+c"],
    ("cache", "min_free_gb"): [0, 1.5, 10**6],
    ("python", "install_root"): ["/opt/sd35", "/usr", "/opt", "/proc/x", "/opt/sd35/."],
    ("python", "torch_flavour"): ["cpu", "auto"],
    ("python", "find_links"): ["https://mirror/x", "file:///w"],
    ("model", "source"): ["hf", "git", "push"],
    ("model", "repo"): ["a/b", "a/..", "-a/b", "a./b", "a/b.-"],
    ("model", "revision"): ["abcdef0", "0123456789abcdef0123456789abcdef01234567"],
    ("model", "url"): ["https://h/r.git", "-u", "git@h:r.git", "ext::sh", "/srv/r.git", "file:///a b"],
    ("model", "path"): ["weights", "."],
    ("model", "token_file"): ["token", "."],
    ("service", "bind"): ["127.0.0.1", "0.0.0.0", "::", "10.1.1.1", "localhost", "h.example", "bad_host!"],
    ("service", "port"): [8000, 1, 65535],
    ("service", "api_key_file"): ["key", "short", ".", "missing"],
    ("service", "max_steps"): [1, 28, 60, 500],
    ("service", "max_side"): [64, 4096],
    ("service", "queue_size"): [1, 256],
    ("smoke", "size"): ["64x64", "1x1", "4096x16", "99999999999999999999x16"],
    ("smoke", "steps"): [1, 28, 100],
    ("smoke", "prompt"): ["a cat", "a" * 4001, "tab\there", "bell\x07"],
    ("smoke", "enabled"): [True, False],
    ("service", "precision"): ["auto", "fp8-dynamic", "fp8"],
    ("system", "apt_bundle"): ["debs", ".", "missing", "token"],
}
# Values a careless operator writes: right type, wrong range or form, and near misses.
plausible = st.one_of(
    st.integers(-1, 70000),
    st.sampled_from([0.5, 22.0, 8000.0, float("inf"), float("nan"), True, "22", "8000"]),
    st.sampled_from(
        [
            "/srv/sd35",
            "/srv/sd35/",
            "/mnt/nvme0/cache",
            "/",
            "/var",
            "/etc/sd35",
            "/srv/../etc",
            "/srv/$(id)",
            "/srv/a b",
            "relative/dir",
            "stabilityai/sd",
            "a/..",
            "-oProxyCommand=x",
            "https://example.com/r.git",
            "git@host:r.git",
            "0.0.0.0",
            "::",
            "localhost",
            "cpu",
            "nvidia",
            "hf",
            "git",
            "push",
            "fp32",
            "auto",
            "64x64",
            "512x512",
            "100x64",
            "a" * 5000,
            "0123456789" * 4,
            "abcdef0",
            "3.11",
            "570",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=6) | scalars.filter(lambda v: v is not None), inner, max_size=3)
    ),
    max_leaves=8,
)


def valid_spec() -> dict:
    return {
        "defaults": {
            "model": {"source": "git", "url": "file:///srv/mirror/tiny.git", "revision": "abcdef0"},
            "smoke": {"size": "64x64"},
        },
        "groups": {"g": {"ssh": {"port": 2222}}},
        "hosts": {"a": {"address": "10.0.0.1", "groups": ["g"]}, "b": {"address": "10.0.0.1"}},
    }


@st.composite
def specs(draw: st.DrawFn) -> dict:
    """A valid spec with a few settings, host entries or names replaced by hostile values."""
    spec = valid_spec()
    for _ in range(draw(st.sampled_from([1, 1, 2, 3]))):
        where = draw(st.sampled_from([("defaults",), ("groups", "g"), ("hosts", "a"), ("hosts", "b")]))
        target = spec
        for part in where:
            target = target[part]
        kind = draw(st.sampled_from(["setting"] * 8 + ["section", "entry", "host"]))
        if kind == "setting":
            section = draw(st.sampled_from(SECTIONS))
            key = draw(st.sampled_from(SETTING_NAMES[section]))
            section_value = target.setdefault(section, {})
            if isinstance(section_value, dict):
                good = st.sampled_from(FITTING.get((section, key), [None]))
                section_value[key] = draw(st.one_of(good, good, good, plausible, values))
        elif kind == "section":
            target[draw(st.sampled_from(SECTIONS))] = draw(values)
        elif kind == "entry":
            target[draw(st.sampled_from(["address", "groups", "description"]) | st.text(max_size=6))] = draw(values)
        else:
            spec["hosts"][draw(st.text(max_size=8) | scalars.filter(lambda v: v is not None))] = draw(
                st.just({"address": "10.0.0.2"}) | values
            )
    return spec


# YAML's punctuation and a few words, so random text is often nearly a spec.
TOKENS = [
    *"ab1:-[]{}&*!?|>'\"#%@`,\n \t.~<=\\\u00e9\x07",
    "hosts:",
    "\n  a:",
    " address: 10.0.0.1",
    "!!",
    "&x",
    "*x",
    "<<: ",
    "0x1F",
    "1e3",
    ".inf",
    "\\u",
    "\\ud800",
    "\\0",
    "---",
    "...",
    "%YAML 1.1",
    "!!python/name:os.system",
]
LINE = re.compile(r"^.+?:\d+: ")


def load(text: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "key").write_text("k" * 20 + "\n")
        (Path(directory) / "short").write_text("k\n")
        (Path(directory) / "token").write_text("hf_x\n")
        (Path(directory) / "weights").mkdir()
        path = Path(directory) / "fleet.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_spec(path)
        except SpecError as error:
            assert error.problems and all(
                LINE.match(problem) or problem.startswith(f"{path}:") for problem in error.problems
            ), error.problems


BOUNDED = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@BOUNDED
@given(spec=specs())
def test_any_structure_loads_or_is_refused_by_line(spec: dict) -> None:
    load(yaml.safe_dump(spec, allow_unicode=False))


@settings(BOUNDED, max_examples=200)
@given(text=st.lists(st.sampled_from(TOKENS), max_size=40).map("".join))
def test_any_text_loads_or_is_refused_by_line(text: str) -> None:
    load(text)
