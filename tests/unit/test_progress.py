"""Live progress: a long step's "started" line, its heartbeat and time, uploads counted as they go."""

from __future__ import annotations

import io

from sd35_provision.progress import CountingReader, StepWatch, TransferBars, count_uploads, elapsed


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watch_with_clock() -> tuple[StepWatch, Clock, list[str]]:
    clock, lines = Clock(), []
    return StepWatch(lines.append, clock=clock, long_step_s=3, heartbeat_s=15), clock, lines


def tick_to(watch: StepWatch, clock: Clock, until: float) -> None:
    while clock.now < until:
        clock.now += 1
        watch.tick()


def test_a_long_step_says_it_started_then_beats_with_its_time_and_ends_with_it():
    watch, clock, lines = watch_with_clock()
    watch.started("node1", "Python environment | Build venv cpu-4ea3791261db")
    watch.started("node2", "System | Install git and git-lfs")
    tick_to(watch, clock, 1002)
    assert watch.ended("node2") == ""  # 2 s: nothing more is said of it than before
    assert lines == []
    tick_to(watch, clock, 1164)  # the 164 s of the venv build, said while it runs
    assert lines[0] == "node1: started: Python environment | Build venv cpu-4ea3791261db"
    assert lines[1] == "node1: still running: Python environment | Build venv cpu-4ea3791261db (18s)"
    assert lines[-1] == "node1: still running: Python environment | Build venv cpu-4ea3791261db (2m33s)"
    assert len(lines) == 1 + (164 - 3) // 15
    assert watch.ended("node1") == " (2m44s)"
    tick_to(watch, clock, 1200)
    assert len(lines) == 1 + (164 - 3) // 15  # nothing after the end


def test_an_upload_says_which_file_and_how_far():
    watch, clock, lines = watch_with_clock()
    watch.started("node1", "Model | Push model files to /srv/models/push-1")
    watch.transferring("node1", "diffusion_pytorch_model.safetensors", 0, 3_400_000_000)
    tick_to(watch, clock, 1003)
    watch.transferring("node1", "diffusion_pytorch_model.safetensors", 1_200_000_000, 3_400_000_000)
    tick_to(watch, clock, 1018)
    assert lines == [
        "node1: started: Model | Push model files to /srv/models/push-1: sending diffusion_pytorch_model.safetensors",
        "node1: still running: Model | Push model files to /srv/models/push-1 (18s): "
        "sending diffusion_pytorch_model.safetensors, 1.2 GB of 3.4 GB, 35%",
    ]


def test_uploads_of_local_files_are_counted_and_the_rest_pass_through(tmp_path):
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"x" * 100_000)
    sent: list[tuple[object, bytes]] = []

    class Connector:  # pyinfra's SSHConnector.put_file: reads what it is given (get_file_io, paramiko's putfo)
        def put_file(self, filename_or_io, remote_filename, remote_temp_filename=None, **arguments):
            if isinstance(filename_or_io, str):
                raise AssertionError("a local file must go through the counting reader")
            filename_or_io.seek(0)
            data = b"".join(iter(lambda: filename_or_io.read(32768), b""))
            sent.append((remote_filename, data))
            return True

    watch, _, _ = watch_with_clock()
    watch.started("node1", "Model | Push model files")
    seen: list[tuple[int, int]] = []
    watch.transferring = lambda host, name, done, total: seen.append((done, total))  # type: ignore[method-assign]
    connector = Connector()
    count_uploads(connector, "node1", watch)
    assert connector.put_file(str(weights), "/srv/m/weights.bin.partial", _sudo=True) is True
    assert connector.put_file(io.BytesIO(b"env"), "/etc/sd35/env") is True
    assert sent == [("/srv/m/weights.bin.partial", b"x" * 100_000), ("/etc/sd35/env", b"env")]
    assert seen[-1] == (100_000, 100_000) and seen[0] == (32768, 100_000)


def test_the_counting_reader_starts_again_when_an_upload_is_retried(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abcdef")
    seen: list[int] = []
    reader = CountingReader(str(path), lambda done, total: seen.append(done))
    assert reader.read(4) == b"abcd" and reader.done == 4
    reader.seek(0)
    assert reader.read() == b"abcdef" and seen == [4, 6]
    reader.close()


def test_bars_on_a_terminal_replace_the_amount_in_the_lines():
    watch, clock, lines = watch_with_clock()
    bars = TransferBars()
    bars.progress.console.file = io.StringIO()  # what a terminal would get
    watch.bars = bars
    watch.started("node1", "Model | Push model files")
    watch.transferring("node1", "weights.bin", 50, 100)
    assert bars.progress.tasks[0].completed == 50 and bars.progress.tasks[0].description == "node1: weights.bin"
    tick_to(watch, clock, 1003)
    assert lines == ["node1: started: Model | Push model files"]
    watch.ended("node1")
    assert bars.progress.tasks == []
    bars.stop()


def test_elapsed_reads_as_people_write_it():
    assert [elapsed(s) for s in (0, 45, 164, 3725)] == ["0s", "45s", "2m44s", "1h02m"]
