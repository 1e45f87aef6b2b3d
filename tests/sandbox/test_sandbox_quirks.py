"""The sandbox's untrustworthy answers (`--quirk`, `/_sandbox/faults {"quirks": ...}`)."""

from __future__ import annotations

import requests

from tap_gtmcli.sandbox import SandboxConfig, SandboxServer
from tap_gtmcli.sandbox.cli import build_parser, config_from_arguments

KEY = "quirk-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def results(server: SandboxServer, job_id: str, page: int, per_page: int = 10) -> dict:
    answer = requests.get(f"{server.url}/v1/jobs/{job_id}/results", headers=AUTH, timeout=10,
                          params={"page": page, "per_page": per_page})
    answer.raise_for_status()
    return answer.json()


def test_quirks_are_set_replaced_and_cleared_over_http():
    with SandboxServer(SandboxConfig(api_key=KEY, start_delay=0)) as server:
        (job_id,) = server.seed_jobs("validate", 25)
        healthy = results(server, job_id, 2)
        faults = requests.post(f"{server.url}/_sandbox/faults", headers=AUTH, timeout=10,
                               json={"quirks": ["results-ignore-page", "results-total-pages-one"]})
        assert faults.json()["quirks"] == ["results-ignore-page", "results-total-pages-one"]
        bent = results(server, job_id, 2)
        assert bent["results"] == results(server, job_id, 1)["results"] != healthy["results"]
        assert bent["page"] == 2 and bent["total_pages"] == 1
        requests.post(f"{server.url}/_sandbox/faults", headers=AUTH, timeout=10,
                      json={"quirks": []})
        assert results(server, job_id, 2) == healthy


def test_an_unknown_quirk_is_refused_naming_the_known_ones():
    with SandboxServer(SandboxConfig(api_key=KEY)) as server:
        answer = requests.post(f"{server.url}/_sandbox/faults", headers=AUTH, timeout=10,
                               json={"quirks": ["results-sideways"]})
        assert answer.status_code == 400
        message = answer.json()["message"]
        assert "unknown quirks: results-sideways" in message and "results-short" in message


def test_quirks_from_the_command_line():
    arguments = build_parser().parse_args(["--quirk", "numeric-ids", "--quirk", "list-no-jobs"])
    config = config_from_arguments(arguments)
    assert config.quirks == ("numeric-ids", "list-no-jobs")
    with SandboxServer(config) as server:
        answer = requests.get(f"{server.url}/v1/jobs", timeout=10,
                              headers={"Authorization": f"Bearer {config.api_key}"})
        assert answer.json() == {"data": []}


def test_ids_of_any_characters_are_one_path_segment():
    with SandboxServer(SandboxConfig(api_key=KEY, start_delay=0)) as server:
        server.seed_jobs("validate", 3, ids=["a?b", ".."])
        served = requests.get(f"{server.url}/v1/jobs/a%3Fb", headers=AUTH, timeout=10)
        assert served.json()["id"] == "a?b"
        dots = requests.get(f"{server.url}/v1/jobs/%2E%2E/results", headers=AUTH, timeout=10)
        assert dots.status_code == 200 and len(dots.json()["results"]) == 3
