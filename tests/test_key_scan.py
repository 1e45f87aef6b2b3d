"""The key scan (tests/helpers/key_scan.py) sees every kind of output a plugin run can leave."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tap_gtmcli.submit.singer_io import BufferedMsgSpecWriter
from tap_gtmcli.tap.message_writer import TapMessageWriter
from tests.helpers import key_scan
from tests.helpers.keys import API_KEY

PRINT_KEY = f"import sys; print({API_KEY!r}); print('tail ' + sys.argv[1], file=sys.stderr)"
TAIL = API_KEY.removeprefix("gtm_live_")


def found_then_forget() -> list[str]:
    found = key_scan.leaks()
    key_scan.reset()  # these leaks are this test's subject, not a failure
    return found


def test_output_read_through_subprocess_run_is_scanned() -> None:
    subprocess.run([sys.executable, "-c", PRINT_KEY, TAIL], capture_output=True, check=True)
    found = found_then_forget()
    assert any(label.endswith("stdout") for label in found), found
    assert any(label.endswith("stderr") for label in found), found


def test_a_killed_run_whose_stderr_the_test_discards_is_scanned() -> None:
    script = PRINT_KEY + "; sys.stderr.flush(); import time; time.sleep(60)"
    with subprocess.Popen([sys.executable, "-c", script, TAIL], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True) as process:
        assert process.stdout is not None
        process.stdout.readline()  # read line by line, as the kill tests do
        time.sleep(0.5)
        process.send_signal(signal.SIGKILL)
    found = found_then_forget()
    assert f"{Path(sys.executable).name} stderr (discarded by the test)" in found, found
    assert any(label.endswith(" stdout") for label in found), found


def test_a_log_line_and_a_file_a_run_wrote_are_scanned(tmp_path: Path) -> None:
    # Made without the record factory, so the plugins' mask does not hide it here.
    record = logging.LogRecord("some.library", logging.ERROR, __file__, 1, "key %s",
                               (API_KEY,), None)
    logging.getLogger("some.library").handle(record)
    log_file = tmp_path / "run.log"
    with log_file.open("w") as log:
        subprocess.run([sys.executable, "-c", PRINT_KEY, TAIL], stdout=log,
                       stderr=subprocess.STDOUT, check=True)
    found = found_then_forget()
    assert "log line of some.library" in found, found
    assert any(str(log_file) in label for label in found), found


def test_in_process_plugin_output_and_watched_trees_are_scanned(tmp_path, capsys) -> None:
    mapper_output = io.BytesIO()
    BufferedMsgSpecWriter(mapper_output).write_line(f'{{"key": "{API_KEY}"}}\n'.encode())
    TapMessageWriter._write(f'{{"key": "{TAIL}"}}\n'.encode())
    capsys.readouterr()
    (tmp_path / "logs").mkdir()
    key_scan.watch_tree(tmp_path / "logs", since=time.time() - 1)
    (tmp_path / "logs" / "elt.log").write_text(f"Bearer {API_KEY}")
    try:
        found = found_then_forget()
    finally:
        key_scan.unwatch_tree(tmp_path / "logs")
    assert "mapper/target output (in process)" in found, found
    assert "tap output (in process)" in found, found
    assert str(tmp_path / "logs" / "elt.log") in found, found


def test_a_clean_run_passes() -> None:
    subprocess.run([sys.executable, "-c", "print('nothing secret')"], capture_output=True,
                   check=True)
    assert key_scan.leaks() == []


def test_what_a_test_never_read_from_a_pipe_is_scanned_once_the_child_exits() -> None:
    process = subprocess.Popen([sys.executable, "-c", PRINT_KEY, TAIL],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.wait(timeout=30)  # neither pipe is ever read by the test
    found = found_then_forget()
    assert f"{Path(sys.executable).name} stdout (left unread by the test)" in found, found
    assert f"{Path(sys.executable).name} stderr (left unread by the test)" in found, found
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    process.stderr.close()


def test_a_child_writing_to_a_raw_file_descriptor_is_scanned(tmp_path: Path) -> None:
    target = tmp_path / "raw-fd.log"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT)
    try:
        subprocess.run([sys.executable, "-c", PRINT_KEY, TAIL], stdout=fd, stderr=fd,
                       check=True)
    finally:
        os.close(fd)
    found = found_then_forget()
    assert any(str(target) in label for label in found), found


def test_a_child_inheriting_the_tests_stdout_is_scanned(tmp_path: Path) -> None:
    """In a pytest run of its own with this suite's conftest, a test whose child prints
    the key to the stdout it inherits fails, naming the output pytest captured."""
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import _api_key_in_no_output, pytest_runtest_makereport\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_inherits.py").write_text(
        "import subprocess, sys\n\n\ndef test_child_prints_the_key():\n"
        f"    subprocess.run([sys.executable, '-c', {PRINT_KEY!r}, 'tail'], check=True)\n")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:xdist",
         "-p", "no:cacheprovider", "-q", "test_inherits.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONPATH": str(root)})
    found_then_forget()  # the inner run's report shows the key: that is the point here
    assert "1 passed, 1 error" in done.stdout, done.stdout[-3000:]
    assert "the API key appeared in: ['output captured during call of the test']" in (
        done.stdout), done.stdout[-3000:]
