"""Live progress of long steps: a "started" line, a heartbeat with the time taken, file transfers.

pyinfra reports an operation only when it ends, so a venv build, a model push or
a restart that waits for the model to load said nothing for minutes. ``StepWatch``
is told when each host's step starts and ends (the runner's pyinfra callbacks and
its per-host stages); a ticker greenlet asks it every second what to say:

    node1: started: Python environment | Build venv cpu-4ea3791261db
    node1: still running: Python environment | Build venv cpu-4ea3791261db (1m15s)
    node1: changed: Python environment | Build venv cpu-4ea3791261db (2m44s)

A step that ends within ``LONG_STEP_S`` says nothing more than before. Uploads
count their bytes (``count_uploads``): the heartbeat names the file and how far
it is; on a terminal, a bar per transfer (rich) is drawn instead, below the lines.
Without a terminal the output stays plain lines, no control characters.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

ProgressSink = Callable[[str], None]

LONG_STEP_S = 3.0  # a step still running after this long gets a "started" line
HEARTBEAT_S = 15.0  # then a line this often while it runs
TICK_S = 1.0


def elapsed(seconds: float) -> str:
    """``45s``, ``2m44s``, ``1h02m``."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


@dataclass
class Transfer:
    name: str  # the local file's name
    total: int
    done: int = 0


@dataclass
class _Running:
    step: str
    started: float
    announced: bool = False
    last_line: float = 0.0
    transfer: Transfer | None = None


class StepWatch:
    """Which step each host is in, and the lines that say so while it runs (see the module docstring)."""

    def __init__(
        self,
        say: ProgressSink,
        clock: Callable[[], float] = time.monotonic,
        long_step_s: float = LONG_STEP_S,
        heartbeat_s: float = HEARTBEAT_S,
        bars: TransferBars | None = None,
    ):
        self.say = say
        self.clock = clock
        self.long_step_s = long_step_s
        self.heartbeat_s = heartbeat_s
        self.bars = bars
        self.running: dict[str, _Running] = {}

    def started(self, host: str, step: str) -> None:
        self.running[host] = _Running(step, self.clock())

    def ended(self, host: str) -> str:
        """`` (2m44s)`` for a step that was long enough to be announced, else ``""`` (for the line that ends it)."""
        running = self.running.pop(host, None)
        if self.bars is not None:
            self.bars.done(host)
        if running is None or not running.announced:
            return ""
        return f" ({elapsed(self.clock() - running.started)})"

    def transferring(self, host: str, name: str, done: int, total: int) -> None:
        """An upload of ``host``'s current step has sent ``done`` of ``total`` bytes of ``name``."""
        running = self.running.get(host)
        if running is not None:
            running.transfer = Transfer(name, total, done)
        if self.bars is not None:
            self.bars.update(host, name, done, total)

    def tick(self) -> None:
        """Say what has become worth saying: a step that turned out long, a heartbeat."""
        now = self.clock()
        for host, running in list(self.running.items()):
            took = now - running.started
            if not running.announced and took >= self.long_step_s:
                running.announced, running.last_line = True, now
                self.say(f"{host}: started: {running.step}{self._transfer(running, False)}")
            elif running.announced and now - running.last_line >= self.heartbeat_s:
                running.last_line = now
                self.say(f"{host}: still running: {running.step} ({elapsed(took)}){self._transfer(running, True)}")
        if self.bars is not None:
            self.bars.refresh()

    def _transfer(self, running: _Running, with_amount: bool) -> str:
        transfer = running.transfer
        if transfer is None or self.bars is not None:  # on a terminal the bar shows it
            return ""
        if not with_amount:
            return f": sending {transfer.name}"
        share = f", {transfer.done * 100 // transfer.total}%" if transfer.total else ""
        return f": sending {transfer.name}, {size(transfer.done)} of {size(transfer.total)}{share}"

    def ticking(self) -> Any:
        """A greenlet that ticks until killed (``with watch.ticking():``)."""
        return _Ticker(self)


class _Ticker:
    def __init__(self, watch: StepWatch):
        self.watch = watch
        self.greenlet: Any = None

    def __enter__(self) -> _Ticker:
        import gevent

        def loop() -> None:
            while True:
                gevent.sleep(TICK_S)
                self.watch.tick()

        self.greenlet = gevent.spawn(loop)
        return self

    def __exit__(self, *exc: object) -> None:
        self.greenlet.kill()
        if self.watch.bars is not None:
            self.watch.bars.stop()


class TransferBars:
    """A rich progress bar per upload, on stderr (only when it is a terminal)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            auto_refresh=False,  # refreshed by the ticker greenlet: rich's own thread would be a greenlet too
            transient=True,
        )
        self.tasks: dict[str, Any] = {}
        self.started = False

    def update(self, host: str, name: str, done: int, total: int) -> None:
        if not self.started:
            self.progress.start()
            self.started = True
        description = f"{host}: {name}"
        task = self.tasks.get(host)
        if task is None:
            self.tasks[host] = self.progress.add_task(description, total=total, completed=done)
        else:
            self.progress.update(task, description=description, total=total, completed=done)

    def done(self, host: str) -> None:
        task = self.tasks.pop(host, None)
        if task is not None:
            self.progress.remove_task(task)

    def refresh(self) -> None:
        if self.started:
            self.progress.refresh()

    def stop(self) -> None:
        if self.started:
            self.progress.stop()
            self.started = False


class CountingReader:
    """A local file for an upload that tells ``seen(done, total)`` how many bytes were read."""

    def __init__(self, path: str, seen: Callable[[int, int], None]):
        self.file: IO[bytes] = open(path, "rb")  # noqa: SIM115 - closed by close(), as a file object is
        self.total = os.fstat(self.file.fileno()).st_size
        self.done = 0
        self.seen = seen

    def read(self, count: int = -1) -> bytes:
        data = self.file.read(count)
        self.done += len(data)
        self.seen(self.done, self.total)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        position = self.file.seek(offset, whence)
        self.done = position
        return position

    def tell(self) -> int:
        return self.file.tell()

    def close(self) -> None:
        self.file.close()


def count_uploads(connector: Any, host: str, watch: StepWatch) -> None:
    """Make ``connector``'s uploads of local files tell ``watch`` how far they are.

    pyinfra's SSH connector sends a file with paramiko's ``putfo`` and no progress
    callback; it also takes an open file instead of a name, so each upload of a
    local file goes through a ``CountingReader``. File contents built in memory
    (managed files) are small and go as they are.
    """
    upload = connector.put_file

    def put_file(filename_or_io: Any, remote_filename: str, *args: Any, **kwargs: Any) -> bool:
        if not isinstance(filename_or_io, str) or not os.path.isfile(filename_or_io):
            return upload(filename_or_io, remote_filename, *args, **kwargs)
        name = os.path.basename(filename_or_io)
        reader = CountingReader(filename_or_io, lambda done, total: watch.transferring(host, name, done, total))
        try:
            return upload(reader, remote_filename, *args, **kwargs)
        finally:
            reader.close()

    connector.put_file = put_file
