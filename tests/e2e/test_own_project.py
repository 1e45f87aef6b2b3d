"""A newcomer's own Meltano project, as README "Use it in your own Meltano project" says.

In a fresh directory outside this repository: `meltano init`, the three plugins added
from `plugins/*.yml` (their `pip_url` pointed at this checkout, as the README says for a
local path), the README's `dev` environment and mapping, the sandbox started and seeded
from the plugin's own venv. Then contacts -> mapper-gtmcli -> the sandbox, and
tap-gtmcli -> target-jsonl, checked row for row; a second extraction loads nothing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tap_gtmcli.demo.meltano_project import PROJECT_ROOT, MeltanoProject, base_environment
from tests.helpers import key_scan
from tests.helpers.keys import API_KEY as TEST_API_KEY
from tests.helpers.meltano import NOTHING_NEW, installing
from tools.readme_settings import README

pytestmark = pytest.mark.e2e

#: The README's commands, run in the new project (GTMCLI_PLUGINS: where the definitions
#: were copied). The test runs these lines and checks the README shows them.
ADD_COMMANDS = (
    "meltano add --plugin-type extractor tap-gtmcli --from-ref"
    " gtmcli-plugins/extractors/tap-gtmcli--gtmcli.yml --no-install",
    "meltano add --plugin-type mapper mapper-gtmcli --from-ref"
    " gtmcli-plugins/mappers/mapper-gtmcli--gtmcli.yml --no-install",
    "meltano add --plugin-type loader target-gtmcli --from-ref"
    " gtmcli-plugins/loaders/target-gtmcli--gtmcli.yml --no-install",
)
README_SANDBOX_URL = "http://127.0.0.1:8765"
README_SANDBOX_KEY = "sandbox-key"
SEEDED_JOBS, SEEDED_ROWS_PER_JOB, CONTACTS = 2, 30, 25
#: The test's own upstream tap and loader, defined by hand (Meltano Hub is unreachable);
#: the same pins as this repository's meltano.yml.
UPSTREAM_AND_LOADER = {
    "extractors": {
        "name": "tap-spreadsheets", "namespace": "tap_spreadsheets",
        "pip_url": "tap-spreadsheets==1.1.2", "executable": "tap-spreadsheets",
        "capabilities": ["catalog", "discover", "state", "about", "stream-maps"],
        "settings": [{"name": "files", "kind": "array"}],
        "config": {"files": [{"path": "contacts.csv", "format": "csv",
                              "table_name": "contacts", "primary_keys": ["id"]}]},
    },
    "loaders": {
        "name": "target-jsonl", "namespace": "target_jsonl", "pip_url": "target-jsonl==0.1.4",
        "executable": "target-jsonl",
        "settings": [{"name": "destination_path", "kind": "string"},
                     {"name": "do_timestamp_file", "kind": "boolean"}],
        "config": {"destination_path": "output", "do_timestamp_file": False},
    },
}


def readme_yaml_block(marker: str) -> str:
    """The README's ```yaml block that contains `marker`, as written."""
    blocks = README.read_text(encoding="utf-8").split("```yaml\n")[1:]
    (block,) = [block.split("```", 1)[0] for block in blocks if marker in block]
    return block


class NewProject:
    """`meltano` commands in a directory of its own, with this repository's Meltano."""

    def __init__(self, root: Path, meltano: Path) -> None:
        self.root = root
        self.meltano = meltano
        self.env = {name: value for name, value in base_environment().items()
                    if "GTMCLI" not in name and not name.startswith("MELTANO_")}
        self.env["MELTANO_SEND_ANONYMOUS_USAGE_STATS"] = "false"
        #: Seconds each command took, for the figures line.
        self.took: list[str] = []

    def __call__(self, command: str, cwd: Path | None = None) -> str:
        arguments = command.split()
        assert arguments[0] == "meltano"
        started = time.monotonic()
        done = subprocess.run([str(self.meltano), *arguments[1:]], cwd=cwd or self.root,
                              env=self.env, capture_output=True, text=True, check=False)
        self.took.append(f"{' '.join(arguments[1:3])} {time.monotonic() - started:.0f}")
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout + done.stderr

    def plugin_bin(self, plugin_type: str, name: str, executable: str) -> Path:
        return self.root / ".meltano" / plugin_type / name / "venv" / "bin" / executable

    def edit(self, change: Any) -> None:
        path = self.root / "meltano.yml"
        project = yaml.safe_load(path.read_text(encoding="utf-8"))
        change(project)
        path.write_text(yaml.safe_dump(project, sort_keys=False), encoding="utf-8")

    def lines(self, stream: str) -> list[dict[str, Any]]:
        path = self.root / "output" / f"{stream}.jsonl"
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def sandbox_from_plugin_venv() -> Iterator[list[subprocess.Popen[str]]]:
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        process.terminate()
        process.communicate(timeout=10)


@pytest.fixture
def project_root(tmp_path: Path) -> Iterator[Path]:
    """Where the new project goes; what Meltano and the sandbox write there is key-scanned."""
    root = tmp_path / "my-project"
    key_scan.watch_tree(root / ".meltano", since=time.time())
    key_scan.watch_tree(root / "output", since=time.time())
    yield root
    key_scan.assert_clean()
    key_scan.unwatch_tree(root / ".meltano")
    key_scan.unwatch_tree(root / "output")


