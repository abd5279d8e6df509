"""HTTP plumbing of the master double: routes, error bodies, the threaded server."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import http
import json
import re
import socket
from collections.abc import Callable, Mapping
from http import server as http_server
from typing import Any, Literal, Protocol

from .records import GRPC_CODES


class Dispatcher(Protocol):
    """What the HTTP server calls for each request (the double)."""

    def _dispatch(
        self, method: str, raw_path: str, headers: Mapping[str, str], raw: bytes
    ) -> tuple[int, Any] | None: ...


class HttpError(Exception):
    """An error answer, with the body shape of Determined's gRPC gateway."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    params: dict[str, str]
    body: Any
    auth: Literal["user", "task"] | None


Handler = Callable[[Any, Request], Any]
"""A route handler: ``handler(master, request) -> JSON body`` (``master`` is the double)."""


@dataclasses.dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    name: str
    handler: Handler
    authenticated: bool = True


def error_body(status: int, message: str) -> dict[str, Any]:
    code = GRPC_CODES.get(status, 2)
    return {
        "code": code,
        "message": message,
        "error": {"code": code, "reason": http.HTTPStatus(status).phrase, "error": message},
    }


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


class HTTPServer(http_server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, double: Dispatcher) -> None:
        super().__init__(("127.0.0.1", 0), _RequestHandler)
        self.double = double


class _RequestHandler(http_server.BaseHTTPRequestHandler):
    server: HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log; hits are recorded in the double."""

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        outcome = self.server.double._dispatch(self.command, self.path, dict(self.headers), raw)
        if outcome is None:
            self._drop()
            return
        status, body = outcome
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


def route(method: str, pattern: str, handler: Handler, *, authenticated: bool = True) -> Route:
    """A route named after its handler (e.g. ``create_experiment``)."""
    return Route(method, re.compile(pattern), handler.__name__, handler, authenticated)
