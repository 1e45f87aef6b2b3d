"""Fixtures that start in-process sandboxes on 127.0.0.1, and the clients and webhook
receivers that talk to them; all are stopped at teardown (the classes are in
tests/helpers/sandboxes.py; `sandbox` is the session-wide one of tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tap_gtmcli.sandbox import SandboxServer
from tests.helpers.keys import API_KEY
from tests.helpers.sandboxes import Receiver, SandboxClient, fast_sandbox

SandboxFactory = Callable[..., SandboxServer]


@pytest.fixture
def make_sandbox() -> Iterator[SandboxFactory]:
    """Start sandboxes with config overrides (jobs complete at once unless told)."""
    started: list[SandboxServer] = []

    def make(**overrides: Any) -> SandboxServer:
        server = fast_sandbox(**overrides).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def make_client() -> Iterator[Callable[..., SandboxClient]]:
    """Clients for given sandboxes."""
    clients: list[SandboxClient] = []

    def make(server: SandboxServer, api_key: str = API_KEY) -> SandboxClient:
        client = SandboxClient(server, api_key)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(sandbox: SandboxServer, make_client: Callable[..., SandboxClient]) -> SandboxClient:
    """An authenticated client of `sandbox`."""
    return make_client(sandbox)


@pytest.fixture
def make_receiver() -> Iterator[Callable[[int], Receiver]]:
    """Webhook endpoints failing their first `failures` deliveries."""
    receivers: list[Receiver] = []

    def make(failures: int = 0) -> Receiver:
        receivers.append(Receiver(failures))
        return receivers[-1]

    yield make
    for receiver in receivers:
        receiver.close()
