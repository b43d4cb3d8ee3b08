"""``python -m sd35_provision.service.thumbnail IMAGE [SIDE]``: IMAGE scaled to fit SIDE pixels, as base64 PNG.

``status --html`` runs it on each host from the current release (its venv has
Pillow), so the fleet page carries small thumbnails instead of full smoke
images; one line of base64 on stdout, nothing else.
"""

from __future__ import annotations

import base64
import io
import sys

DEFAULT_SIDE = 256


def thumbnail_png(path: str, side: int = DEFAULT_SIDE) -> bytes:
    from PIL import Image

    with Image.open(path) as image:
        image.thumbnail((side, side))
        out = io.BytesIO()
        image.save(out, format="PNG")
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2 or (len(args) == 2 and not args[1].isdigit()):
        print("usage: python -m sd35_provision.service.thumbnail IMAGE [SIDE]", file=sys.stderr)
        return 64
    side = int(args[1]) if len(args) == 2 else DEFAULT_SIDE
    sys.stdout.write(base64.b64encode(thumbnail_png(args[0], side)).decode("ascii"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
