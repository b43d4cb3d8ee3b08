"""``python -m sd35_provision.service``: run the inference service (configured by SD35_* variables).

Exit codes: 0 stopped normally, 1 the model could not be loaded, 2 the
configuration is invalid or cannot run on this machine (e.g. SD35_PRECISION=fp8
on a CPU); the unit does not restart on 2: it would not help.
"""

from __future__ import annotations

import logging
import sys

EXIT_LOAD_FAILED = 1
EXIT_BAD_CONFIG = 2


def main() -> int:
    from .config import ConfigError, load_config

    try:
        config = load_config()
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"sd35-service: configuration: {problem}", file=sys.stderr)
        return EXIT_BAD_CONFIG

    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    log = logging.getLogger("sd35.service")

    import uvicorn

    from .app import create_app
    from .notify import sd_notify
    from .pipeline import StartupError

    exit_code = 0
    server: uvicorn.Server | None = None

    def on_ready() -> None:
        sd_notify("READY=1\nSTATUS=ready")

    def on_fatal(exc: BaseException) -> None:
        nonlocal exit_code
        exit_code = EXIT_BAD_CONFIG if isinstance(exc, StartupError) else EXIT_LOAD_FAILED
        sd_notify("STATUS=model load failed")
        if server is not None:
            server.should_exit = True

    app = create_app(config, on_ready=on_ready, on_fatal=on_fatal)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.bind.strip("[]"),
            port=config.port,
            log_config=None,  # our logging setup above; uvicorn's loggers propagate to it
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=30,
        )
    )
    log.info(
        "starting on %s:%d (auth %s), model %s",
        config.bind,
        config.port,
        "on" if config.api_key is not None else "off",
        config.model_dir,
    )
    sd_notify("STATUS=loading model")
    server.run()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
