"""An SSH ProxyCommand that adds a round-trip latency: ``delay_relay.py HOST PORT MS``.

For kernels whose tc has no netem (or no prio qdisc to aim it at the fleet's
addresses): ssh (or paramiko, or Ansible's ``-o ProxyCommand=...``) talks to
this program's stdin/stdout, and it relays to HOST:PORT, holding every chunk
MS/2 milliseconds in each direction. Each direction is a queue of (release
time, bytes): a chunk read at t leaves at t + MS/2 whatever came before it,
so this is a latency, not a throughput cap. Standard library only.
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
    half = ms / 2000

    def write_out(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(stdout, view) :]

    def shut_write() -> None:
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    up = threading.Thread(
        target=pump, args=(lambda: os.read(stdin, CHUNK), sock.sendall, shut_write, half), daemon=True
    )
    up.start()
    pump(lambda: sock.recv(CHUNK), write_out, lambda: os.close(stdout), half)
    up.join(timeout=half + 1)
    sock.close()


def main() -> None:
    if len(sys.argv) != 4:
        raise SystemExit(f"usage: {sys.argv[0]} HOST PORT MS (MS: added milliseconds per round trip)")
    relay(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))


if __name__ == "__main__":
    main()
