"""Fixtures that run in-process sandboxes on 127.0.0.1 and clients that talk to them."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


class Receiver:
    """A webhook endpoint on 127.0.0.1 that fails its first `failures` deliveries."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.deliveries: list[tuple[float, dict[str, Any]]] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.arrived:
                    receiver.deliveries.append((time.monotonic(), json.loads(body)))
                    attempt = len(receiver.deliveries)
                    receiver.arrived.notify_all()
                status = 500 if attempt <= receiver.failures else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait_for(self, count: int, timeout: float = 5.0) -> list[tuple[float, dict[str, Any]]]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.deliveries) >= count, timeout)
            return list(self.deliveries)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def make_receiver() -> Iterator[Callable[[int], Receiver]]:
    receivers: list[Receiver] = []

    def make(failures: int = 0) -> Receiver:
        receivers.append(Receiver(failures))
        return receivers[-1]

    yield make
    for receiver in receivers:
        receiver.close()
