"""The playground page: served by the service, off when configured so, and used in headless Chromium.

The browser test drives the shipped service under uvicorn with an API key (the
``auth_service`` fixture): the page loads without the key, the key typed into
it goes to session storage and on every API call, a generation shows its
images with seed and time, a bad size shows the API's own error, and an edit
from an uploaded image works. Screenshots land in ``test-artifacts/`` (or
``$SD35_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from sd35_provision.service.api import ModelLimits
from sd35_provision.service.app import create_app
from sd35_provision.service.config import Limits
from sd35_provision.service.playground import accepted_sizes
from tests.browser import Browser, find_chromium

from .support import TEST_KEY, RunningService, make_config, noise_png, write_key_file
from .test_app import wait_ready

ARTIFACTS = Path(os.environ.get("SD35_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    key_file = write_key_file(tmp_path_factory.mktemp("playground-key"))
    app = create_app(make_config(tiny_model_dir, SD35_API_KEY_FILE=str(key_file)))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        wait_ready(test_client, headers=AUTH)
        yield test_client


@pytest.fixture
def browser() -> Iterator[Browser]:
    executable = find_chromium()
    if executable is None:
        pytest.skip("no chromium: scripts/bootstrap.sh installs Debian's chromium package")
    instance = Browser(executable)
    yield instance
    instance.close()


def test_page_and_assets_load_without_the_key_and_the_api_still_needs_it(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    for name, media in (("playground.js", "text/javascript"), ("playground.css", "text/css")):
        asset = client.get(f"/playground/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(media)
        assert f'"playground/{name}"' in page.text  # relative: works under a path prefix too
    # No asset from anywhere else: everything the page loads is served by the service.
    assert "http://" not in page.text and "https://" not in page.text and "//" not in page.text.replace("://", "")
    assert client.get("/playground/options").status_code == 401
    assert client.post("/v1/images/generations", json={"prompt": "x"}).status_code == 401
    assert client.get("/playground/secrets.txt", headers=AUTH).status_code == 404
    assert client.get("/playground/../config.py", headers=AUTH).status_code == 404


def test_options_offer_the_sizes_the_service_accepts(client: TestClient) -> None:
    options = client.get("/playground/options", headers=AUTH).json()
    # The tiny model draws 64..128 px; the native size comes first.
    assert options["sizes"][0] == options["default_size"] == "64x64"
    assert options["default_steps"] == 2 and options["max_n"] == 4
    for size in options["sizes"]:
        response = client.post(
            "/v1/images/generations", headers=AUTH, json={"prompt": "x", "size": size, "num_inference_steps": 1}
        )
        assert response.status_code == 200, (size, response.text)


def test_sizes_for_sd35_are_common_ratios_within_the_limits() -> None:
    sizes = accepted_sizes(Limits(max_side=1536, max_pixels=1536 * 1536), ModelLimits(1024, 1024, 16, None))
    assert sizes[:3] == ["1024x1024", "1184x880", "880x1184"]
    assert "1360x768" in sizes and "512x512" in sizes
    for size in sizes:
        width, height = map(int, size.split("x"))
        assert width % 16 == height % 16 == 0 and width * height <= 1536 * 1536 and max(width, height) <= 1536


def test_playground_off_serves_no_page(tiny_model_dir: Path) -> None:
    app = create_app(make_config(tiny_model_dir, SD35_PLAYGROUND="off"))
    with TestClient(app, raise_server_exceptions=False) as off:
        for path in ("/", "/playground/playground.js", "/playground/options"):
            assert off.get(path).status_code == 404, path
        assert off.get("/healthz").status_code == 200


def test_playground_in_headless_chromium(auth_service: RunningService, browser: Browser, tmp_path: Path) -> None:
    browser.goto(f"{auth_service.url}/")
    # Without the key the page still loads and says what the API answered.
    browser.wait_for("document.getElementById('error-message').textContent.includes('API key')")
    assert browser.evaluate("document.getElementById('status').textContent").startswith("Not ready")

    browser.evaluate(f"""(() => {{ const key = document.getElementById('key'); key.value = {TEST_KEY!r};
        key.dispatchEvent(new Event('change')); }})()""")
    browser.wait_for("document.getElementById('status').textContent.startsWith('Ready')")
    assert browser.evaluate("sessionStorage.getItem('sd35-playground-key')") == TEST_KEY
    assert browser.evaluate("document.getElementById('size').value") == "64x64"
    assert browser.evaluate("[...document.querySelectorAll('#sizes option')].map(o => o.value)")[0] == "64x64"

    fill(browser, prompt="a lighthouse on a cliff at dusk", negative="blurry", size="64x64", steps="2", seed="7", n="2")
    browser.evaluate("document.getElementById('generate').click()")
    browser.wait_for(
        "document.querySelectorAll('#results img').length === 2 && "
        "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth === 64)"
    )
    captions = browser.evaluate("[...document.querySelectorAll('#results figcaption')].map(c => c.textContent)")
    assert [c.split(" · ")[0] for c in captions] == ["seed 7", "seed 8"]
    assert all(c.endswith(" s") and "64x64" in c for c in captions), captions
    assert browser.evaluate("document.getElementById('error').hidden") is True
    browser.screenshot(ARTIFACTS / "playground.png")

    # A size the service refuses: the API's own error body is shown.
    fill(browser, size="72x64")
    browser.evaluate("document.getElementById('generate').click()")
    browser.wait_for("!document.getElementById('error').hidden")
    message = browser.evaluate("document.getElementById('error-message').textContent")
    assert message.startswith("The service answered 400: size: width 72 is not a multiple of 16"), message
    assert '"param": "size"' in browser.evaluate("document.getElementById('error-body').textContent")
    browser.screenshot(ARTIFACTS / "playground-error.png")

    # Start from an image: the same form goes to /v1/images/edits.
    source = tmp_path / "source.png"
    source.write_bytes(noise_png(128, 64, seed=5))
    browser.set_files("#image", [source])
    fill(browser, size="", n="1", strength="0.5")
    browser.evaluate("document.getElementById('generate').click()")
    browser.wait_for("document.getElementById('status').textContent.startsWith('Done')")
    assert browser.evaluate("document.getElementById('error').hidden") is True
    # No size given: the edit keeps the uploaded image's size.
    assert browser.evaluate(
        "[...document.querySelectorAll('#results img')].map(i => [i.naturalWidth, i.naturalHeight])"
    ) == [[128, 64]]
    browser.screenshot(ARTIFACTS / "playground-edit.png")
    assert TEST_KEY not in auth_service.log()


def fill(browser: Browser, **values: str) -> None:
    for field, value in values.items():
        browser.evaluate(f"document.getElementById({field!r}).value = {value!r}")


def test_options_say_not_ready_while_the_model_loads(tiny_model_dir: Path) -> None:
    import threading

    from .support import FakeEngine

    gate = threading.Event()
    app = create_app(make_config(tiny_model_dir), load_engine=FakeEngine().loader(gate))
    with TestClient(app, raise_server_exceptions=False) as loading:
        early = loading.get("/playground/options")
        assert early.status_code == 503 and early.headers["Retry-After"] == "10"
        assert "not ready (loading)" in early.json()["error"]["message"]
        assert loading.get("/").status_code == 200  # the page itself is there at once
        gate.set()
        wait_ready(loading)
        assert loading.get("/playground/options").json()["sizes"][0] == "64x64"
