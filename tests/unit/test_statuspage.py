"""``status --html``: the smoke-image fact (its shell command run for real, its parser on recorded output)
and the page rendered from recorded status rows, loaded in headless Chromium."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from sd35_provision.facts.smoke_image import SmokeImage, parse_smoke_image
from sd35_provision.status import HostStatus
from sd35_provision.statuspage import render_status_page, write_status_page
from tests.browser import Browser, find_chromium

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("SD35_TEST_ARTIFACTS", REPO / "test-artifacts"))
RELEASE = "3f9c0a1b2c4d-8e7f6a5b4c3d"


def png(width: int, height: int, color: tuple[int, int, int] = (40, 90, 160)) -> bytes:
    image = Image.new("RGB", (width, height), color)
    for x in range(0, width, 8):  # not blank: a few stripes
        for y in range(height):
            image.putpixel((x, y), (250, 200, 40))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def recorded_rows() -> list[HostStatus]:
    """The rows of a mixed fleet as status read them: applied, drifted, unreachable, fresh, failing smoke."""
    smoke_ok = {"ok": True, "latency_s": 3.4, "width": 512, "height": 512, "reason": "ok", "at": "2026-11-30T11:58:02Z"}
    return [
        HostStatus(
            "node1",
            "10.0.0.1",
            True,
            "Debian 12",
            "NVIDIA H200",
            "575.57.08",
            True,
            "active",
            "ready",
            RELEASE,
            "a" * 40,
            smoke_ok,
            False,
        ),
        HostStatus(
            "node2",
            "10.0.0.2",
            True,
            "Debian 12",
            "NVIDIA H200",
            "575.57.08",
            True,
            "inactive",
            None,
            RELEASE,
            "a" * 40,
            smoke_ok,
            True,
            ["Service | sd35-inference.service enabled and running"],
        ),
        HostStatus("node3", "10.0.0.3", False, error="connect: timed out <after 10 s>"),
        HostStatus(
            "node4",
            "10.0.0.4",
            True,
            "Ubuntu 24.04",
            "none",
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            True,
            ["System | sd35 service user", "Python environment | venv"],
        ),
        HostStatus(
            "node5",
            "10.0.0.5",
            True,
            "Debian 12",
            "NVIDIA L40S",
            "570.172.08",
            True,
            "active",
            "ready",
            RELEASE,
            "a" * 40,
            {**smoke_ok, "ok": False, "reason": "the image is blank"},
            False,
        ),
    ]


def release(tmp_path: Path) -> Path:
    """A release as the hosts have it: ``app/`` holding sd35_provision (this checkout's), ``venv/`` with Pillow."""
    current = tmp_path / "current"
    (current / "app").mkdir(parents=True)
    (current / "app" / "sd35_provision").symlink_to(REPO / "sd35_provision")
    (current / "venv").symlink_to(Path(sys.prefix))
    return current


def test_fact_command_sends_a_thumbnail_made_on_the_host(tmp_path: Path) -> None:
    image = tmp_path / "smoke" / "last.png"
    image.parent.mkdir()
    image.write_bytes(png(512, 384))
    command = SmokeImage().command(path=str(image), current=str(release(tmp_path)))
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
    thumbnail = parse_smoke_image(result.stdout.splitlines())
    assert thumbnail is not None
    assert Image.open(io.BytesIO(thumbnail)).size == (256, 192)


def test_fact_command_without_a_release_sends_the_file_up_to_a_limit(tmp_path: Path) -> None:
    image = tmp_path / "last.png"
    image.write_bytes(png(64, 64))
    none = str(tmp_path / "no-release")
    raw = subprocess.run(
        ["sh", "-c", SmokeImage().command(path=str(image), current=none)], capture_output=True, text=True, check=True
    )
    assert parse_smoke_image(raw.stdout.splitlines()) == image.read_bytes()
    too_big = subprocess.run(
        ["sh", "-c", SmokeImage().command(path=str(image), current=none, max_bytes=100)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert too_big.stdout == "" and parse_smoke_image(too_big.stdout.splitlines()) is None
    missing = subprocess.run(
        ["sh", "-c", SmokeImage().command(path=str(tmp_path / "none.png"), current=str(release(tmp_path)))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 0 and missing.stdout == ""


def test_fact_command_quotes_the_paths() -> None:
    command = SmokeImage().command(path="/srv/sd 35/smoke/last.png", current="/opt/sd 35/current")
    assert "'/srv/sd 35/smoke/last.png'" in command
    assert (
        "cd '/opt/sd 35/current/app' && '/opt/sd 35/current/venv/bin/python' -m sd35_provision.service.thumbnail"
        in command
    )


@pytest.mark.parametrize("output", [[], [""], ["not base64 at all!"], [base64.b64encode(b"GIF89a...").decode()]])
def test_parser_gives_none_for_anything_but_a_png(output: list[str]) -> None:
    assert parse_smoke_image(output) is None


def test_page_is_self_contained_and_escapes_what_hosts_say() -> None:
    rows = recorded_rows()
    page = render_status_page(rows, {"node1": png(64, 64), "node2": png(64, 64)}, "sd35 fleet status: prod.yaml", 0)
    assert page.count('<tr class="host"') == 5
    assert page.count('src="data:image/png;base64,') == 2
    assert "timed out &lt;after 10 s&gt;" in page and "<after" not in page
    assert "http://" not in page and "https://" not in page and "<link" not in page and "<script" not in page
    assert "would change: System | sd35 service user; Python environment | venv" in page
    assert "smoke: the image is blank" in page
    assert "1970-01-01 00:00:00 UTC" in page and "5 hosts" in page and "4 reachable" in page
    assert "2 drifted" in page and "2 failing" in page


def test_page_renders_in_headless_chromium(tmp_path: Path) -> None:
    executable = find_chromium()
    if executable is None:
        pytest.skip("no chromium: scripts/bootstrap.sh installs Debian's chromium package")
    page = tmp_path / "status.html"
    images = {"node1": png(256, 256), "node2": png(256, 256, (120, 60, 140)), "node5": png(256, 256, (250, 250, 250))}
    write_status_page(page, recorded_rows(), images, Path("inventory/prod.yaml"))
    browser = Browser(executable, width=1500, height=700)
    try:
        browser.goto(page.as_uri())
        assert browser.evaluate("document.querySelectorAll('tr.host').length") == 5
        names = browser.evaluate("[...document.querySelectorAll('tr.host td:first-child')].map(c => c.textContent)")
        assert names == ["node1", "node2", "node3", "node4", "node5"]
        # Every image decoded (a data: URI that does not decode has naturalWidth 0).
        browser.wait_for("[...document.images].every(i => i.complete)")
        assert browser.evaluate("[...document.images].map(i => i.naturalWidth)") == [256, 256, 256]
        # Drift in colour: amber where apply would change something, green where not.
        colours = browser.evaluate(
            "[...document.querySelectorAll('tr.host')].map(r => getComputedStyle(r.children[10]).backgroundColor)"
        )
        assert colours[0] == "rgb(223, 243, 227)" and colours[1] == colours[3] == "rgb(255, 232, 179)"
        reachable = browser.evaluate(
            "getComputedStyle(document.querySelector('#host-node3 td:nth-child(2)')).backgroundColor"
        )
        assert reachable == "rgb(251, 213, 210)"
        # Nothing was fetched from the network to show it.
        resources = browser.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
        assert resources == []
        browser.screenshot(ARTIFACTS / "status.png")
    finally:
        browser.close()


def test_status_html_to_a_missing_directory_fails_before_any_host_is_asked(tmp_path: Path) -> None:
    repo = REPO
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sd35_provision.cli",
            "status",
            str(repo / "inventory" / "example.yaml"),
            "--html",
            str(tmp_path / "gone" / "s.html"),
        ],
        capture_output=True,
        text=True,
        cwd=repo,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert f"status --html {tmp_path / 'gone' / 's.html'}: {tmp_path / 'gone'} is not a directory" in result.stderr
    assert result.stdout == ""  # no table: no host was asked


def test_a_gateway_is_green_only_with_haproxy_active_and_every_server_up() -> None:
    from sd35_provision.facts.gateway import HaproxyState

    def service_cell(state: HaproxyState) -> str:
        row = HostStatus("lb1", "10.0.0.9", True, gateway=state, service_active=state.active)
        page = render_status_page([row], {}, "t", 0)
        return page.split('id="host-lb1">', 1)[1].split("</td>")[6]

    assert service_cell(HaproxyState("active", 4, 4)) == '<td class="good">haproxy active 4/4 up'
    assert service_cell(HaproxyState("active", 4, 3, ("gpu2:1 DRAIN",))) == '<td class="bad">haproxy active 3/4 up'
    assert service_cell(HaproxyState("inactive", None, None)) == '<td class="bad">haproxy inactive'
