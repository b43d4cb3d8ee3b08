"""The last smoke test's image on a host, as a small PNG (for ``status --html``).

The host scales it down itself, with ``sd35_provision.service.thumbnail`` from
its current release (whose venv has Pillow), so a fleet's page stays small
whatever ``smoke.size`` is; a release without that module sends the file as it
is, up to ``max_bytes``. Either way it comes back as one base64 line on the
fact's connection; ``parse_smoke_image`` is pure.
"""

from __future__ import annotations

import base64
import binascii
import shlex

from pyinfra.api import FactBase

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
THUMBNAIL_PIXELS = 256
MAX_BYTES = 4 * 1024 * 1024


class SmokeImage(FactBase):
    """The PNG bytes of ``path`` (a thumbnail made by the release in ``current``), or None when there is none."""

    def command(self, path: str, current: str, size: int = THUMBNAIL_PIXELS, max_bytes: int = MAX_BYTES) -> str:
        image = shlex.quote(path)
        thumbnail = (
            f"cd {shlex.quote(current + '/app')} && {shlex.quote(current + '/venv/bin/python')} "
            f"-m sd35_provision.service.thumbnail {image} {int(size)}"
        )
        return (
            f"if [ -f {image} ]; then "
            f"( {thumbnail} ) 2>/dev/null || "
            f'{{ [ "$(stat -c %s {image})" -le {int(max_bytes)} ] && base64 -w0 {image}; }}; '
            "fi; true"
        )

    def process(self, output: list[str]) -> bytes | None:
        return parse_smoke_image(output)


def parse_smoke_image(output: list[str]) -> bytes | None:
    """The PNG the command printed; None for no output or anything that is not a PNG."""
    text = "".join(line.strip() for line in output)
    if not text:
        return None
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if data.startswith(PNG_SIGNATURE) else None
