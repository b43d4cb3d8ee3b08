"""``status --html``: the fleet's status as one self-contained page, to paste into a ticket.

The status table (the same columns as the terminal's), each host's last smoke
image as a thumbnail, drift and failures in colour, and each host's drifted
operations and error. CSS is inline and images are ``data:`` URIs: the file
loads nothing from anywhere. The thumbnails are read by ``StatusPage.read_host``
over the connection ``status`` already holds to each host.
"""

from __future__ import annotations

import base64
import html
import os
import tempfile
import threading
import time
from pathlib import Path

from pyinfra.api.host import Host

from sd35_provision import layout
from sd35_provision.errors import Sd35Error
from sd35_provision.facts.smoke_image import SmokeImage
from sd35_provision.hostspec.settings import HostSettings
from sd35_provision.reboots import required_note
from sd35_provision.status import HEADER, HostStatus

STYLE = """
body { font-family: system-ui, sans-serif; color: #1d232a; margin: 1.5rem; }
h1 { font-size: 1.3rem; margin: 0 0 0.2rem; }
.when { color: #56616d; margin: 0 0 1rem; font-size: 0.9rem; }
.summary span { display: inline-block; margin-right: 1.2rem; font-weight: 600; }
table { border-collapse: collapse; margin-top: 1rem; font-size: 0.85rem; }
th, td { border: 1px solid #cfd5dc; padding: 0.3rem 0.5rem; text-align: left; vertical-align: middle; }
th { background: #22303f; color: #fff; font-weight: 600; }
td.good { background: #dff3e3 !important; color: #1b5e20; }
td.drift { background: #ffe8b3 !important; color: #7a4b00; font-weight: 600; }
td.bad { background: #fbd5d2 !important; color: #9b1c1c; font-weight: 600; }
td.unknown { background: #eceff3 !important; color: #56616d; }
td.image img { display: block; width: 96px; height: auto; image-rendering: auto; }
td.image .none { color: #8a949f; }
tr.detail td { border-top: 0; font-size: 0.8rem; color: #4a5561; background: #fff; }
"""


class StatusPage:
    """One ``status --html`` page: checks where it goes before any host is asked, collects the smoke
    images through status's per-host hook (``read_host``, run in parallel), then ``write``s the page."""

    def __init__(self, path: Path, spec: Path):
        self.path, self.spec = Path(path), Path(spec)
        self.images: dict[str, bytes] = {}
        self._lock = threading.Lock()
        directory = self.path.parent
        if not directory.is_dir() or not os.access(directory, os.W_OK):
            raise Sd35Error(f"status --html {self.path}: {directory} is not a directory this user can write to")

    def read_host(self, host: Host, settings: HostSettings) -> None:
        image = host.get_fact(
            SmokeImage,
            path=layout.smoke_image(settings.cache.root),
            current=layout.current_link(settings.python.install_root),
        )
        if image:
            with self._lock:
                self.images[host.name] = image

    def write(self, rows: list[HostStatus]) -> None:
        write_status_page(self.path, rows, self.images, self.spec)


def _cell_class(column: str, value: str, row: HostStatus) -> str:
    """How a cell is coloured: drift amber, failures red, healthy green, unknown grey."""
    if not row.reachable:
        return "bad" if column == "REACHABLE" else ""
    if column == "DRIFT":
        return {"yes": "drift", "no": "good"}.get(value, "unknown")
    if column == "SERVICE":
        if value == "-":
            return "unknown"
        if row.gateway is not None:  # haproxy active, every server up
            gateway = row.gateway
            return "good" if gateway.active == "active" and gateway.servers and not gateway.not_up else "bad"
        return "good" if value == "active/ready" else "bad"
    if column == "LAST SMOKE":
        return "unknown" if value == "-" else ("good" if value.startswith("ok") else "bad")
    if column == "REACHABLE":
        return "good"
    return ""


def _image_cell(name: str, image: bytes | None, row: HostStatus) -> str:
    if image is None:
        return '<td class="image"><span class="none">no image</span></td>'
    when = (row.smoke or {}).get("at", "")
    title = f' title="{html.escape(f"last smoke test {when}")}"' if when else ""
    data = base64.b64encode(image).decode("ascii")
    return (
        f'<td class="image"><img src="data:image/png;base64,{data}" '
        f'alt="{html.escape(f"last smoke image of {name}")}"{title}></td>'
    )


def render_status_page(rows: list[HostStatus], images: dict[str, bytes], title: str, generated_at: float) -> str:
    """The page's HTML, from status's rows and the hosts' smoke images."""
    e = html.escape
    reachable = sum(row.reachable for row in rows)
    drifted = sum(bool(row.drift) for row in rows)
    failing = sum(bool(row.error) or (row.smoke is not None and not row.smoke.get("ok")) for row in rows)
    head = "".join(f"<th>{e(column)}</th>" for column in HEADER) + "<th>SMOKE IMAGE</th>"
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{_cell_class(column, value, row)}">{e(value)}</td>'
            for column, value in zip(HEADER, row.row(), strict=False)
        )
        image = _image_cell(row.name, images.get(row.name), row)
        body.append(f'<tr class="host" id="host-{e(row.name)}">{cells}{image}</tr>')
        notes = []
        if row.drift_operations:
            notes.append("would change: " + "; ".join(row.drift_operations))
        if row.smoke and not row.smoke.get("ok") and row.smoke.get("reason"):
            notes.append(f"smoke: {row.smoke['reason']}")
        if row.smoke_stale:
            notes.append(f"stale smoke result: {row.smoke_stale}")
        if row.error:
            notes.append(row.error)
        if row.reboot_required:
            notes.append(required_note(row.reboot_required))
        if notes:
            detail = "<br>".join(e(note) for note in notes)
            body.append(f'<tr class="detail"><td colspan="{len(HEADER) + 1}">{detail}</td></tr>')
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(generated_at))
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{e(title)}</title>",
            f"<style>{STYLE}</style></head><body>",
            f"<h1>{e(title)}</h1>",
            f'<p class="when">{e(stamp)}</p>',
            (
                f'<p class="summary"><span>{len(rows)} hosts</span><span>{reachable} reachable</span>'
                f"<span>{drifted} drifted</span><span>{failing} failing</span></p>"
            ),
            f"<table><thead><tr>{head}</tr></thead><tbody>",
            *body,
            "</tbody></table></body></html>",
            "",
        ]
    )


def write_status_page(path: Path, rows: list[HostStatus], images: dict[str, bytes], spec: Path) -> None:
    """Write the page (atomically: a reader never sees half a page)."""
    page = render_status_page(rows, images, f"sd35 fleet status: {spec.name}", time.time())
    path = Path(path)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(page)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
