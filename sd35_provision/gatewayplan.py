"""The gateway's plan: its backends (one server per instance of every serving host) and its HAProxy config.

``build_gateway_plan(settings, serving_plans)`` is pure, like ``build_host_plan``:
the gateway host's settings and the plans of the hosts behind it give the
config text (``render_haproxy_config``, unit-tested) and the files it names.
No secret is in the config: the client keys, the backend key and the TLS
certificate are files beside it (0600), read by the gateway layer when it
pushes them; the config only names them, so ``plan`` can show its diff.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from sd35_provision import layout
from sd35_provision.hostplan import HostPlan
from sd35_provision.hostspec.settings import GatewaySettings, HostSettings

# Health checks: this many failed (passed) checks in a row take an instance out (put it back).
CHECK_FALL = 2
CHECK_RISE = 2
RETRY_AFTER_S = 60
SERVER_STATE_FILE = "/var/lib/haproxy/server-state"  # a key over its rate: the window is a minute


@dataclass(frozen=True)
class Server:
    """One instance behind the gateway."""

    name: str  # layout.gateway_server_name(host, index)
    host: str
    address: str
    port: int


@dataclass(frozen=True)
class GatewayFiles:
    """Where the config finds what it names (the live paths, or the candidate's ``.new`` ones while checking)."""

    pem: str = layout.GATEWAY_PEM
    client_keys: str = layout.GATEWAY_CLIENT_KEYS
    backend_key: str = layout.GATEWAY_BACKEND_KEY

    @classmethod
    def candidate(cls) -> GatewayFiles:
        return cls(**{name: f"{path}.new" for name, path in vars(cls()).items()})


@dataclass(frozen=True)
class GatewayPlan:
    """What the gateway layer does on one gateway host."""

    settings: HostSettings = field(repr=False)
    gateway: GatewaySettings = field(repr=False)
    servers: tuple[Server, ...]
    config: str = field(repr=False)  # /etc/haproxy/haproxy.cfg, naming the live files
    candidate_config: str = field(repr=False)  # the same, naming the .new files (what `haproxy -c` checks)

    @property
    def name(self) -> str:
        return self.settings.name


def gateway_servers(serving: tuple[HostSettings, ...], plans: Mapping[str, HostPlan]) -> tuple[Server, ...]:
    """One server per instance of every serving host, in spec order, reached where the service binds
    (the host's address when it binds every address)."""
    return tuple(
        Server(
            name=layout.gateway_server_name(host.name, instance.index),
            host=host.name,
            address=host.address if host.service.bind in ("0.0.0.0", "::") else host.service.bind,
            port=instance.port,
        )
        for host in serving
        for instance in plans[host.name].instances
    )


def build_gateway_plan(settings: HostSettings, plans: Mapping[str, HostPlan]) -> GatewayPlan:
    """The plan of gateway host ``settings``; ``plans`` holds the plan of every host behind it."""
    gateway = settings.gateway
    if gateway is None:
        raise ValueError(f"{settings.name} does not run the gateway")
    servers = gateway_servers(gateway.serving, plans)
    return GatewayPlan(
        settings=settings,
        gateway=gateway,
        servers=servers,
        config=render_haproxy_config(gateway, servers),
        candidate_config=render_haproxy_config(gateway, servers, GatewayFiles.candidate()),
    )


def openai_error(message: str, kind: str, code: str) -> str:
    """An OpenAI-style error body, as the service sends them (no ``'``: it sits in a quoted config string)."""
    text = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})
    if "'" in text:
        raise ValueError(f"an error body cannot hold a single quote: {text}")
    return text


# What the access log keeps: no header at all (the Authorization header never reaches the log),
# the client key's name instead of the key.
LOG_FORMAT = (
    "%ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B %tsc %ac/%fc/%bc/%sc/%rc %sq/%bq key=%[var(txn.client)] %{+Q}r"
)


