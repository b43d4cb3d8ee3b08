"""The stdlib smoke client: PNG checks on crafted files, and verdicts against fake services."""

from __future__ import annotations

import base64
import json
import re
import struct
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sd35_provision.service import smoke
from sd35_provision.service.smoke import SmokeFailure, check_image, decode_png_pixels, read_png_header

from .support import noise_png, solid_png


def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def encode_png(
    rows: list[bytes],
    width: int,
    color_type: int = 2,
    filters: list[int] | None = None,
    bit_depth: int = 8,
    interlace: int = 0,
) -> bytes:
    """A PNG writer independent of the decoder under test, with a chosen filter per row."""
    bpp = smoke.BYTES_PER_PIXEL.get(color_type, 3)
    raw = b""
    previous = bytes(len(rows[0]))
    for y, row in enumerate(rows):
        f = (filters or [0])[y % len(filters or [0])]
        out = bytearray()
        for i, value in enumerate(row):
            left = row[i - bpp] if i >= bpp else 0
            up = previous[i]
            up_left = previous[i - bpp] if i >= bpp else 0
            predictor = [0, left, up, (left + up) >> 1, _paeth(left, up, up_left)][f]
            out.append((value - predictor) & 0xFF)
        raw += bytes([f]) + bytes(out)
        previous = row
    ihdr = struct.pack(">IIBBBBB", width, len(rows), bit_depth, color_type, 0, 0, interlace)
    return smoke.PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def gradient_rows(width: int, height: int, bpp: int = 3) -> list[bytes]:
    return [bytes((x * 7 + y * 13 + c * 50) & 0xFF for x in range(width) for c in range(bpp)) for y in range(height)]


@pytest.mark.parametrize("filters", [[0], [1], [2], [3], [4], [0, 1, 2, 3, 4]])
@pytest.mark.parametrize(("color_type", "bpp"), [(2, 3), (6, 4), (0, 1)])
def test_decoder_reverses_every_filter(filters: list[int], color_type: int, bpp: int) -> None:
    rows = gradient_rows(9, 7, bpp)
    header, pixels = decode_png_pixels(encode_png(rows, 9, color_type, filters))
    assert (header.width, header.height) == (9, 7)
    assert pixels == b"".join(rows)


def test_decoder_matches_pillow() -> None:
    import io

    from PIL import Image

    data = noise_png(33, 17, seed=5)
    _, pixels = decode_png_pixels(data)
    assert pixels == Image.open(io.BytesIO(data)).convert("RGB").tobytes()


def test_good_image_passes() -> None:
    check_image(noise_png(64, 48), 64, 48)


def test_blank_image_fails() -> None:
    with pytest.raises(SmokeFailure, match=r"image is blank: every pixel is \(128, 64, 32\)"):
        check_image(solid_png(64, 64), 64, 64)
    # a blank image stored with Sub/Up filters (all-zero filtered bytes after the first pixel) too
    rows = [bytes([10, 20, 30] * 16)] * 16
    with pytest.raises(SmokeFailure, match="blank"):
        check_image(encode_png(rows, 16, 2, [1, 2]), 16, 16)


def test_wrong_size_fails() -> None:
    with pytest.raises(SmokeFailure, match="image is 64x32, asked for 64x64"):
        check_image(noise_png(64, 32), 64, 64)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GIF89a....", "bad signature"),
        (noise_png(8, 8)[:40], "truncated"),
        (noise_png(8, 8)[:-5] + b"XXXXX", "bad CRC"),
        (encode_png([b"\x00\x01" * 4] * 4, 4, 0, bit_depth=16), "bit depth 16"),
        (smoke.PNG_SIGNATURE + chunk(b"IEND", b""), "valid IHDR"),
    ],
)
def test_broken_pngs_fail_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(SmokeFailure, match=reason):
        decode_png_pixels(data)


def test_header_reader() -> None:
    header = read_png_header(noise_png(40, 24))
    assert (header.width, header.height, header.bit_depth, header.color_type, header.interlace) == (40, 24, 8, 2, 0)


