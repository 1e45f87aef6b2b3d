"""The code location mirrors meltano.yml: its jobs, their task order, its schedules."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml

from tap_gtmcli.demo.meltano_project import PROJECT_ROOT
from tap_gtmcli.orchestration.definitions import build_definitions
from tap_gtmcli.orchestration.finished_jobs import FinishedCursor, newly_finished
from tap_gtmcli.orchestration.project_file import ProjectFileError, load_project_file
from tap_gtmcli.orchestration.task_layers import task_layers

MELTANO_YML = yaml.safe_load((PROJECT_ROOT / "meltano.yml").read_text(encoding="utf-8"))


def test_definitions_load_every_job_schedule_and_the_sensor():
    defs = build_definitions()
    dg.Definitions.validate_loadable(defs)
    repository = defs.get_repository_def()

    meltano_jobs = {job["name"].replace("-", "_"): job for job in MELTANO_YML["jobs"]}
    assert {job.name for job in repository.get_all_jobs()} == set(meltano_jobs)
    for name, meltano_job in meltano_jobs.items():
        ops = defs.get_job_def(name).graph.node_defs
        assert sorted(op.description or "" for op in ops) == sorted(
            f"meltano run {task}" for task in meltano_job["tasks"])

    crons = {"@hourly": "0 * * * *", "@daily": "0 0 * * *"}
    assert {(s.name, s.job_name, s.cron_schedule) for s in repository.schedule_defs} == {
        (s["name"].replace("-", "_"), s["job"].replace("-", "_"),
         crons.get(s["interval"], s["interval"]))
        for s in MELTANO_YML["schedules"]
    }
    sensor = repository.get_sensor_def("gtmcli_extract_on_finished_gtmcli_jobs")
    assert sensor.job_name == "gtmcli_extract"


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


def test_settings_resolve_as_meltano_resolves_them(tmp_path: Path):
    (tmp_path / "meltano.yml").write_text("""
default_environment: dev
plugins:
  extractors:
  - name: tap-x
    settings: [{name: api_url, value: https://default}, {name: api_key}]
    config: {api_url: https://project}
  - name: tap-x-child
    inherit_from: tap-x
environments:
- name: dev
  config: {plugins: {extractors: [{name: tap-x, config: {api_key: $SECRET_FROM_ENV}}]}}
- name: prod
""")
    project = load_project_file(tmp_path)

    def setting(extractor: str, name: str, environment: str, environ: dict[str, str]) -> object:
        return project.extractor_setting(extractor, name, environment, environ)

    assert setting("tap-x", "api_url", "dev", {}) == "https://project"
    assert setting("tap-x", "api_url", "dev", {"TAP_X_API_URL": "https://var"}) == "https://var"
    assert setting("tap-x", "api_key", "dev", {"SECRET_FROM_ENV": "k1"}) == "k1"
    assert setting("tap-x", "api_key", "prod", {}) is None
    assert setting("tap-x-child", "api_key", "dev", {"SECRET_FROM_ENV": "k1"}) == "k1"
    assert setting("tap-x-child", "api_key", "dev", {"TAP_X_CHILD_API_KEY": "k2",
                                                     "SECRET_FROM_ENV": "k1"}) == "k2"
    with pytest.raises(ProjectFileError, match="no extractor named 'tap-y'"):
        setting("tap-y", "api_url", "dev", {})


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
