"""The code location mirrors meltano.yml: its jobs, their task order, its schedules.

The commands the ops run are read from what they really start: a stand-in `meltano`
(a script recording its arguments and working directory) runs every job in process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from tap_gtmcli.demo.meltano_project import PROJECT_ROOT, MeltanoProject, base_environment
from tap_gtmcli.orchestration.definitions import build_definitions
from tap_gtmcli.orchestration.finished_jobs import FinishedCursor, newly_finished
from tap_gtmcli.orchestration.jobs import SKIPPED_TAG, STATE_IDS_TAG, dagster_name, state_ids
from tap_gtmcli.orchestration.project_file import (
    ProjectFileError,
    default_project_dir,
    load_project_file,
)
from tap_gtmcli.orchestration.task_layers import task_layers

MELTANO_YML = yaml.safe_load((PROJECT_ROOT / "meltano.yml").read_text(encoding="utf-8"))
#: A stand-in for `meltano`: records its arguments and directory, prints what the test
#: says, exits with the code the test says.
RECORDER = """#!{python}
import json, os, sys
with open(os.environ["RECORDED_COMMANDS"], "a", encoding="utf-8") as log:
    log.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd()}}) + "\\n")
print(os.environ.get("RECORDER_SAYS", ""), flush=True)
sys.exit(int(os.environ.get("RECORDER_EXIT", "0")))
"""
REFUSAL = ("Another 'dev:tap-gtmcli-to-target-duckdb' pipeline is already running which "
           "started at 2026-12-03 14:30:01.123456")


@pytest.fixture
def recording_meltano(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """The stand-in's path, and the file where it records each command."""
    script = tmp_path / "meltano"
    script.write_text(RECORDER.format(python=sys.executable))
    script.chmod(0o755)
    log = tmp_path / "commands.jsonl"
    monkeypatch.setenv("RECORDED_COMMANDS", str(log))
    return str(script), log


def recorded(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_definitions_load_every_job_schedule_and_the_sensor():
    defs = build_definitions()
    dg.Definitions.validate_loadable(defs)
    repository = defs.get_repository_def()

    meltano_jobs = {job["name"].replace("-", "_"): job for job in MELTANO_YML["jobs"]}
    assert {job.name for job in repository.get_all_jobs()} == set(meltano_jobs)

    crons = {"@hourly": "0 * * * *", "@daily": "0 0 * * *"}
    assert {(s.name, s.job_name, s.cron_schedule) for s in repository.schedule_defs} == {
        (s["name"].replace("-", "_"), s["job"].replace("-", "_"),
         crons.get(s["interval"], s["interval"]))
        for s in MELTANO_YML["schedules"]
    }
    sensor = repository.get_sensor_def("gtmcli_extract_on_finished_gtmcli_jobs")
    assert sensor.job_name == "gtmcli_extract"


@pytest.mark.parametrize("meltano_job", MELTANO_YML["jobs"], ids=lambda job: job["name"])
def test_each_job_runs_meltano_run_of_each_of_its_tasks_in_the_project(
    recording_meltano: tuple[str, Path], meltano_job: dict[str, Any],
):
    script, log = recording_meltano
    job = build_definitions(meltano_bin=script).get_job_def(dagster_name(meltano_job["name"]))
    result = job.execute_in_process()
    assert result.success
    commands = recorded(log)
    assert sorted(command["argv"] for command in commands) == sorted(
        ["run", *task.split()] for task in meltano_job["tasks"])
    assert {command["cwd"] for command in commands} == {str(PROJECT_ROOT)}


def test_a_refusal_by_meltanos_run_guard_is_skipped_not_failed(
    recording_meltano: tuple[str, Path], monkeypatch: pytest.MonkeyPatch,
):
    script, log = recording_meltano
    monkeypatch.setenv("RECORDER_SAYS", f"2026-12-03T14:31:00.000000Z [error    ] {REFUSAL}. "
                                        "Wait until 2026-12-03 14:35:01 when the job ...")
    monkeypatch.setenv("RECORDER_EXIT", "1")
    job = build_definitions(meltano_bin=script).get_job_def("gtmcli_extract")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance)
        run_tags = instance.get_run_by_id(result.run_id).tags
        logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert result.success
    (output,) = [event.event_specific_data for event in result.all_events
                 if event.event_type_value == "STEP_OUTPUT"]
    assert output.metadata["outcome"].value == "skipped"
    assert output.metadata["reason"].value == REFUSAL
    assert run_tags[SKIPPED_TAG] == REFUSAL
    assert f"`meltano run tap-gtmcli target-duckdb` skipped: {REFUSAL}" in logs
    assert len(recorded(log)) == 1


