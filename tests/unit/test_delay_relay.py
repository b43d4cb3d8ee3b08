"""bench/delay_relay.py: the SSH ProxyCommand that adds latency where tc has no netem."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

RELAY = Path(__file__).resolve().parents[2] / "bench" / "delay_relay.py"


def echo_server() -> socket.socket:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return server


def read_exactly(stream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = stream.read1(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_round_trips_take_the_added_latency_and_data_arrive_intact_in_order():
    server = echo_server()
    port = server.getsockname()[1]
    ms = 200
    relay = subprocess.Popen(
        [sys.executable, str(RELAY), "127.0.0.1", str(port), str(ms)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert relay.stdin is not None and relay.stdout is not None
        for attempt in range(3):
            message = f"ping {attempt}\n".encode()
            began = time.monotonic()
            relay.stdin.write(message)
            relay.stdin.flush()
            assert read_exactly(relay.stdout, len(message)) == message
            assert time.monotonic() - began >= ms / 1000
        # Many chunks written back to back (more than one read's worth): all arrive, intact and in order.
        payload = b"".join(i.to_bytes(4, "big") for i in range(200_000))
        writer = threading.Thread(target=lambda: (relay.stdin.write(payload), relay.stdin.flush()))
        writer.start()
        assert read_exactly(relay.stdout, len(payload)) == payload
        writer.join()
        relay.stdin.close()
        assert relay.wait(timeout=10) == 0
    finally:
        relay.kill()
        server.close()


def test_a_listening_relay_delays_each_connection_the_same_way():
    # For pyinfra (paramiko's ProxyCommand hangs under gevent): the bench points it at a listening relay.
    server = echo_server()
    port = server.getsockname()[1]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        listen_port = probe.getsockname()[1]
    ms = 200
    relay = subprocess.Popen(
        [sys.executable, str(RELAY), "--listen", f"127.0.0.1:{listen_port}", "127.0.0.1", str(port), str(ms)]
    )
    try:
        for _ in range(100):
            try:
                client = socket.create_connection(("127.0.0.1", listen_port))
                break
            except OSError:
                time.sleep(0.05)
        with client:
            for attempt in range(3):
                message = f"ping {attempt}\n".encode()
                began = time.monotonic()
                client.sendall(message)
                assert read_exactly(client.makefile("rb"), len(message)) == message
                assert time.monotonic() - began >= ms / 1000
    finally:
        relay.kill()
        server.close()
