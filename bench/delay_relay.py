"""An SSH ProxyCommand that adds a round-trip latency: ``delay_relay.py HOST PORT MS``.

For kernels whose tc has no netem (or no prio qdisc to aim it at the fleet's
addresses): ssh (or paramiko, or Ansible's ``-o ProxyCommand=...``) talks to
this program's stdin/stdout, and it relays to HOST:PORT, holding every chunk
MS/2 milliseconds in each direction. Each direction is a queue of (release
time, bytes): a chunk read at t leaves at t + MS/2 whatever came before it,
so this is a latency, not a throughput cap. With ``--listen ADDRESS:PORT``
it accepts connections there and relays each one the same way (for clients
that cannot run a ProxyCommand). Standard library only.
"""

from __future__ import annotations

import collections
import os
import socket
import sys
import threading
import time
from collections.abc import Callable

CHUNK = 65536


def pump(read: Callable[[], bytes], write: Callable[[bytes], None], close: Callable[[], None], delay_s: float) -> None:
    """Copy ``read()`` chunks to ``write`` each ``delay_s`` after it arrived, in order; ``close()`` after EOF."""
    queue: collections.deque[tuple[float, bytes]] = collections.deque()
    ready = threading.Condition()
    done = False

    def reader() -> None:
        nonlocal done
        try:
            while chunk := read():
                with ready:
                    queue.append((time.monotonic() + delay_s, chunk))
                    ready.notify()
        except OSError:
            pass
        with ready:
            done = True
            ready.notify()

    threading.Thread(target=reader, daemon=True).start()
    try:
        while True:
            with ready:
                while not queue and not done:
                    ready.wait()
                if not queue:
                    break
                release, chunk = queue.popleft()
            wait = release - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            write(chunk)
    except OSError:
        pass  # the other side went away: nothing left to deliver to
    finally:
        close()


def relay(host: str, port: int, ms: float, stdin: int = 0, stdout: int = 1) -> None:
    """Relay file descriptors ``stdin``/``stdout`` to a TCP connection to ``host:port``, ``ms`` per round trip."""
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def write_out(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(stdout, view) :]

    _both_ways(sock, lambda: os.read(stdin, CHUNK), write_out, lambda: os.close(stdout), ms)
    sock.close()


def listen(address: str, listen_port: int, host: str, port: int, ms: float) -> None:
    """Accept on ``address:listen_port`` and relay each connection to ``host:port``, ``ms`` per round trip.

    For clients whose ProxyCommand cannot be used: paramiko's ProxyCommand hangs
    under gevent's monkey-patching (pyinfra's), so the bench points sd35-provision
    at this port (a ``Port`` line in its ssh config) instead.
    """
    server = socket.create_server((address, listen_port))
    while True:
        client, _ = server.accept()
        threading.Thread(target=_serve, args=(client, host, port, ms), daemon=True).start()


def _serve(client: socket.socket, host: str, port: int, ms: float) -> None:
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock = socket.create_connection((host, port))
    except OSError:
        client.close()
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def shut_client() -> None:
        try:
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    _both_ways(sock, lambda: client.recv(CHUNK), client.sendall, shut_client, ms)
    sock.close()
    client.close()


def _both_ways(
    sock: socket.socket, read_in: Callable[[], bytes], write_out: Callable[[bytes], None], close_out, ms: float
) -> None:
    """``read_in`` to ``sock`` and ``sock`` to ``write_out``, each chunk held ``ms``/2 on its way."""
    half = ms / 2000

    def shut_write() -> None:
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    up = threading.Thread(target=pump, args=(read_in, sock.sendall, shut_write, half), daemon=True)
    up.start()
    pump(lambda: sock.recv(CHUNK), write_out, close_out, half)
    up.join(timeout=half + 1)


def main() -> None:
    args = sys.argv[1:]
    if len(args) == 5 and args[0] == "--listen":
        address, _, listen_port = args[1].rpartition(":")
        listen(address, int(listen_port), args[2], int(args[3]), float(args[4]))
    elif len(args) == 3:
        relay(args[0], int(args[1]), float(args[2]))
    else:
        raise SystemExit(
            f"usage: {sys.argv[0]} [--listen ADDRESS:PORT] HOST PORT MS (MS: added milliseconds per round trip)"
        )


if __name__ == "__main__":
    main()
