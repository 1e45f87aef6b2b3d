"""The API key stays out of everything a test's plugin runs print: one mechanism for all.

`install()` (called once by tests/conftest.py) patches `subprocess.Popen` for the whole
session, so no test can start a process that escapes the scan:
- what a test reads from a child's pipes (`communicate()`, so `subprocess.run`, or line
  by line from `.stdout` / `.stderr`) is recorded as it is read, and what is left in a
  pipe the test never read to its end is read once the child has exited;
- a stream a test would throw away (`DEVNULL`, e.g. a run it kills) goes to a file
  instead, and so does one it sends to a file of its own (a file object or a raw file
  descriptor): both files are scanned;
- a stream the child inherits goes to the test's own output, which pytest captures:
  tests/conftest.py records each test's captured output.
In-process runs are covered the same way: a root log handler records every log line,
and the plugins' writers (the tap's and the mapper's / target's) record every byte they
write. `record()` takes anything else a test holds; `watch_tree()` adds the files a
directory gains (Meltano's own `.meltano/logs` and `.meltano/run`, watched for the whole
session by tests/conftest.py). The autouse fixture in tests/conftest.py calls
`assert_clean()` after every test: the key, or its tail after `gtm_live_`, anywhere in
what was recorded fails the test and names where it was.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.helpers.keys import API_KEY

#: A partial leak (the key minus its prefix) counts too.
_NEEDLES = [API_KEY, API_KEY.removeprefix("gtm_live_")]

_lock = threading.Lock()
_outputs: dict[str, list[str]] = {}
_files: list[tuple[str, Path]] = []
_trees: list[tuple[Path, float]] = []
#: Children whose pipes may hold output the test never read (drained once they exit).
_children: list[subprocess.Popen] = []
_spool = Path(tempfile.mkdtemp(prefix="gtmcli-keyscan-"))
atexit.register(shutil.rmtree, _spool, ignore_errors=True)


def _text(data: Any) -> str:
    if isinstance(data, bytes | bytearray):
        return bytes(data).decode(errors="replace")
    if isinstance(data, str):
        return data
    return json.dumps(data, default=str)


def scan_for(key: str) -> None:
    """Scan for another key too (tests that give a second account its own key)."""
    with _lock:
        for needle in (key, key.removeprefix("gtm_live_")):
            if needle not in _NEEDLES:
                _NEEDLES.append(needle)


def record(label: str, data: Any) -> None:
    """Remember one output of a run (str, bytes or anything JSON-able) for the scan."""
    if data:
        with _lock:
            _outputs.setdefault(label, []).append(_text(data))


def watch_file(label: str, path: Path) -> None:
    """Scan this file's content (as it is when the test ends)."""
    with _lock:
        _files.append((label, Path(path)))


def watch_tree(directory: Path, since: float) -> None:
    """Scan every file under `directory` modified at or after `since` (epoch seconds),
    after each test, until `unwatch_tree`."""
    with _lock:
        _trees.append((Path(directory), since))


def unwatch_tree(directory: Path) -> None:
    """Stop scanning a directory (scan it once more first with `assert_clean`)."""
    with _lock:
        _trees[:] = [(path, since) for path, since in _trees if path != Path(directory)]


def _drain_exited_children() -> None:
    """Record what is left unread in the pipes of children that have exited."""
    with _lock:
        children = list(_children)
    for child in children:
        if child.poll() is None:
            continue  # still running (a session's sandbox): drained once it exits
        for name in ("stdout", "stderr"):
            pipe = getattr(child, name)
            if pipe is None or pipe.closed:
                continue
            record(f"{Path(str(child.args[0] if isinstance(child.args, list | tuple) else child.args)).name} "
                   f"{name} (left unread by the test)", _read_what_is_left(pipe.fileno()))
        with _lock:
            _children.remove(child)


def _read_what_is_left(fd: int) -> bytes:
    # Non-blocking: a grandchild may still hold the pipe open.
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 1 << 20)
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _file_behind(fd: int) -> Path | None:
    """The regular file a raw file descriptor of this process writes to, if any."""
    try:
        target = Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None
    return target if target.is_file() else None


def leaks() -> list[str]:
    """Where the key appeared in what was recorded since the last `reset()`."""
    _drain_exited_children()
    with _lock:
        outputs = {label: "".join(chunks) for label, chunks in _outputs.items()}
        files, trees = list(_files), list(_trees)
    found = [label for label, text in outputs.items() if any(n in text for n in _NEEDLES)]
    for directory, since in trees:
        if directory.is_dir():
            files += [(str(path), path) for path in sorted(directory.rglob("*"))
                      if path.is_file() and path.stat().st_mtime >= since]
    for label, path in files:
        try:
            text = path.read_bytes().decode(errors="replace")
        except OSError:
            continue
        if any(needle in text for needle in _NEEDLES):
            found.append(label)
    return found


def reset() -> None:
    """Forget what was recorded (files a test watched are removed if they are ours)."""
    with _lock:
        for _, path in _files:
            if path.parent == _spool:
                path.unlink(missing_ok=True)
        _outputs.clear()
        _files.clear()