class FakeService:
    """A stdlib HTTP server answering like the service, with a chosen image (or status)."""

    def __init__(self, image: bytes | None, status: int = 200, ready: bool = True, running: dict | None = None):
        self.requests: list[dict] = []
        self.auth_headers: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, code: int, body: dict) -> None:
                payload = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                outer.auth_headers.append(self.headers.get("Authorization"))
                stated = {"running": running} if running is not None else {}
                self._send(200 if ready else 503, {"status": "ready" if ready else "loading", **stated})

            def do_POST(self) -> None:
                outer.auth_headers.append(self.headers.get("Authorization"))
                outer.requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                if status != 200:
                    self._send(status, {"error": {"message": "simulated failure"}})
                else:
                    self._send(200, {"created": 0, "data": [{"b64_json": base64.b64encode(image or b"").decode()}]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeService:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def good_service() -> Iterator[FakeService]:
    with FakeService(noise_png(64, 64)) as service:
        yield service


def test_smoke_ok_against_good_service(good_service: FakeService) -> None:
    result = smoke.run_smoke(good_service.url, None, 64, 64, 2, 10)
    assert result.ok and result.reason == "ok" and result.latency_s is not None
    assert good_service.requests[0]["size"] == "64x64" and good_service.requests[0]["num_inference_steps"] == 2


@pytest.mark.parametrize(
    ("image", "status", "reason"),
    [
        (solid_png(64, 64, (0, 0, 0)), 200, "image is blank"),
        (noise_png(32, 64), 200, "image is 32x64, asked for 64x64"),
        (b"not a png", 200, "not a PNG"),
        (None, 500, "generation answered 500: simulated failure"),
    ],
)
def test_smoke_fails_with_reason(image: bytes | None, status: int, reason: str, capsys) -> None:
    with FakeService(image, status) as service:
        code = smoke.main(["--url", service.url, "--size", "64x64", "--steps", "2", "--timeout", "10"])
    line = capsys.readouterr().out.strip()
    result = json.loads(line)
    assert code == 1 and result["ok"] is False
    assert reason in result["reason"]
    assert set(result) == {"ok", "latency_s", "width", "height", "reason", "release"}


def test_smoke_times_out_when_never_ready() -> None:
    with FakeService(noise_png(64, 64), ready=False) as service:
        result = smoke.run_smoke(service.url, None, 64, 64, 2, 0.5)
    assert not result.ok and "not ready before the timeout" in result.reason and "503" in result.reason


def test_smoke_unreachable_service() -> None:
    result = smoke.run_smoke("http://127.0.0.1:9", None, 64, 64, 2, 0.5)
    assert not result.ok and "not ready before the timeout" in result.reason


def test_smoke_reads_key_from_file_not_argv(good_service: FakeService, tmp_path, monkeypatch, capsys) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("secret-key-0123456789\n")
    monkeypatch.setenv("SD35_API_KEY_FILE", str(key_file))
    assert smoke.main(["--url", good_service.url, "--timeout", "10"]) == 0
    assert set(good_service.auth_headers) == {"Bearer secret-key-0123456789"}
    assert "secret-key" not in capsys.readouterr().out


def test_smoke_missing_key_file(capsys) -> None:
    assert smoke.main(["--url", "http://127.0.0.1:9", "--api-key-file", "/nonexistent/key"]) == 1
    assert "cannot read the API key" in json.loads(capsys.readouterr().out)["reason"]


def test_the_record_names_the_release_that_answered_and_when(tmp_path, capsys) -> None:
    # status compares it with the release the host runs now: a result of another release is stale.
    record = tmp_path / "last.json"
    running = {"release": "3f2a9c0d1e2b-5a6b", "pid": 812}
    with FakeService(noise_png(64, 64), running=running) as service:
        assert smoke.main(["--url", service.url, "--timeout", "10", "--record", str(record)]) == 0
    written = json.loads(record.read_text())
    assert written["ok"] is True and written["release"] == "3f2a9c0d1e2b-5a6b"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", written["at"])
    with FakeService(noise_png(64, 64)) as service:  # a service that does not say what it runs
        assert smoke.run_smoke(service.url, None, 64, 64, 2, 10).release is None