def test_a_new_project_adds_the_plugins_and_runs_sandbox_mapper_tap_target(
    tmp_path: Path, project_root: Path, sandbox_from_plugin_venv: list[subprocess.Popen[str]],
    print_figures,
) -> None:
    started = time.monotonic()
    meltano_in_repo = MeltanoProject(log_dir=tmp_path / "logs")
    with installing(meltano_in_repo):
        meltano_in_repo.ensure_meltano()
    project = NewProject(project_root, meltano_in_repo.executable)
    assert not project.root.is_relative_to(PROJECT_ROOT)

    project("meltano init my-project --no-usage-stats", cwd=tmp_path)
    # README: copy the definitions and point their pip_url at a local checkout.
    shutil.copytree(PROJECT_ROOT / "plugins", project.root / "gtmcli-plugins")
    for definition in (project.root / "gtmcli-plugins").glob("*/*.yml"):
        text = definition.read_text(encoding="utf-8")
        assert "\npip_url: tap-gtmcli\n" in text
        definition.write_text(text.replace("\npip_url: tap-gtmcli\n",
                                           f"\npip_url: {PROJECT_ROOT}\n"), encoding="utf-8")
    readme = README.read_text(encoding="utf-8")
    for command in ADD_COMMANDS:
        assert command in readme
        project(command)

    environments = readme_yaml_block("- name: dev")
    mappings = readme_yaml_block("mappings:")

    def configure(meltano_yml: dict[str, Any]) -> None:
        (mapper,) = meltano_yml["plugins"]["mappers"]
        mapper["mappings"] = yaml.safe_load(mappings)["mappings"]
        for plugin_type, plugin in UPSTREAM_AND_LOADER.items():
            meltano_yml["plugins"][plugin_type].append(plugin)

    project.edit(configure)
    assert "Installed 5/5 plugins" in project("meltano install")
    for plugin_type, name in (("extractors", "tap-gtmcli"), ("mappers", "mapper-gtmcli"),
                              ("loaders", "target-gtmcli")):
        about = subprocess.run([str(project.plugin_bin(plugin_type, name, name)), "--about",
                                "--format=json"], capture_output=True, text=True, check=True)
        assert json.loads(about.stdout)["name"] == name
    installed = time.monotonic()

    # The sandbox and its seed, from the tap's venv (README), on a free port.
    sandbox_env = {**project.env, "GTMCLI_SANDBOX_API_KEY": TEST_API_KEY}
    sandbox_bin = project.plugin_bin("extractors", "tap-gtmcli", "gtmcli-sandbox")
    with (tmp_path / "sandbox.log").open("w") as log:
        sandbox = subprocess.Popen(
            [str(sandbox_bin), "--port", "0", "--db", str(tmp_path / "sandbox.db"),
             "--start-delay", "0", "--processing-rate", "0"],
            stdout=subprocess.PIPE, stderr=log, text=True, env=sandbox_env)
    sandbox_from_plugin_venv.append(sandbox)
    key_scan.watch_file("sandbox log", tmp_path / "sandbox.log")
    assert sandbox.stdout is not None
    url = sandbox.stdout.readline().split()[-1]
    seeded = subprocess.run(
        [str(sandbox_bin), "seed", "--url", url, "--count", str(SEEDED_ROWS_PER_JOB),
         "--jobs", str(SEEDED_JOBS)], env=sandbox_env, capture_output=True, text=True,
        check=True).stdout.split()
    assert len(seeded) == SEEDED_JOBS

    # The README's dev settings, with this sandbox's port and the scanned test key.
    # `environments:` replaced whole, as the README says.
    project.edit(lambda meltano_yml: meltano_yml.update(yaml.safe_load(
        environments.replace(README_SANDBOX_URL, url).replace(README_SANDBOX_KEY, TEST_API_KEY))))
    (project.root / "contacts.csv").write_text(
        "id,email\n" + "".join(f"{n},person{n}@example.com\n" for n in range(1, CONTACTS + 1)),
        encoding="utf-8")

    # Submit, then extract, in one `meltano run` (one Meltano start-up less).
    first = project("meltano run tap-spreadsheets gtmcli-validate target-jsonl"
                    " tap-gtmcli target-jsonl")
    (submission,) = project.lines("gtmcli_submissions")
    assert (submission["job_type"], submission["item_count"]) == ("validate", CONTACTS)
    assert len(project.lines("contacts")) == CONTACTS
    jobs = project.lines("jobs")
    results = project.lines("job_results")
    assert sorted(job["id"] for job in jobs) == sorted([*seeded, submission["job_id"]])
    assert {job["status"] for job in jobs} == {"completed"}
    assert len(results) == SEEDED_JOBS * SEEDED_ROWS_PER_JOB + CONTACTS
    assert len({(row["job_id"], row["row_number"]) for row in results}) == len(results)
    assert sorted(row["email"] for row in results if row["job_id"] == submission["job_id"]) \
        == sorted(f"person{n}@example.com" for n in range(1, CONTACTS + 1))
    assert "No state was found" in first

    second = project("meltano run tap-gtmcli target-jsonl")
    assert NOTHING_NEW in second
    assert (len(project.lines("jobs")), len(project.lines("job_results"))) == (
        len(jobs), len(results))
    print_figures(f"own project: {installed - started:.0f} s to init, add and install, "
                  f"{time.monotonic() - installed:.0f} s to seed and run; seconds per"
                  f" command: {', '.join(project.took)}")
