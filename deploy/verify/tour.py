"""The smoke tour of deploy/verify.sh: what a user of the compose stack would notice first.

``tour.py single VERIFY_SH``: the stack of deploy/docker-compose.yml (with verify.sh's image
override and a webhook receiver). ``tour.py twohost VERIFY_SH``: deploy/verify/twohost.yml.
Docker Compose is run through ``VERIFY_CALLBACK=1 VERIFY_SH compose|twohost ...`` so the
settings (socket, project name, env file) live in verify.sh alone. Standard library only:
it runs on the host's python3 without the project installed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.client as http_client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

T = TypeVar("T")
API = f"http://127.0.0.1:{os.environ.get('API_PORT', '18000')}"
FLOWER = f"http://127.0.0.1:{os.environ.get('FLOWER_PORT', '18555')}"
RECEIVER = f"http://127.0.0.1:{os.environ.get('RECEIVER_PORT', '18099')}"
PREFIX = "/v1/recommender"
START = time.monotonic()
#: Seconds within which every container must have exited after `compose stop` began (issue
#: #20), idle or serving the tour's requests. A training worker stopped mid-run is the
#: exception by design: it finishes its task within its stop_grace_period (2 min) and is
#: never SIGKILLed (deploy/README.md, "Stopping").
STOP_LIMIT = float(os.environ.get("RECSYS_VERIFY_STOP_LIMIT", "10"))
TRAIN_STOP_LIMIT = 120.0


def env_file() -> dict[str, str]:
    with open(os.environ["VERIFY_ENV"], encoding="utf-8") as fh:
        return dict(line.strip().split("=", 1) for line in fh if "=" in line)


SETTINGS = env_file()
KEY = SETTINGS["RECSYS_BOOTSTRAP_KEY"]
#: `up` never pulls with verify.sh's local images (this machine reaches no image registry).
UP = ("up", "-d", "--wait", "--wait-timeout", "300", "--pull", SETTINGS["RECSYS_VERIFY_PULL"])


def say(message: str) -> None:
    print(f"[tour {time.monotonic() - START:5.0f}s] {message}", file=sys.stderr, flush=True)


def run(verify_sh: str, *args: str, check: bool = True) -> str:
    env = {**os.environ, "VERIFY_CALLBACK": "1"}
    done = subprocess.run([verify_sh, *args], env=env, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise SystemExit(f"FAIL: {' '.join(args)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         ) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    # Only the http://127.0.0.1 URLs built above.
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})  # noqa: S310
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def api(method: str, path: str, body: Any = None) -> tuple[int, Any]:
    return http(method, API + PREFIX + path, body, {"apikey": KEY})


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 180.0) -> T:
    """Polls ``probe`` until it returns something other than None (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    delay = 0.2
    while True:
        try:
            value = probe()
        except (OSError, urllib.error.URLError):
            value = None
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"FAIL: timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"FAIL: {message}")
    say(f"ok: {message}")


def ready_with(workers: int) -> dict[str, Any] | None:
    status, body = http("GET", API + "/readyz")
    if status == 200 and body["checks"]["workers"] == f"{workers} answering":
        return dict(body)
    return None


def shop(users: int = 30, items: int = 20) -> dict[str, Any]:
    """A small shop with structure: user u likes the items of its group (u mod 4)."""
    entities = [{"id": f"i{i}", "type": "item", "name": f"item {i}",
                 "metadata": json.dumps({"group": str(i % 4)})} for i in range(items)]
    interactions = [{"type": "view", "source_id": f"u{u}", "target_id": f"i{i}",
                     "timestamp": "2025-01-01T00:00:00Z"}
                    for u in range(users) for i in range(items) if (i - u) % 4 == 0]
    return {"entities": entities, "interactions": interactions, "tags": ["verify"]}


def train(model_id: str, callback: str | None = None) -> None:
    body: dict[str, Any] = {"model_id": model_id, "evaluation": {"holdout": 0},
                            "hyperparameters": {"epochs": 5}, "use_metadata_features": False}
    if callback:
        body["callback_url"] = callback
    status, reply = api("POST", "/train", body)
    check(status == 202, f"POST /train {model_id} -> 202" + ("" if status == 202 else
                                                              f" (got {status} {reply})"))


def completed(model_id: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        status, body = api("GET", f"/status/{model_id}")
        if status == 200 and body["status"] == "error":
            raise SystemExit(f"FAIL: run {model_id} ended in error: {body['message']}")
        return dict(body) if status == 200 and body["status"] == "completed" else None
    return wait_for(f"run {model_id} to complete", probe, timeout=300)


def recommends(model_id: str) -> None:
    status, body = api("GET", f"/recommended_items?model_id={model_id}&source_id=u1")
    check(status == 200 and len(body["recommendations"]) == 10,
          f"{model_id} recommends 10 items for u1 (got {status})")


def verify_signature(secret: str, hook: dict[str, Any]) -> bool:
    """Standard Webhooks: v1,base64(HMAC-SHA256(key, id.timestamp.body))."""
    headers = {k.lower(): v for k, v in hook["headers"].items()}
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.{hook['body']}"
    expected = base64.b64encode(hmac.new(key, signed.encode(), hashlib.sha256).digest()).decode()
    return any(sig == f"v1,{expected}" for sig in headers["webhook-signature"].split())


def flower_auth() -> dict[str, str]:
    login = f"{SETTINGS['RECSYS_FLOWER_USER']}:{SETTINGS['RECSYS_FLOWER_PASSWORD']}"
    return {"Authorization": "Basic " + base64.b64encode(login.encode()).decode()}


def train_workers() -> dict[str, str]:
    """Task id -> the worker that ran it, for every finished training task Flower saw."""
    status, tasks = http("GET", FLOWER + "/api/tasks?taskname=recsys.train", None, flower_auth())
    if status != 200:
        raise SystemExit(f"FAIL: Flower /api/tasks -> {status}")
    found = {}
    for task_id, task in tasks.items():
        if task.get("state") == "SUCCESS":
            found[task_id] = str(task.get("worker"))
    return found


def _stamp(text: str) -> float:
    """Docker's RFC 3339 time (nanoseconds) as epoch seconds."""
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(head).replace(tzinfo=UTC).timestamp() + float(f"0.{frac or 0}")


def check_stopped(verify_sh: str, ids: list[str], began: float, what: str,
                  busy: frozenset[str] = frozenset()) -> None:
    """Every container exited on its stop signal (tini forwards it), none SIGKILLed, each
    within STOP_LIMIT of `compose stop` (``busy`` training workers: TRAIN_STOP_LIMIT)."""
    lines = run(verify_sh, "docker", "inspect", "-f",
                "{{.Name}} {{.State.ExitCode}} {{.State.FinishedAt}}", *ids).splitlines()
    # When the stop signal reached each container (dockerd's `kill` events).
    events = run(verify_sh, "docker", "events", "--since", f"{began - 1:.3f}",
                 "--until", f"{time.time():.3f}", "--filter", "event=kill",
                 "--format", "{{.Actor.Attributes.name}} {{.TimeNano}}").splitlines()
    signalled: dict[str, float] = {}
    for event in events:
        name, nanos = event.split()
        signalled.setdefault(name, int(nanos) / 1e9)
    took, own, report = {}, {}, []
    for line in lines:
        name, code, finished = line.split()
        name = name.strip("/")
        if code == "137":
            raise SystemExit(f"FAIL: {name} was SIGKILLed: it ignored its stop signal")
        took[name] = _stamp(finished) - began
        sig = signalled.get(name, began)
        own[name] = _stamp(finished) - sig
        report.append(f"{name.removeprefix('recsys-verify-')} {took[name]:.1f}"
                      f" (signal +{sig - began:.1f})")
    say(f"{what}: exited after (s from `compose stop`): {', '.join(sorted(report))}")
    # Each container within STOP_LIMIT of its own signal; and of `compose stop` too, but for
    # a training worker mid-run (TRAIN_STOP_LIMIT) and Redis, signalled after the last of
    # its clients (so after that worker) by compose's dependency order.
    waits_for_busy = {n for n in took if busy and n.endswith("-redis-1")}
    late = {n: round(t, 1) for n, t in took.items()
            if (own[n] >= STOP_LIMIT and n not in busy) or t >= TRAIN_STOP_LIMIT
            or (t >= STOP_LIMIT and n not in busy | waits_for_busy)}
    slowest = max(took, key=lambda n: took[n])
    check(not late,
          f"{what}: {len(ids)} containers exited on their stop signal, slowest {slowest} after "
          f"{took[slowest]:.1f} s (limit {STOP_LIMIT:.0f} s"
          + (f", {TRAIN_STOP_LIMIT:.0f} s for {len(busy)} training mid-run" if busy else "")
          + f"; load {os.getloadavg()[0]:.1f}); late: {late}")


def request_id_through_proxy() -> str:
    """The X-Request-Id the API echoes for one it was sent through nginx."""
    request = urllib.request.Request(  # noqa: S310 (the http://127.0.0.1 URL above)
        API + "/healthz", headers={"X-Request-Id": "verify-rid-1"})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return str(response.headers.get("X-Request-Id"))


def redis_cli(verify_sh: str, *args: str, auth: bool = True) -> str:
    """redis-cli in the Redis container (REDISCLI_AUTH there holds the password)."""
    unset = "" if auth else "unset REDISCLI_AUTH; "
    return run(verify_sh, "compose", "exec", "-T", "redis", "sh", "-c",
               f"{unset}redis-cli {' '.join(args)} 2>&1; true").strip()


def check_redis_locked(verify_sh: str) -> None:
    """No password, no access; protected mode; the memory ceiling, exported."""
    refused = redis_cli(verify_sh, "set", "verify-probe", "1", auth=False)
    check("NOAUTH" in refused, f"Redis without the password: {refused!r}")
    check(redis_cli(verify_sh, "config", "get", "protected-mode").split()[-1] == "yes"
          and redis_cli(verify_sh, "config", "get", "maxmemory").split()[-1] == str(1 << 30),
          "Redis: protected mode on, maxmemory 1gb, password required")
    _, metrics = http("GET", API + "/metrics")
    gauge = [line for line in str(metrics).splitlines()
             if line.startswith("recsys_redis_maxmemory_bytes")]
    check(bool(gauge) and float(gauge[0].split()[-1]) == 1 << 30,
          f"/metrics exports Redis's ceiling: {gauge}")


def check_redis_full(verify_sh: str) -> None:
    """At maxmemory (noeviction) what a client sees: a limit below what Redis uses, for a
    moment. Run on a stack without beat and the callbacks worker: a worker that receives a
    task at the ceiling dies ("Unrecoverable error: OutOfMemoryError", kombu cannot record
    the unacked message) and beat exits (deploy/README.md, "Redis")."""
    redis_cli(verify_sh, "config", "set", "maxmemory", "1")
    at_limit = time.time()

    def fresh_readiness() -> tuple[int, Any] | None:
        """/readyz from a probe that began after the limit (a probe takes up to 1 s)."""
        status, body = http("GET", API + "/readyz")
        details = body.get("error", {}).get("details", body) if isinstance(body, dict) else {}
        age = details.get("age_seconds")
        if age is not None and time.time() - float(age) > at_limit + 1.5:
            return status, details.get("checks")
        return None

    try:
        upload, body = api("POST", "/data_batch", shop(users=4, items=4))
        listed, _ = api("GET", "/data_batch")
        ready = wait_for("a /readyz probe made at the ceiling", fresh_readiness, timeout=30)
    finally:
        redis_cli(verify_sh, "config", "set", "maxmemory", "1gb")
    code = body.get("error", {}).get("code") if isinstance(body, dict) else body
    say(f"at maxmemory: POST /data_batch -> {upload} {code}; GET /data_batch -> {listed}; "
        f"/readyz -> {ready[0]} {ready[1]}")
    check(upload == 503 and code == "dependency_unavailable",
          "at maxmemory writes are refused with 503 dependency_unavailable")


class Load:
    """Request loops through the proxy (health, readiness, listings, recommendations), and a
    slow uploader whose body trickles in (nginx holds it; the API never sees it)."""

    def __init__(self, threads: int = 4) -> None:
        self.stop = threading.Event()
        self.done = 0
        self.trickled = 0
        self.threads = [threading.Thread(target=self.loop, args=(n,), daemon=True)
                        for n in range(threads)]
        self.threads.append(threading.Thread(target=self.slow_upload, daemon=True))

    def slow_upload(self) -> None:
        port = int(API.rsplit(":", 1)[1])
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(f"POST {PREFIX}/data_batch HTTP/1.1\r\nHost: verify\r\n"
                         f"apikey: {KEY}\r\nContent-Type: application/json\r\n"
                         "Content-Length: 1000000\r\n\r\n".encode())
            while not self.stop.wait(0.3):
                sock.sendall(b" " * 100)
                self.trickled += 100

    def loop(self, n: int) -> None:
        paths = [API + "/readyz", API + PREFIX + "/data_batch",
                 API + PREFIX + "/recommended_items?model_id=smoke&source_id=u1", API + "/healthz"]
        while not self.stop.is_set():
            # The stack stops under it: refused connections and resets are expected.
            with contextlib.suppress(OSError, ValueError, http_client.HTTPException):
                http("GET", paths[(self.done + n) % len(paths)], None, {"apikey": KEY})
            self.done += 1
            self.stop.wait(0.02)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=40)


def busy_training_containers(verify_sh: str, ids: list[str]) -> frozenset[str]:
    """Names of the containers whose training worker runs a task (Celery's inspect active)."""
    out = run(verify_sh, "compose", "exec", "-T", "worker", "celery", "-A", "worker.celery_app",
              "inspect", "active", "--json", "--timeout", "5", check=False)
    try:
        active = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    except ValueError:
        active = {}
    hosts = {node.split("@")[-1] for node, tasks in active.items()
             if node.startswith("train@") and tasks}
    names = run(verify_sh, "docker", "inspect", "-f", "{{.Id}} {{.Name}}", *ids).splitlines()
    return frozenset(name.strip("/") for cid, name in (line.split() for line in names)
                     if any(h and cid.startswith(h) for h in hosts))


def single(verify_sh: str) -> None:
    # One tour, step after step on the same stack (each step needs the state the last left):
    # longer than the house's 60 lines, read top to bottom like the README's list.
    def compose(*args: str) -> str:
        return run(verify_sh, "compose", *args)

    t = time.monotonic()
    compose(*UP)
    say(f"stack up and healthy in {time.monotonic() - t:.0f} s")
    ready = wait_for("/readyz with 2 workers", lambda: ready_with(2))
    pings = compose("exec", "-T", "worker", "celery", "-A", "worker.celery_app", "inspect", "ping")
    check("train@" in pings and "callbacks@" in pings,
          f"/readyz {ready['checks']}; workers by name: "
          + ", ".join(line.split()[1].rstrip(":") for line in pings.splitlines() if "->" in line))

    rid = request_id_through_proxy()
    check(rid == "verify-rid-1", f"through the nginx proxy: X-Request-Id passed and echoed ({rid})")
    check_redis_locked(verify_sh)

    status, batches = api("POST", "/data_batch", shop())
    check(status == 201 and len(batches) == 2, f"upload -> 201, {len(batches)} batches")
    train("smoke", callback="http://receiver:8080/hook")
    run_status = completed("smoke")
    check(run_status["counts"]["interactions"] > 0, f"status completed: {run_status['counts']}")
    recommends("smoke")
    _, secret = api("GET", "/webhook_secret")
    hook = wait_for("the callback",
                    lambda: next(iter(http("GET", RECEIVER + "/received")[1]), None))
    check(json.loads(hook["body"])["status"] == "completed"
          and verify_signature(secret["secret"], hook),
          "callback delivered to the receiver on the compose network, signature verified")

    t = time.monotonic()
    compose(*UP, "--scale", "worker=3")
    wait_for("/readyz with 4 workers", lambda: ready_with(4))
    say(f"scaled to 3 training workers in {time.monotonic() - t:.0f} s")
    models = [f"scale-{n}" for n in range(6)]
    for model in models:
        train(model)
    for model in models:
        completed(model)
    def seven_done() -> dict[str, str] | None:
        workers = train_workers()
        return workers if len(workers) >= 7 else None

    ran_on = wait_for("Flower to list the 7 training tasks", seven_done)
    spread = sorted(set(ran_on.values()))
    check(len(spread) >= 2, f"7 runs landed on {len(spread)} workers: {spread}")

    status, _ = http("GET", FLOWER + "/api/workers")
    check(status == 401, f"Flower without a login -> {status}")
    status, _ = http("GET", FLOWER + "/api/workers", None, flower_auth())
    check(status == 200, f"Flower with the login -> {status}")

    ids = compose("ps", "-q").split()
    began = time.time()
    compose("stop")
    check_stopped(verify_sh, ids, began, "stop, idle")
    compose("down", "--timeout", "10")
    t = time.monotonic()
    compose(*UP)
    wait_for("/readyz after down/up", lambda: ready_with(2))
    say(f"down and up again in {time.monotonic() - t:.0f} s")
    status, listed = api("GET", "/data_batch")
    check(status == 200 and len(listed) == 2,
          "after down/up: the same key still works and both batches are listed")
    recommends("smoke")

    # Stop under load: request loops through the proxy, a slow upload, a training run.
    compose(*UP, "--scale", "worker=3")
    ids = compose("ps", "-q").split()
    # A run of some seconds (50,000 interactions, 150 epochs), to be mid-run at the stop.
    status, _ = api("POST", "/data_batch", {**shop(users=1000, items=200), "tags": ["midrun"]})
    check(status == 201, f"upload of 50,000 interactions -> {status}")
    status, _ = api("POST", "/train", {"model_id": "midrun", "evaluation": {"holdout": 0},
                                       "hyperparameters": {"epochs": 150},
                                       "data_tags": ["midrun"],
                                       "use_metadata_features": False})
    check(status == 202, f"POST /train midrun -> {status}")
    wait_for("the midrun run to start", lambda: True if api(
        "GET", "/status/midrun")[1].get("status") in {"running", "completed"} else None)
    with Load() as load:
        wait_for("some load", lambda: True if load.done > 40 else None, timeout=60)
        busy = busy_training_containers(verify_sh, ids)
        began = time.time()
        compose("stop")
    say(f"{load.done} requests and a slow upload ({load.trickled} bytes) during the load; "
        f"training mid-run in: {sorted(busy) or 'none'}")
    check_stopped(verify_sh, ids, began, "stop, under load", busy)

    # Redis at its ceiling, with the API, the proxy and one idle training worker.
    compose("up", "-d", "--wait", "--wait-timeout", "300", "--pull",
            SETTINGS["RECSYS_VERIFY_PULL"], "--scale", "worker=1", "proxy", "worker")
    wait_for("/readyz with 1 worker", lambda: ready_with(1))
    check_redis_full(verify_sh)
    compose("down", "--volumes", "--timeout", "10")


def twohost(verify_sh: str) -> None:
    def host(project: str, *args: str) -> str:
        return run(verify_sh, "twohost", "--project-name", project, *args)

    run(verify_sh, "docker", "network", "create", "recsys-verify-core", check=False)
    run(verify_sh, "docker", "network", "inspect", "recsys-verify-core")  # made now or before
    host("recsys-verify-core", "--profile", "core", *UP)
    host("recsys-verify-host-b", "--profile", "host-b", *UP)
    host("recsys-verify-host-a", "--profile", "host-a", *UP)
    ready = wait_for("host A's /readyz (B's trainer, A's callbacks worker)", lambda: ready_with(2))
    check(ready["checks"]["storage"] == "ok", f"host A ready: {ready['checks']}")
    status, _ = api("POST", "/data_batch", shop())
    check(status == 201, "upload through host A -> 201 (stored in the S3 bucket)")
    train("twohost")
    completed("twohost")
    logs = host("recsys-verify-host-b", "--profile", "host-b", "logs", "worker")
    check("twohost" in logs, "the run queued on host A trained on host B's worker")
    host("recsys-verify-host-b", "--profile", "host-b", "stop")
    recommends("twohost")
    say("host A served the model host B trained (host B stopped)")


if __name__ == "__main__":
    {"single": single, "twohost": twohost}[sys.argv[1]](sys.argv[2])
    say("PASS")
