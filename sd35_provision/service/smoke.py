"""Smoke test of a running service, stdlib only (it runs on the host with any python3).

``python -m sd35_provision.service.smoke --url http://127.0.0.1:8000 --size 64x64 --steps 2 --timeout 300``

Waits for /readyz, asks for one image, and checks that it is a PNG of the
asked size whose pixels are not all the same. The API key, when the service
needs one, is read from a file (``--api-key-file`` or ``SD35_API_KEY_FILE``),
never from argv. Prints one JSON line ``{ok, latency_s, width, height, reason}``
and exits 0 when ok, 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import struct
import sys
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Bytes per pixel of the 8-bit colour types we can decode: grey, RGB, grey+alpha, RGBA.
BYTES_PER_PIXEL = {0: 1, 2: 3, 4: 2, 6: 4}
READY_POLL_S = 2.0


class SmokeFailure(Exception):
    """The check failed; the message is the one-line reason."""


@dataclass
class SmokeResult:
    ok: bool
    latency_s: float | None
    width: int | None
    height: int | None
    reason: str
    release: str | None = None  # the release the answering service runs (its /readyz ``running``)


@dataclass(frozen=True)
class PngHeader:
    width: int
    height: int
    bit_depth: int
    color_type: int
    interlace: int


def _chunks(data: bytes):
    """(type, payload) for each chunk, checking lengths and CRCs."""
    if not data.startswith(PNG_SIGNATURE):
        raise SmokeFailure("not a PNG (bad signature)")
    pos = len(PNG_SIGNATURE)
    while pos < len(data):
        if pos + 8 > len(data):
            raise SmokeFailure("PNG truncated in a chunk header")
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            raise SmokeFailure(f"PNG truncated in chunk {kind!r}")
        payload = data[pos + 8 : end]
        (crc,) = struct.unpack(">I", data[end : end + 4])
        if zlib.crc32(kind + payload) & 0xFFFFFFFF != crc:
            raise SmokeFailure(f"PNG chunk {kind!r} has a bad CRC")
        yield kind, payload
        if kind == b"IEND":
            return
        pos = end + 4
    raise SmokeFailure("PNG has no IEND chunk")


def read_png_header(data: bytes) -> PngHeader:
    """The IHDR fields of a PNG; SmokeFailure when it is not one."""
    kind, payload = next(_chunks(data))
    if kind != b"IHDR" or len(payload) != 13:
        raise SmokeFailure("PNG does not start with a valid IHDR chunk")
    width, height, bit_depth, color_type, _compression, _filter, interlace = struct.unpack(">IIBBBBB", payload)
    if width == 0 or height == 0:
        raise SmokeFailure(f"PNG has an empty size {width}x{height}")
    return PngHeader(width, height, bit_depth, color_type, interlace)


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def decode_png_pixels(data: bytes) -> tuple[PngHeader, bytes]:
    """Decode an 8-bit, non-interlaced grey/RGB/RGBA PNG to its raw pixel bytes (rows concatenated)."""
    header = read_png_header(data)
    if header.bit_depth != 8 or header.color_type not in BYTES_PER_PIXEL or header.interlace != 0:
        raise SmokeFailure(
            f"PNG format not checked here (bit depth {header.bit_depth}, colour type {header.color_type}, "
            f"interlace {header.interlace}); the service writes 8-bit RGB"
        )
    compressed = b"".join(payload for kind, payload in _chunks(data) if kind == b"IDAT")
    try:
        filtered = zlib.decompress(compressed)
    except zlib.error as exc:
        raise SmokeFailure(f"PNG image data does not decompress: {exc}") from None
    bpp = BYTES_PER_PIXEL[header.color_type]
    stride = header.width * bpp
    if len(filtered) != header.height * (stride + 1):
        raise SmokeFailure(f"PNG image data is {len(filtered)} bytes, expected {header.height * (stride + 1)}")

    pixels = bytearray()
    previous = bytearray(stride)
    for y in range(header.height):
        start = y * (stride + 1)
        filter_type = filtered[start]
        row = bytearray(filtered[start + 1 : start + 1 + stride])
        if filter_type == 1:  # Sub
            for i in range(bpp, stride):
                row[i] = (row[i] + row[i - bpp]) & 0xFF
        elif filter_type == 2:  # Up
            for i in range(stride):
                row[i] = (row[i] + previous[i]) & 0xFF
        elif filter_type == 3:  # Average
            for i in range(stride):
                left = row[i - bpp] if i >= bpp else 0
                row[i] = (row[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif filter_type == 4:  # Paeth
            for i in range(stride):
                left = row[i - bpp] if i >= bpp else 0
                up_left = previous[i - bpp] if i >= bpp else 0
                row[i] = (row[i] + _paeth(left, previous[i], up_left)) & 0xFF
        elif filter_type != 0:
            raise SmokeFailure(f"PNG row {y} has an unknown filter type {filter_type}")
        pixels += row
        previous = row
    return header, bytes(pixels)


def check_image(data: bytes, width: int, height: int) -> None:
    """SmokeFailure unless ``data`` is a ``width`` x ``height`` PNG whose pixels are not all equal."""
    header, pixels = decode_png_pixels(data)
    if (header.width, header.height) != (width, height):
        raise SmokeFailure(f"image is {header.width}x{header.height}, asked for {width}x{height}")
    bpp = BYTES_PER_PIXEL[header.color_type]
    first = pixels[:bpp]
    if pixels == first * (len(pixels) // bpp):
        raise SmokeFailure(f"image is blank: every pixel is {tuple(first)}")


def _request(url: str, key: str | None, body: dict | None, timeout: float) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _error_message(payload: bytes) -> str:
    try:
        return str(json.loads(payload)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return payload[:200].decode("utf-8", "replace")


def wait_ready(base_url: str, key: str | None, deadline: float) -> str | None:
    """Wait for /readyz to answer 200; the release the service says it runs (None: it does not say)."""
    last = "no answer"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SmokeFailure(f"not ready before the timeout ({last})")
        try:
            status, payload = _request(f"{base_url}/readyz", key, None, min(10.0, remaining))
            if status == 200:
                return _running_release(payload)
            if status == 401:
                raise SmokeFailure("/readyz: 401, the API key was refused")
            last = f"/readyz answered {status}: {payload[:120].decode('utf-8', 'replace')}"
        except (urllib.error.URLError, OSError) as exc:
            last = f"/readyz: {getattr(exc, 'reason', exc)}"
        time.sleep(min(READY_POLL_S, max(0.0, deadline - time.monotonic())))


def _running_release(payload: bytes) -> str | None:
    try:
        release = json.loads(payload).get("running", {}).get("release")
    except (ValueError, AttributeError):
        return None
    return release if isinstance(release, str) else None


def run_smoke(
    base_url: str,
    key: str | None,
    width: int,
    height: int,
    steps: int,
    timeout_s: float,
    prompt: str = "smoke test: a red apple on a wooden table",
    save: Path | None = None,
) -> SmokeResult:
    """Wait for readiness, generate one image and check it (and keep it in ``save``).

    Never raises for a failed check.
    """
    base_url = base_url.rstrip("/")
    deadline = time.monotonic() + timeout_s
    latency = None
    release = None
    try:
        release = wait_ready(base_url, key, deadline)
        body = {
            "prompt": prompt,
            "n": 1,
            "size": f"{width}x{height}",
            "response_format": "b64_json",
            "num_inference_steps": steps,
            "seed": 1,
        }
        begin = time.monotonic()
        remaining = max(1.0, deadline - begin)
        try:
            status, payload = _request(f"{base_url}/v1/images/generations", key, body, remaining)
        except (urllib.error.URLError, OSError) as exc:
            raise SmokeFailure(f"generation request failed: {getattr(exc, 'reason', exc)}") from None
        latency = round(time.monotonic() - begin, 3)
        if status != 200:
            raise SmokeFailure(f"generation answered {status}: {_error_message(payload)}")
        try:
            image_b64 = json.loads(payload)["data"][0]["b64_json"]
            image = base64.b64decode(image_b64, validate=True)
        except (ValueError, KeyError, IndexError, TypeError, binascii.Error):
            raise SmokeFailure("generation answer has no data[0].b64_json image") from None
        check_image(image, width, height)
        if save is not None:
            save.parent.mkdir(parents=True, exist_ok=True)
            save.write_bytes(image)
    except SmokeFailure as exc:
        return SmokeResult(False, latency, width, height, str(exc), release)
    return SmokeResult(True, latency, width, height, "ok", release)


def read_key(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SmokeFailure(f"{path}: cannot read the API key ({exc.strerror})") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sd35_provision.service.smoke", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service's base URL")
    parser.add_argument("--size", default="64x64", help="WIDTHxHEIGHT of the test image")
    parser.add_argument("--steps", type=int, default=2, help="inference steps")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for readiness plus generation")
    parser.add_argument(
        "--api-key-file", type=Path, default=None, help="file holding the API key (default: $SD35_API_KEY_FILE)"
    )
    parser.add_argument("--prompt", default="smoke test: a red apple on a wooden table", help="the prompt")
    parser.add_argument("--save", type=Path, default=None, help="write the image here when the check passes")
    parser.add_argument(
        "--record", type=Path, default=None, help="also write the result, with the time it was taken, to this JSON file"
    )
    args = parser.parse_args(argv)

    try:
        width_text, _, height_text = args.size.lower().partition("x")
        width, height = int(width_text), int(height_text)
    except ValueError:
        parser.error(f"--size: {args.size!r} is not WIDTHxHEIGHT")

    key_file = args.api_key_file or (
        Path(os.environ["SD35_API_KEY_FILE"]) if os.environ.get("SD35_API_KEY_FILE") else None
    )
    try:
        key = read_key(key_file) if key_file is not None else None
    except SmokeFailure as exc:
        result = SmokeResult(False, None, width, height, str(exc))
    else:
        result = run_smoke(args.url, key, width, height, args.steps, args.timeout, args.prompt, args.save)
    print(json.dumps(asdict(result)), flush=True)
    if args.record is not None:
        record = {**asdict(result), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        partial = args.record.with_name(args.record.name + ".partial")
        partial.write_text(json.dumps(record) + "\n")
        partial.replace(args.record)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
