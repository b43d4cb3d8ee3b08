"""The playground: one page at ``GET /`` to try prompts (and edits) in a browser.

Plain HTML, JavaScript and CSS shipped in ``static/`` and served by the
service itself (no CDN, no build step). The page holds no secret, so it and
its two assets load without the API key; everything it asks the service
(``/playground/options``, the images API) carries the key the user typed,
which stays in the browser's session storage. ``SD35_PLAYGROUND=off``
(``service.playground: false`` in the spec) leaves all of it out.
"""

from __future__ import annotations

import math
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from .api import ModelLimits, RequestError, error_body, parse_generation_request
from .config import Limits, ServiceConfig
from .edits import DEFAULT_STRENGTH

STATIC_DIR = Path(__file__).parent / "static"
ASSETS = {"playground.js": "text/javascript; charset=utf-8", "playground.css": "text/css; charset=utf-8"}
# Served without the key (see module docstring); the auth middleware reads this.
PAGE_PATHS = frozenset({"/", *(f"/playground/{name}" for name in ASSETS)})
OPTIONS_PATH = "/playground/options"
# The page talks to its own origin only; inline scripts and styles are refused as well.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# Aspect ratios offered, each at the model's native pixel count and at a quarter of it.
RATIOS = ((1, 1), (4, 3), (3, 4), (3, 2), (2, 3), (16, 9), (9, 16))


def accepted_sizes(limits: Limits, model: ModelLimits) -> list[str]:
    """Sizes to offer: common aspect ratios the service accepts, the native size first."""
    native_pixels = model.default_width * model.default_height
    sizes: list[str] = []
    for pixels in (native_pixels, native_pixels / 4):
        for w, h in RATIOS:
            width = round(math.sqrt(pixels * w / h) / model.size_multiple) * model.size_multiple
            height = round(math.sqrt(pixels * h / w) / model.size_multiple) * model.size_multiple
            size = f"{width}x{height}"
            if size in sizes:
                continue
            try:
                parse_generation_request({"prompt": "-", "size": size}, limits, model, 1, 0.0)
            except RequestError:
                continue
            sizes.append(size)
    return sizes


def playground_options(config: ServiceConfig, model: ModelLimits) -> dict[str, object]:
    """What the page needs to fill its form: sizes, limits and the service's defaults."""
    limits = config.limits
    return {
        "sizes": accepted_sizes(limits, model),
        "default_size": f"{model.default_width}x{model.default_height}",
        "default_steps": config.default_steps,
        "default_guidance": config.default_guidance,
        "default_strength": DEFAULT_STRENGTH,
        "max_n": limits.max_n,
        "max_steps": limits.max_steps,
        "max_guidance": limits.max_guidance,
        "max_prompt_chars": limits.max_prompt_chars,
    }


def add_playground(app: FastAPI, config: ServiceConfig) -> None:
    """Register the page, its assets and its options on the service app, unless the playground is off."""
    if not config.playground:
        return
    state = app.state.service

    def asset(name: str, media_type: str) -> Response:
        return Response((STATIC_DIR / name).read_bytes(), media_type=media_type, headers=PAGE_HEADERS)

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return asset("playground.html", "text/html; charset=utf-8")

    @app.get("/playground/{name}", include_in_schema=False)
    async def page_asset(name: str) -> Response:
        if name == OPTIONS_PATH.rsplit("/", 1)[1]:
            loaded = state.loaded
            if loaded is None:
                return JSONResponse(
                    error_body(f"the model is not ready ({state.phase}); retry later", "server_error"),
                    status_code=503,
                    headers={"Retry-After": "10"},
                )
            return JSONResponse(playground_options(config, loaded.engine.limits))
        if name not in ASSETS:
            return JSONResponse(
                error_body(f"no such playground file: {name}", "invalid_request_error"), status_code=404
            )
        return asset(name, ASSETS[name])
