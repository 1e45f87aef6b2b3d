"""How long pytest stays alive after printing its summary line.

Runs `pytest ARGS` as a subprocess, notes the moment its summary line ("N passed in
X s") arrives and the moment the process has exited, and prints the gap. The suite
must exit within seconds of its last test (threads or connections left open by tests
show up here as a gap of a minute or two).

    .venv/bin/python benchmarks/bench_suite_exit.py tests/tap tests/sandbox
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

SUMMARY = re.compile(r"^=*\s*\d+ (passed|failed|error).* in [\d.]+s")


def main(arguments: list[str]) -> int:
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "pytest", "-q", *arguments],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    summary_at = None
    summary = ""
    for line in process.stdout:
        if SUMMARY.search(line.strip()):
            summary_at, summary = time.monotonic(), line.strip()
    process.wait()
    exited_at = time.monotonic()
    if summary_at is None:
        print(f"no summary line; exit code {process.returncode}")
        return 1
    print(f"pytest {' '.join(arguments)}")
    print(f"summary: {summary}")
    print(f"wall time {exited_at - started:.1f} s; exit {exited_at - summary_at:.2f} s "
          f"after the summary line; exit code {process.returncode}")
    return process.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
