"""With Redis down the API answers 503 quickly, in the JSON format, never a 500 or a hang."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from werkzeug.serving import make_server

from api.app import create_app
from shared.config import Settings
from shared.keys import SCOPES, create_key
from shared.registry import connect
from shared.stack.embedded import start_embedded


def test_api_answers_503_fast_while_redis_is_down(tmp_path: Path) -> None:
    server = start_embedded(tmp_path / "redis")
    settings = Settings.from_env(
        {"RECSYS_REDIS_URL": server.url, "RECSYS_DATA_DIR": str(tmp_path / "var")}
    )
    raw, _ = create_key(connect(settings), "default", list(SCOPES))
    app = create_app(settings)
    http_server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{http_server.server_port}"
    import requests

    try:
        server.stop()
        for path, headers in [("/readyz", {}), ("/v1/recommender/webhook_secret", {"apikey": raw})]:
            started = time.monotonic()
            response = requests.get(base + path, headers=headers, timeout=10)
            elapsed = time.monotonic() - started
            assert response.status_code == 503, (path, response.text)
            assert "error" in response.json()
            assert elapsed < 5, f"{path} took {elapsed:.1f} s while Redis was down"
    finally:
        http_server.shutdown()
        server.stop()
