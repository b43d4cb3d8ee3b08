"""``python -m sd35_provision.service``: run the inference service (configured by SD35_* variables).

Exit codes: 0 stopped normally, 1 the model could not be loaded, 2 the
configuration is invalid or cannot run on this machine (e.g. SD35_PRECISION=fp8
on a CPU); the unit does not restart on 2: it would not help.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings

EXIT_LOAD_FAILED = 1
EXIT_BAD_CONFIG = 2
ALLOC_CONF = "expandable_segments:True"
# Polled by systemd's smoke test, the gateway's health checks and Prometheus:
# one access-log line each would bury the requests that matter.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Known start-up noise that tells the operator nothing they can act on.
QUIET_MESSAGES = (
    # diffusers probes torchao's serialised tensor types, which this service never loads.
    ("diffusers.quantizers.torchao.torchao_quantizer", "Unable to import `torchao` Tensor objects"),
)


class _HealthPollFilter(logging.Filter):
    """Drops uvicorn access-log lines for QUIET_PATHS."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn.access: (client, method, path with query, http version, status)
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            return args[2].split("?", 1)[0] not in QUIET_PATHS
        return True


class _MessageFilter(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _stopped(signum: int, frame: object) -> None:
    """Runs when uvicorn re-raises the stop signal after its graceful shutdown: nothing left to do."""


def quiet_start() -> None:
    """Filter the known start-up warnings and the health polls' access-log lines."""
    # torchao and others still carry invalid escape sequences, which Python 3.12
    # reports as SyntaxWarning (3.11: DeprecationWarning) when it compiles them on first import.
    for category in (SyntaxWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, message=r"invalid escape sequence")
    for logger, text in QUIET_MESSAGES:
        logging.getLogger(logger).addFilter(_MessageFilter(text))
    logging.getLogger("uvicorn.access").addFilter(_HealthPollFilter())


def main() -> int:
    from .config import ConfigError, load_config

    try:
        config = load_config()
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"sd35-service: configuration: {problem}", file=sys.stderr)
        return EXIT_BAD_CONFIG

    # Batches of 1 to max_batch images leave torch's allocator with blocks of many
    # sizes; with fixed segments the H200 measured 10 GiB reserved over the peak in
    # use. Expandable segments grow and shrink in place (an operator's own setting wins).
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", ALLOC_CONF)
    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    quiet_start()
    log = logging.getLogger("sd35.service")

    import uvicorn

    from .app import create_app
    from .notify import sd_notify
    from .pipeline import StartupError
    from .running import running_record, write_running_record

    exit_code = 0
    server: uvicorn.Server | None = None

    def on_ready() -> None:
        sd_notify("READY=1\nSTATUS=ready")

    def on_fatal(exc: BaseException) -> None:
        nonlocal exit_code
        exit_code = EXIT_BAD_CONFIG if isinstance(exc, StartupError) else EXIT_LOAD_FAILED
        # The cause, on one line, where `systemctl status` (and the provisioner's table) shows it.
        cause = " ".join(str(exc).split())[:300] or exc.__class__.__name__
        sd_notify(f"STATUS=model load failed: {cause}")
        if server is not None:
            server.should_exit = True

    # Before anything else can go wrong: what this process runs, for the provisioner and /readyz.
    files = [*config.running_files, *([str(config.api_key_file)] if config.api_key_file else [])]
    running = running_record(config.release_link, files)
    if config.running_record:
        try:
            write_running_record(config.running_record, running)
        except OSError as exc:
            log.warning("cannot write the running record %s: %s", config.running_record, exc)

    app = create_app(config, on_ready=on_ready, on_fatal=on_fatal, running=running)
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
    # uvicorn stops gracefully on SIGTERM/SIGINT and then raises the signal again
    # under the handler it found: with the default one the process would die of
    # the signal (status -15). A stop is a normal exit here, so the handler it
    # finds does nothing and the exit code below is the service's own.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, _stopped)
    server.run()
    # uvicorn has finished the requests in flight (SIGTERM, SIGINT) or stopped on a
    # fatal load error. The GPU thread may still be inside a load or warm-up that
    # cannot be interrupted; waiting for it would turn a clean stop into systemd's
    # SIGKILL, so leave now with the exit code decided above.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


if __name__ == "__main__":
    sys.exit(main())
