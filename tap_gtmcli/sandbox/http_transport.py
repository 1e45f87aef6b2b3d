"""Bytes on the wire: a keep-alive HTTP/1.1 server that hands requests to SandboxApp."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec

from tap_gtmcli.sandbox.app import Request, Response, SandboxApp
from tap_gtmcli.sandbox.errors import error_code_for

logger = logging.getLogger("tap_gtmcli.sandbox.http")

# 100,000 find items with generous extra fields stay well under this.
MAX_BODY_BYTES = 128 * 1024 * 1024
IDLE_KEEP_ALIVE_SECONDS = 120
#: How long stop() waits for handlers still answering a request (slow faults end at once).
HANDLER_FINISH_SECONDS = 10.0


class SandboxHTTPServer(ThreadingHTTPServer):
    """A thread per connection; stop() closes idle keep-alive connections.

    Handler threads are daemons, so a client's idle keep-alive connection never holds
    the interpreter open (a non-daemon handler waits up to `IDLE_KEEP_ALIVE_SECONDS` for
    its next request). `server_close` still waits for the handlers, briefly: those busy
    with a request finish it before the store closes, idle ones end as soon as
    `close_connections` wakes them.
    """

    daemon_threads = True
    allow_reuse_address = True
    #: Connections the kernel queues before they are accepted. socketserver's default, 5,
    #: drops the SYNs of a client opening dozens of connections at once (a read-ahead
    #: window): they are sent again a second later, as a hosted API would never make
    #: them wait.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], app: SandboxApp) -> None:
        super().__init__(address, SandboxRequestHandler)
        self.app = app
        self._connections: set[socket.socket] = set()
        self._handlers: set[threading.Thread] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Serve one connection, known to `server_close` while it runs."""
        this = threading.current_thread()
        with self._connections_lock:
            self._handlers.add(this)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._handlers.discard(this)

    def server_close(self) -> None:
        """Close the listening socket, then let running handlers finish (bounded)."""
        super().server_close()
        with self._connections_lock:
            handlers = list(self._handlers)
        deadline = time.monotonic() + HANDLER_FINISH_SECONDS
        for handler in handlers:
            handler.join(max(0.0, deadline - time.monotonic()))

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Wake every handler blocked on a keep-alive read so its thread can end."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients vanish mid-response all the time (drops, timeouts): not worth a traceback.
        logger.debug("connection from %s ended abruptly", client_address, exc_info=True)


class SandboxRequestHandler(BaseHTTPRequestHandler):
    """Reads one request, asks the app, writes the answer in a single send."""

    protocol_version = "HTTP/1.1"
    server_version = "gtmcli-sandbox/0.1"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = IDLE_KEEP_ALIVE_SECONDS
    server: SandboxHTTPServer

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def _serve(self, method: str) -> None:
        body = self._read_body()
        if body is None:
            return
        url = urlsplit(self.path)
        request = Request(
            method=method,
            path=url.path,
            query=parse_qs(url.query),
            authorization=self.headers.get("Authorization"),
            body=body,
        )
        response = self.server.app.handle(request)
        if response.drop:
            self.close_connection = True
            return
        self._write(response)

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length_header = self.headers.get("Content-Length") or "0"
        try:
            length = int(length_header)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            self._write_error(400, "the request body is missing a valid Content-Length or too big")
            return None
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes | None:
        chunks: list[bytes] = []
        size_so_far = 0
        while True:
            size_line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                size = -1
            if size < 0 or size_so_far + size > MAX_BODY_BYTES:
                self.close_connection = True
                self._write_error(400, "malformed or oversized chunked body")
                return None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            size_so_far += size
            self.rfile.readline(3)

    def _write(self, response: Response) -> None:
        phrase = _reason(response.status)
        lines = [
            f"HTTP/1.1 {response.status} {phrase}",
            f"Server: {self.server_version}",
            f"Date: {self.date_time_string()}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
        ]
        lines.extend(f"{name}: {value}" for name, value in response.headers.items())
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if response.drip_seconds and self.command != "HEAD":
            self._drip(head, response.body, response.drip_seconds)
        else:
            self.wfile.write(head + response.body if self.command != "HEAD" else head)
        self.log_request(response.status, len(response.body))

    def _drip(self, head: bytes, body: bytes, seconds: float) -> None:
        """Headers at once, then the body a byte at a time (until the client gives up)."""
        self.wfile.write(head)
        for offset in range(len(body)):
            if self.server.app.stopping.wait(seconds):
                return
            try:
                self.wfile.write(body[offset:offset + 1])
                self.wfile.flush()
            except OSError:
                return

    def _write_error(self, status: int, message: str) -> None:
        body = msgspec.json.encode({"error": error_code_for(status), "message": message})
        self._write(Response(status, body))

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed requests get the API's JSON error body too, then the connection closes."""
        self.close_connection = True
        status = 405 if code == HTTPStatus.NOT_IMPLEMENTED else code
        self._write_error(status, message or _reason(status))

    def log_message(self, format: str, *args: Any) -> None:
        # The request line only: headers (and so the API key) are never logged.
        logger.debug("%s %s", self.address_string(), format % args)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
