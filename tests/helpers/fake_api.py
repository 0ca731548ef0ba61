"""A tiny fake of the API on a real socket, for the CLI and client tests.

It answers canned responses per (method, path) and records every request, so tests check
what the CLI sends and what a user sees, with no broker and no real API.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from click.testing import CliRunner, Result

from shared.client.cli import cli

PREFIX = "/v1/recommender"


@dataclass
class Seen:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


Reply = tuple[int, Any] | Callable[["Seen"], tuple[int, Any]]


@dataclass
class FakeApi:
    """Routes (method, path) to canned replies; records requests."""

    routes: dict[tuple[str, str], Reply] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    def on(self, method: str, path: str, reply: Reply) -> None:
        """Answer ``method path`` (path under the API prefix) with ``reply``."""
        self.routes[(method, PREFIX + path if path.startswith("/") else path)] = reply

    def last(self, method: str, path: str) -> Seen:
        """The most recent request to ``method path``."""
        matches = [s for s in self.seen if s.method == method and s.path == PREFIX + path]
        assert matches, f"no {method} {path} among {[(s.method, s.path) for s in self.seen]}"
        return matches[-1]


def run(api: FakeApi, *args: str, key: str | None = "rk_test", env: dict[str, str] | None = None
        ) -> Result:
    """Invoke ``recsys --url <fake> [--api-key key] args...``."""
    base = ["--url", api.url] + (["--api-key", key] if key else [])
    environ = {"RECSYS_API_KEY": "", "RECSYS_URL": "", "RECSYS_HOST": "", "RECSYS_PORT": "",
               **(env or {})}
    return CliRunner().invoke(cli, [*base, *args], env=environ, catch_exceptions=False)


@contextlib.contextmanager
def running_fake_api() -> Iterator[FakeApi]:
    """A fake API served on a real loopback port until the block ends."""
    api = FakeApi()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            seen = Seen(self.command, parts.path, parse_qs(parts.query),
                        {k.lower(): v for k, v in self.headers.items()}, body)
            api.seen.append(seen)
            reply = api.routes.get((self.command, parts.path))
            if reply is None:
                status, payload = 404, {"error": {"code": "not_found", "message": "No route.",
                                                  "details": {}}}
            elif callable(reply):
                status, payload = reply(seen)
            else:
                status, payload = reply
            if isinstance(payload, str):
                data, ctype = payload.encode(), "text/csv"
            else:
                data, ctype = json.dumps(payload).encode(), "application/json"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _handle

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    api.url = f"http://127.0.0.1:{server.server_port}"
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()


def status(phase: str, progress: int, state: str = "running", **extra: Any) -> dict[str, Any]:
    """A status object as the API returns it."""
    return {"model_id": "m1", "version": 2, "start_timestamp": None, "end_timestamp": None,
            "status": state, "phase": phase, "message": f"{phase} now", "progress": progress,
            "data_batch_ids": ["b1"], "counts": None, "metrics": None, "callback": None,
            **extra}