def assert_clean() -> None:
    """Fail naming every output the key appeared in."""
    found = leaks()
    assert not found, f"the API key appeared in: {found}"


def assert_no_key(*outputs: Any) -> None:
    """The key (or its tail) occurs in none of the given outputs."""
    for index, output in enumerate(outputs):
        text = _text(output)
        assert not any(needle in text for needle in _NEEDLES), f"the API key leaked (#{index})"


class _LogRecorder(logging.Handler):
    """Every log line emitted in the test process, traceback included."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, log_record: logging.LogRecord) -> None:
        record(f"log line of {log_record.name}", self.format(log_record))


class _RecordedStream:
    """A child's pipe that records what the test reads from it."""

    def __init__(self, stream: Any, label: str) -> None:
        self._stream = stream
        self._label = label

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __iter__(self) -> Iterator[Any]:
        for line in self._stream:
            record(self._label, line)
            yield line

    def __next__(self) -> Any:
        line = next(self._stream)
        record(self._label, line)
        return line

    def read(self, *args: Any) -> Any:
        data = self._stream.read(*args)
        record(self._label, data)
        return data

    def readline(self, *args: Any) -> Any:
        line = self._stream.readline(*args)
        record(self._label, line)
        return line

    def readlines(self, *args: Any) -> Any:
        lines = self._stream.readlines(*args)
        record(self._label, "".join(_text(line) for line in lines))
        return lines


def _scanned_popen(base: type[subprocess.Popen]) -> type[subprocess.Popen]:
    class ScannedPopen(base):  # type: ignore[valid-type, misc]
        """`subprocess.Popen` whose every output stream ends up in the key scan."""

        def __init__(self, args: Any, *positional: Any, **options: Any) -> None:
            name = Path(str(args[0] if isinstance(args, list | tuple) else args)).name
            opened = []
            for stream in ("stdout", "stderr"):
                target = options.get(stream)
                if target == subprocess.DEVNULL:
                    # A stream nobody reads (a killed run's stderr) is kept and scanned.
                    handle, path = tempfile.mkstemp(prefix=f"{name}-{stream}-", dir=_spool)
                    options[stream] = handle
                    opened.append(handle)
                    watch_file(f"{name} {stream} (discarded by the test)", Path(path))
                elif hasattr(target, "name") and isinstance(target.name, str):
                    watch_file(f"{name} {stream} -> {target.name}", Path(target.name))
                elif isinstance(target, int) and target >= 0:
                    path = _file_behind(target)  # a raw descriptor of a file
                    if path is not None:
                        watch_file(f"{name} {stream} -> fd {target} ({path})", path)
            try:
                super().__init__(args, *positional, **options)
            finally:
                for handle in opened:
                    os.close(handle)
            for stream in ("stdout", "stderr"):
                pipe = getattr(self, stream)
                if pipe is not None:
                    setattr(self, stream, _RecordedStream(pipe, f"{name} {stream}"))
            if self.stdout is not None or self.stderr is not None:
                with _lock:
                    _children.append(self)

        def communicate(self, *positional: Any, **options: Any) -> Any:
            stdout, stderr = super().communicate(*positional, **options)
            record(f"{self.args!r} stdout", stdout)
            record(f"{self.args!r} stderr", stderr)
            return stdout, stderr

    return ScannedPopen


class _RecordedWrites:
    """An output stream that records what an in-process plugin writes to it."""

    def __init__(self, stream: Any, label: str) -> None:
        self._stream = stream
        self._label = label

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def write(self, data: Any) -> Any:
        record(self._label, data)
        return self._stream.write(data)


def _record_plugin_writers() -> None:
    from tap_gtmcli.submit.singer_io import BufferedMsgSpecWriter
    from tap_gtmcli.tap.message_writer import TapMessageWriter

    tap_write = TapMessageWriter._write

    def write_and_record(data: bytes | bytearray) -> None:
        record("tap output (in process)", data)
        tap_write(data)

    TapMessageWriter._write = staticmethod(write_and_record)  # type: ignore[method-assign]
    writer_init = BufferedMsgSpecWriter.__init__

    def init_recording(self: BufferedMsgSpecWriter, output: Any = None) -> None:
        # None means standard output: a console-script run, scanned through its pipe.
        if output is not None:
            output = _RecordedWrites(output, "mapper/target output (in process)")
        writer_init(self, output)

    BufferedMsgSpecWriter.__init__ = init_recording  # type: ignore[method-assign]


def install() -> None:
    """Route every child process, log line and in-process plugin output through the scan."""
    if getattr(subprocess.Popen, "_key_scanned", False):
        return
    scanned = _scanned_popen(subprocess.Popen)
    scanned._key_scanned = True  # type: ignore[attr-defined]
    subprocess.Popen = scanned  # type: ignore[misc]
    logging.getLogger().addHandler(_LogRecorder())
    _record_plugin_writers()