def test_any_other_exit_fails_the_op_naming_meltanos_error_lines(
    recording_meltano: tuple[str, Path], monkeypatch: pytest.MonkeyPatch,
):
    script, _ = recording_meltano
    monkeypatch.setenv("RECORDER_SAYS", "2026-12-03T14:31:00.000000Z [error    ] Extractor failed")
    monkeypatch.setenv("RECORDER_EXIT", "2")
    job = build_definitions(meltano_bin=script).get_job_def("gtmcli_extract")
    result = job.execute_in_process(raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].event_specific_data.error.message
    assert "`meltano run tap-gtmcli target-duckdb` exited with code 2:\nExtractor failed" in (
        failure)


def test_progress_lines_are_log_events_and_the_rest_is_stdout_each_shown_once(
    recording_meltano: tuple[str, Path], monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
):
    script, _ = recording_meltano
    progress = "target-duckdb Loading 7 rows into 'warehouse.gtmcli.jobs'"
    plain = "meltano Running catalog discovery"
    monkeypatch.setenv("RECORDER_SAYS", f"2026-12-03T14:31:00.000000Z [info     ] {progress}\n"
                                        f"2026-12-03T14:31:00.000000Z [info     ] {plain}")
    job = build_definitions(meltano_bin=script).get_job_def("gtmcli_extract")
    capfd.readouterr()
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance)
        events = [entry.user_message for entry in instance.all_logs(result.run_id)]
    shown = capfd.readouterr()
    assert result.success
    assert events.count(progress) == 1
    assert plain not in "\n".join(events)
    assert shown.out.count(plain) == 1
    assert progress not in shown.out
    # Dagster's console logger shows the event once, on stderr.
    assert (shown.out + shown.err).count(progress) == 1


def test_the_accounts_run_side_by_side_and_other_tasks_keep_their_order():
    accounts = build_definitions().get_job_def("gtmcli_extract_accounts")
    assert len(accounts.graph.node_defs) == 2
    assert all(not upstream for upstream in accounts.graph.dependencies.values())

    extractors = {"tap-a", "tap-b"}
    tasks = [("tap-a", "target"), ("tap-b", "target"), ("dbt:run",), ("tap-a", "target"),
             ("tap-a", "other-target"), ("tap-b", "target")]
    assert task_layers(tasks, extractors) == [[0, 1], [2], [3], [4, 5]]


def test_a_job_whose_tasks_must_wait_is_chained(tmp_path: Path):
    (tmp_path / "meltano.yml").write_text(
        "plugins: {extractors: [{name: tap-a}]}\n"
        "jobs:\n- name: el-then-transform\n  tasks: [tap-a target, [dbt:run, dbt:test]]\n"
    )
    job = build_definitions(tmp_path).get_job_def("el_then_transform")
    dependencies = {node.name: sorted(upstream) for node, upstream
                    in job.graph.dependencies.items()}
    assert dependencies == {"task_1__tap_a__target": [],
                            "task_2__dbt_run__dbt_test": ["after"]}


@pytest.mark.parametrize(("schedule", "message"), [
    ("{name: nightly, interval: '@daily', job: nope}", "schedule 'nightly' must name one of"),
    ("{name: odd, interval: 'every day', job: j}", "schedule 'odd': interval 'every day'"),
    ("{name: legacy, interval: '@daily', extractor: tap-a, loader: t}",
     "extractor/loader schedules are not supported"),
])
def test_a_schedule_the_code_location_cannot_run_is_named(
    tmp_path: Path, schedule: str, message: str
):
    (tmp_path / "meltano.yml").write_text(
        f"jobs: [{{name: j, tasks: [tap-a target]}}]\nschedules: [{schedule}]\n")
    with pytest.raises(ProjectFileError, match=message):
        load_project_file(tmp_path)


#: (extractor, Meltano environment, variables, what Meltano resolves): each case asked
#: of `meltano config print` itself, and of the sensor's resolver.
SETTING_CASES = [
    ("tap-x", "dev", {"TAP_X_API_URL": "https://var", "SECRET_FROM_ENV": "k1"},
     {"api_url": "https://var", "api_key": "k1"}),
    ("tap-x", "prod", {}, {"api_url": "https://project", "api_key": None}),
    ("tap-x-child", "dev", {}, {"api_url": "https://project", "api_key": "from-dotenv"}),
    ("tap-x-child", "dev", {"TAP_X_API_URL": "https://var", "TAP_X_CHILD_API_KEY": "k2"},
     {"api_url": "https://var", "api_key": "k2"}),
]


