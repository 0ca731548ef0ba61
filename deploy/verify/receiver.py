"""A webhook receiver for deploy/verify.sh: records every POST, lists them on GET /received.

Runs inside the compose network (the recsys image's Python, standard library only), so the
service delivers its callbacks to ``http://receiver:8080/...`` as it would to any receiver.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RECEIVED: list[dict[str, object]] = []
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with LOCK:
            RECEIVED.append({"path": self.path, "headers": dict(self.headers.items()),
                             "body": body.decode("utf-8", "replace")})
        self._reply(200, b"ok")

    def do_GET(self) -> None:
        with LOCK:
            payload = json.dumps(RECEIVED).encode()
        self._reply(200, payload)

    def _reply(self, status: int, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