def render_haproxy_config(
    gateway: GatewaySettings, servers: tuple[Server, ...], files: GatewayFiles | None = None
) -> str:
    """``/etc/haproxy/haproxy.cfg`` for ``gateway`` in front of ``servers``."""
    files = files or GatewayFiles()
    address = f"[{gateway.bind}]" if ":" in gateway.bind else gateway.bind
    tls = f" ssl crt {files.pem} alpn http/1.1" if gateway.tls else ""
    body_limit = gateway.max_body_mb * 1024 * 1024
    unauthorized = openai_error(
        "Incorrect or missing API key: send a key of this gateway as a Bearer token",
        "invalid_request_error",
        "invalid_api_key",
    )
    too_large = openai_error(
        f"The request body is larger than {gateway.max_body_mb} MiB", "invalid_request_error", "request_too_large"
    )
    no_length = openai_error("Send the request body with a Content-Length", "invalid_request_error", "length_required")
    unavailable = openai_error(
        "No instance can take the request now; retry later", "server_error", "service_unavailable"
    )
    key_check = [
        # The client's key names it (a map of key -> name); no known key, no name.
        f"    http-request set-var(txn.client) http_auth_bearer,map_str({files.client_keys})",
        "    http-request return status 401 content-type application/json hdr WWW-Authenticate Bearer "
        f"string '{unauthorized}' unless {{ var(txn.client) -m found }}",
    ]
    lines = [
        "# Managed by sd35-provision (the spec's gateway: section); edits are reverted on the next apply.",
        "global",
        "    log /dev/log local0",
        "    chroot /var/lib/haproxy",
        f"    stats socket {layout.HAPROXY_ADMIN_SOCKET} mode 660 level admin",
        "    stats timeout 30s",
        # Written just before each reload (deploys/gateway.py): drained servers stay drained across it.
        f"    server-state-file {SERVER_STATE_FILE}",
        "    user haproxy",
        "    group haproxy",
        "    daemon",
        "    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets",
        "",
        "defaults",
        "    log global",
        "    mode http",
        "    option dontlognull",
        "    option forwardfor",
        "    load-server-state-from-file global",
        f"    timeout connect {gateway.connect_timeout_s}s",
        # A client waits as long as its image takes: the instance's time, plus the queue's.
        f"    timeout client {gateway.request_timeout_s + gateway.queue_timeout_s}s",
        f"    timeout server {gateway.request_timeout_s}s",
        f"    timeout queue {gateway.queue_timeout_s}s",
        "    timeout http-request 30s",
        "    timeout http-keep-alive 10s",
        f'    log-format "{LOG_FORMAT}"',
        "",
        "frontend sd35",
        f"    bind {address}:{gateway.port}{tls}",
        "    stick-table type string len 64 size 10k expire 2m store http_req_rate(60s)",
        *key_check,
        "    http-request track-sc0 var(txn.client)",
    ]
    for key in gateway.keys:
        over = openai_error(
            f"Rate limit reached for key {key.name}: {key.rate_per_minute} requests per minute",
            "requests",
            "rate_limit_exceeded",
        )
        lines.append(
            f"    http-request return status 429 content-type application/json hdr Retry-After {RETRY_AFTER_S} "
            f"string '{over}' if {{ var(txn.client) -m str {key.name} }} "
            f"{{ sc_http_req_rate(0) gt {key.rate_per_minute} }}"
        )
    lines += [
        f"    http-request return status 413 content-type application/json string '{too_large}' "
        f"if {{ req.hdr_val(content-length) gt {body_limit} }}",
        # A body without a length could be of any size: refused rather than counted.
        f"    http-request return status 411 content-type application/json string '{no_length}' "
        "if { req.hdr_cnt(transfer-encoding) gt 0 }",
        f"    http-error status 503 content-type application/json string '{unavailable}'",
        f"    default_backend {layout.GATEWAY_BACKEND}",
        "",
    ]
    if gateway.metrics_port:
        # HAProxy's own Prometheus exporter (Debian builds it in): where the API listens, with its TLS,
        # behind the same client keys (not rate-counted: scrapes are not requests to the fleet).
        lines += [
            "frontend metrics",
            f"    bind {address}:{gateway.metrics_port}{tls}",
            *key_check,
            "    http-request use-service prometheus-exporter if { path /metrics }",
            "    http-request deny deny_status 404",
            "",
        ]
    lines += [
        f"backend {layout.GATEWAY_BACKEND}",
        "    balance leastconn",
        "    option httpchk",
        # /readyz wants the backends' key too; the map holds it (the config holds no secret).
        "    http-check send meth GET uri /readyz "
        f'hdr Authorization "Bearer %[str(backend),map_str({files.backend_key})]"',
        "    http-check expect status 200",
        # A request that never reached an instance (refused, reset before an answer) goes to another one.
        "    retries 3",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response",
        f'    http-request set-header Authorization "Bearer %[str(backend),map_str({files.backend_key})]"',
        f"    default-server check inter {gateway.health_check_interval_s}s fall {CHECK_FALL} rise {CHECK_RISE}",
    ]
    lines += [f"    server {server.name} {_host_port(server.address, server.port)}" for server in servers]
    return "\n".join(lines) + "\n"


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def render_client_keys(keys: Mapping[str, str]) -> str:
    """The client key map: ``<key> <name>`` per line (``keys``: name -> key). Secret: pushed 0600."""
    return "".join(f"{key} {name}\n" for name, key in keys.items())


def render_backend_key(key: str) -> str:
    """The backend key map: one line, ``backend <key>``. Secret: pushed 0600."""
    return f"backend {key}\n"