def test_settings_resolve_as_meltano_resolves_them(
    tmp_path: Path, meltano_project: MeltanoProject,
):
    (tmp_path / "meltano.yml").write_text("""
default_environment: dev
plugins:
  extractors:
  - name: tap-x
    namespace: tap_x
    settings: [{name: api_url, value: https://default}, {name: api_key}]
    config: {api_url: https://project}
  - name: tap-x-child
    inherit_from: tap-x
environments:
- name: dev
  config: {plugins: {extractors: [{name: tap-x, config: {api_key: $SECRET_FROM_ENV}}]}}
- name: prod
""")
    (tmp_path / ".env").write_text("SECRET_FROM_ENV=from-dotenv\n")
    project = load_project_file(tmp_path)
    base = {name: value for name, value in base_environment().items()
            if not name.startswith(("TAP_X", "SECRET_FROM_ENV", "MELTANO_"))}
    # Asked all at once (each `meltano` start costs seconds), each with a system database
    # of its own: processes creating one new database at once race on its migration.
    asked = [subprocess.Popen(
        [str(meltano_project.executable), f"--environment={environment}", "config",
         "--unsafe", "print", "--format=json", extractor],
        cwd=tmp_path, env={**base, "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
                           "MELTANO_DATABASE_URI": f"sqlite:///{tmp_path / f'meltano-{case}.db'}",
                           **variables},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) for case, (extractor, environment, variables, _) in enumerate(SETTING_CASES)]
    answers = []
    for process in asked:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
        answers.append(json.loads(out))

    for (extractor, environment, variables, expected), meltano in zip(
            SETTING_CASES, answers, strict=True):
        meltano_says = {name: meltano.get(name) for name in expected}
        assert meltano_says == expected, (extractor, environment, variables)
        ours = {name: project.extractor_setting(extractor, name, environment,
                                                project.environ(variables))
                for name in expected}
        assert ours == meltano_says, (extractor, environment, variables)
    with pytest.raises(ProjectFileError, match="no extractor named 'tap-y'"):
        project.extractor_setting("tap-y", "api_url", "dev", {})


def test_the_project_dotenv_is_read_under_the_process_environment(tmp_path: Path):
    (tmp_path / "meltano.yml").write_text("""
plugins:
  extractors:
  - name: tap-x
    settings: [{name: api_key}]
""")
    (tmp_path / ".env").write_text(
        "# keys\nexport TAP_X_API_KEY='from-dotenv'\nOTHER=\"quoted value\"\n\nnot a line\n"
    )
    project = load_project_file(tmp_path)
    assert project.dotenv == {"TAP_X_API_KEY": "from-dotenv", "OTHER": "quoted value"}
    assert project.extractor_setting("tap-x", "api_key", None, project.environ({})) == (
        "from-dotenv"
    )
    assert project.extractor_setting(
        "tap-x", "api_key", None, project.environ({"TAP_X_API_KEY": "from-env"})
    ) == "from-env"


def _job(job_id: str, status: str, completed_at: str | None) -> dict[str, object]:
    return {"id": job_id, "status": status, "created_at": "2026-01-01T00:00:00Z",
            "completed_at": completed_at}


def test_the_cursor_sees_each_finished_job_once():
    first = [_job("a", "completed", "2026-01-01T00:01:00Z"), _job("b", "processing", None)]
    new, cursor = newly_finished(first, FinishedCursor.decode(None))
    assert new == ["a"]
    assert newly_finished(first, FinishedCursor.decode(cursor.encode()))[0] == []

    # b finishes in the same second as a; c fails later; both are new, a is not.
    second = [_job("c", "failed", "2026-01-01T00:02:00Z"),
              _job("b", "completed", "2026-01-01T00:01:00Z"), first[0]]
    new, cursor = newly_finished(second, cursor)
    assert sorted(new) == ["b", "c"]
    assert cursor == FinishedCursor("2026-01-01T00:02:00.000000+00:00", frozenset({"c"}))
    assert newly_finished(second, cursor)[0] == []


def test_the_state_ids_a_run_is_queued_by_are_meltanos():
    # A mapping between extractor and loader does not count; the suffix comes last.
    task = ("tap-csv", "gtmcli-validate", "target-jsonl", "tap-gtmcli", "target-duckdb")
    assert state_ids([task, ("dbt:run",)], {"tap-csv", "tap-gtmcli"},
                     {"target-jsonl", "target-duckdb"}, "prod", "nightly") == [
        "prod:tap-csv-to-target-jsonl:nightly", "prod:tap-gtmcli-to-target-duckdb:nightly"]
    assert state_ids([("tap-a", "target")], {"tap-a"}, {"target"}, None) == ["tap-a-to-target"]
    collect = build_definitions().get_job_def("gtmcli_validate_and_collect")
    assert collect.tags[STATE_IDS_TAG] == (
        "dev:tap-gtmcli-to-target-duckdb,dev:tap-spreadsheets-to-target-jsonl")


def test_the_project_is_found_by_variable_or_working_directory_never_site_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
):
    (tmp_path / "meltano.yml").write_text("jobs: [{name: j, tasks: [tap-a target]}]\n")
    assert default_project_dir({"MELTANO_PROJECT_ROOT": str(tmp_path)}) == tmp_path.resolve()
    monkeypatch.chdir(tmp_path)
    assert default_project_dir({}) == tmp_path.resolve()
    assert [job.name for job in build_definitions().get_repository_def().get_all_jobs()] == ["j"]
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    monkeypatch.chdir(empty)
    with pytest.raises(ProjectFileError, match=r"no meltano.yml in .*elsewhere: start Dagster "
                       r"in the Meltano project's directory, or set MELTANO_PROJECT_ROOT"):
        default_project_dir({})
