"""Helpers for the training integration tests: upload synthetic data, poll a run."""

from __future__ import annotations

import json
import time
from typing import Any

import pyarrow.compute as pc
import requests

from tests.helpers.stack import Stack
from tests.helpers.synthetic import clustered


def upload_clustered(stack: Stack, http: requests.Session, tag: str, **kwargs: Any) -> int:
    """Upload synthetic clustered data through POST /data_batch; returns interactions sent."""
    entities, interactions = clustered(**kwargs)
    ents = [{"id": r["id"], "type": r["type"], "name": r["name"],
             "metadata": json.loads(r["metadata"]), "media_url": None}
            for r in entities.to_pylist()]
    ts = interactions.column("timestamp")
    rows = interactions.set_column(
        interactions.schema.get_field_index("timestamp"), "timestamp",
        pc.strftime(ts, format="%Y-%m-%dT%H:%M:%SZ"),
    ).to_pylist()
    inters = [{"type": r["type"], "source_id": r["source_id"], "target_id": r["target_id"],
               "timestamp": r["timestamp"], "metadata": {}} for r in rows]
    response = http.post(stack.url("/data_batch"), headers=stack.headers(), timeout=120,
                         json={"entities": ents, "interactions": inters, "tags": [tag]})
    assert response.status_code == 201, response.text
    return len(inters)


def status(stack: Stack, http: requests.Session, model_id: str) -> dict[str, Any]:
    """GET /status/<model_id> as JSON (asserting 200)."""
    response = http.get(stack.url(f"/status/{model_id}"), headers=stack.headers(), timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_until_ended(stack: Stack, http: requests.Session, model_id: str,
                     timeout: float = 90) -> tuple[dict[str, Any], list[int]]:
    """Poll until the latest run ends; returns its final status and every progress seen."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = status(stack, http, model_id)
        seen.append(int(body["progress"]))
        if body["status"] != "running":
            return body, seen
        time.sleep(0.05)
    raise AssertionError(f"{model_id} still running after {timeout} s: {body}")


def wait_for_phase(stack: Stack, http: requests.Session, model_id: str, phase: str,
                   timeout: float = 60) -> dict[str, Any]:
    """Poll until the run reaches ``phase``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = status(stack, http, model_id)
        if body["phase"] == phase:
            return body
        assert body["status"] == "running", body
        time.sleep(0.05)
    raise AssertionError(f"{model_id} never reached {phase}")
