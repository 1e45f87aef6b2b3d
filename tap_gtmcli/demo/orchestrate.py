"""`make orchestrate`: Dagster's UI and daemon on this project, against the sandbox.

1. Meltano into `.venv-meltano` and the plugins of the demo's jobs (as `make demo`).
2. The GTMCLI sandbox in the background, its jobs kept in `output/gtmcli-sandbox.db`.
3. `dagster dev` (web UI and daemon) on the code location `tap_gtmcli.orchestration`,
   with DAGSTER_HOME in `output/dagster/` holding the committed `dagster.yaml` (the run
   queue), Meltano's state in `output/meltano.db`, and every GTMCLI plugin pointed at
   the sandbox, until Ctrl-C; then the sandbox stops.

Dagster is started as a command, not imported: the demo room never imports the code
location (tests/test_layout.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from tap_gtmcli.demo.__main__ import OUTPUT, STATE_DB, prepare, sandbox_environment
from tap_gtmcli.demo.meltano_project import PROJECT_ROOT, base_environment
from tap_gtmcli.demo.steps import StepFailedError, say

DAGSTER_HOME = OUTPUT / "dagster"
INSTANCE_FILE = PROJECT_ROOT / "tap_gtmcli" / "orchestration" / "dagster.yaml"
CODE_LOCATION = "tap_gtmcli.orchestration.definitions"
#: The UI's port (DAGSTER_PORT overrides it); it listens on 127.0.0.1 only.
DEFAULT_PORT = "3000"
STEPS = 4
#: Seconds Dagster gets to stop after Ctrl-C before it is killed.
STOP_SECONDS = 30


def dagster_environment(sandbox_url: str) -> dict[str, str]:
    """What `dagster dev` and the runs it starts need: the instance, the project, the
    sandbox, and Meltano's state in output/ beside the demo's."""
    return {
        **base_environment(),
        **sandbox_environment(sandbox_url),
        "DAGSTER_HOME": str(DAGSTER_HOME),
        "MELTANO_PROJECT_ROOT": str(PROJECT_ROOT),
        "MELTANO_DATABASE_URI": f"sqlite:///{STATE_DB}",
    }


def prepare_instance() -> None:
    """DAGSTER_HOME with the committed dagster.yaml (refreshed each time)."""
    DAGSTER_HOME.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(INSTANCE_FILE, DAGSTER_HOME / "dagster.yaml")


def stop(process: subprocess.Popen[bytes]) -> int:
    """Interrupt `dagster dev` and its children as Ctrl-C would; kill them if they are
    still there after STOP_SECONDS (Dagster 1.13's daemon can hang on its way out)."""
    say("Stopping Dagster ...")
    os.killpg(process.pid, signal.SIGINT)
    try:
        return process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return 0


def interrupt_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (say, `kill`) stops Dagster and the sandbox as Ctrl-C does."""
    raise KeyboardInterrupt


def run() -> int:
    """All steps; `dagster dev`'s exit code (0 after Ctrl-C)."""
    _project, sandbox, url = prepare(STEPS)
    try:
        prepare_instance()
        port = os.environ.get("DAGSTER_PORT") or DEFAULT_PORT
        say(f"[4/{STEPS}] dagster dev: the UI on http://127.0.0.1:{port}, the daemon runs "
            "schedules, the sensor and the run queue (Ctrl-C stops both and the sandbox)")
        # `dagster dev` prints one SupersessionWarning ("Use 'dg dev' instead"): the `dg`
        # CLI needs another package and a `dg` project layout (README "Scheduling").
        dagster = Path(sys.executable).with_name("dagster")
        process = subprocess.Popen(
            [str(dagster), "dev", "-m", CODE_LOCATION, "-h", "127.0.0.1", "-p", port],
            cwd=PROJECT_ROOT, env=dagster_environment(url),
            # Its own process group: Ctrl-C reaches this script, which stops the group.
            start_new_session=True,
        )
        try:
            return process.wait()
        except KeyboardInterrupt:
            return stop(process)
    finally:
        sandbox.stop()


def main() -> int:
    """Run; on a failed step print which and exit 1."""
    signal.signal(signal.SIGTERM, interrupt_on_sigterm)
    try:
        return run()
    except StepFailedError as error:
        error.report("make orchestrate")
        return 1


if __name__ == "__main__":
    sys.exit(main())
