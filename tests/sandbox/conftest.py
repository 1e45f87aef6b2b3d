"""Fixtures that run in-process sandboxes on 127.0.0.1 and clients that talk to them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from tap_gtmcli.sandbox import SandboxConfig, SandboxServer

API_KEY = "sandbox-key"


class SandboxClient:
    """A requests.Session bound to one sandbox, with the key already set."""

    def __init__(self, server: SandboxServer, api_key: str = API_KEY) -> None:
        self.server = server
        self.session = requests.Session()
        # Never let a proxy from the environment see loopback traffic.
        self.session.trust_env = False
        self.session.headers["Authorization"] = f"Bearer {api_key}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 10)
        return self.session.request(method, f"{self.server.url}{path}", **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def create_job(self, job_type: str, data: list[dict[str, Any]], **extra: Any) -> str:
        response = self.post("/v1/jobs", json={"type": job_type, "data": data, **extra})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def close(self) -> None:
        self.session.close()


SandboxFactory = Callable[..., SandboxServer]


@pytest.fixture
def make_sandbox() -> Iterator[SandboxFactory]:
    """Start sandboxes with config overrides; all are stopped at teardown."""
    started: list[SandboxServer] = []

    def make(**overrides: Any) -> SandboxServer:
        settings: dict[str, Any] = {"start_delay": 0.0, "processing_rate": 0.0}
        settings.update(overrides)
        server = SandboxServer(SandboxConfig(**settings)).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def make_client() -> Iterator[Callable[..., SandboxClient]]:
    """Clients for given sandboxes; all sessions are closed at teardown."""
    clients: list[SandboxClient] = []

    def make(server: SandboxServer, api_key: str = API_KEY) -> SandboxClient:
        client = SandboxClient(server, api_key)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def sandbox(make_sandbox: SandboxFactory) -> SandboxServer:
    """A sandbox whose jobs complete the moment they are created."""
    return make_sandbox()


@pytest.fixture
def client(sandbox: SandboxServer, make_client: Callable[..., SandboxClient]) -> SandboxClient:
    """An authenticated client of `sandbox`."""
    return make_client(sandbox)
