"""A real HTTP webhook receiver for callback tests: records requests, replies as scripted."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook


@dataclass(frozen=True)
class Reply:
    """How the receiver answers one request."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    body: bytes = b"ok"


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def verify(self, secret: str) -> Any:
        """The parsed body, after standardwebhooks' own Webhook.verify accepted it."""
        return Webhook(secret).verify(self.body, self.headers)


class Receiver:
    """A ThreadingHTTPServer on 127.0.0.1 (a free port unless given)."""

    def __init__(self, port: int = 0, default: Reply | None = None) -> None:
        self.requests: list[Received] = []
        self.script: list[Reply] = []
        self.default = default or Reply()
        self._lock = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests.append(
                        Received(self.path, dict(self.headers.items()), body, time.time())
                    )
                    reply = receiver.script.pop(0) if receiver.script else receiver.default
                    receiver._lock.notify_all()
                time.sleep(reply.delay)
                with contextlib.suppress(OSError):
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def url(self, path: str = "/hook") -> str:
        """The receiver's URL for ``path``."""
        return f"http://127.0.0.1:{self.port}{path}"

    def reply(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies``, in order, then with the default."""
        with self._lock:
            self.script.extend(replies)

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        """Block until ``count`` requests arrived; the requests so far."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"expected {count} callback requests, got {len(self.requests)}"
                    )
                self._lock.wait(left)
            return list(self.requests)

    def stop(self) -> None:
        """Shut the server down and free its port."""
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def receiving(port: int = 0, default: Reply | None = None) -> Iterator[Receiver]:
    """A running receiver for the duration of the block."""
    receiver = Receiver(port, default)
    try:
        yield receiver
    finally:
        receiver.stop()
