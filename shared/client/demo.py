"""``make demo``: a synthetic shop, uploaded, trained with a live progress bar, and queried.

It talks to the stack at ``RECSYS_URL`` (the one ``make run`` started) with
``RECSYS_API_KEY`` or the local key file. When nothing answers there, it starts
its own stack in the background (``python -m shared.stack.launcher`` with a private
data directory, free ports and a one-off key) and stops it at the end.

Every step goes through the public HTTP API with :class:`shared.client.http.RecsysClient`,
exactly as a user's script would.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from shared.client.cli.main import default_url, local_key_file, read_local_key
from shared.client.cli.output import key_values, metrics_table, table
from shared.client.cli.progress import wait_for_run
from shared.client.demo_shop import (
    CATEGORIES,
    Shop,
    generate_shop,
    write_catalogue,
    write_events,
)
from shared.client.http import DEFAULT_URL, ApiError, ClientError, ConnectionFailed, RecsysClient
from shared.stack.procs import stop_group

DEMO_TAG = "recsys-demo"
MODEL_ID = "demo-shop"
#: Seconds a self-started stack may take to answer /readyz (first start imports a lot).
STACK_START_TIMEOUT = 180.0
NEW_USER_METADATA: dict[str, Any] = {
    "interests": ["outdoor", "sports"], "age_band": "25-34", "region": "north",
}


@dataclass
class DemoResult:
    """What the demo produced, for tests and scripts."""

    status: dict[str, Any]
    user_recommendations: dict[str, list[dict[str, Any]]]
    new_user_recommendations: list[dict[str, Any]]
    new_user_interest_share: float
    seconds: float


def _train_body(epochs: int) -> dict[str, Any]:
    return {
        "model_id": MODEL_ID,
        "data_tags": [DEMO_TAG],
        "interaction_weights": {"view": 1.0, "purchase": 5.0},
        "hyperparameters": {"loss": "warp", "no_components": 32, "epochs": epochs,
                            "learning_rate": 0.05, "random_state": 42},
        "evaluation": {"holdout": 0.2},
    }


def _upload(client: RecsysClient, shop: Shop, out: Console, workdir: Path) -> None:
    """Replace any earlier demo data with this shop's, in tagged batches."""
    try:
        removed = client.delete_batches(tags=[DEMO_TAG])
    except ApiError as exc:
        if exc.status != 404:
            raise
        removed = []
    if removed:
        out.print(f"Removed {len(removed)} batch(es) of an earlier demo run.")
    batches = client.upload(write_catalogue(shop, workdir), [DEMO_TAG, "catalogue"])
    for path, period in write_events(shop, workdir):
        batches += client.upload([path], [DEMO_TAG, "events", period])
    rows = [{"batch_id": b.get("batch_id"), "kind": b.get("kind"),
             "tags": ", ".join(t for t in b.get("tags", []) if t != DEMO_TAG),
             "rows": int(b.get("entity_count") or 0) + int(b.get("interaction_count") or 0)}
            for b in batches]
    table(out, rows, title=f"Uploaded batches (all tagged {DEMO_TAG})")


def _train(client: RecsysClient, out: Console, epochs: int) -> dict[str, Any]:
    """Train the demo model, waiting out a run of it that is already going."""
    try:
        first = client.train(_train_body(epochs))
    except ApiError as exc:
        if exc.status != 409:
            raise
        out.print(f"{MODEL_ID} is already training; waiting for that run first.")
        wait_for_run(client, MODEL_ID, out)
        first = client.train(_train_body(epochs))
    return wait_for_run(client, MODEL_ID, out, first=first)


def _item_lookup(shop: Shop) -> dict[str, int]:
    return {str(item): i for i, item in enumerate(shop.item_ids)}


def _show_recs(
    out: Console, shop: Shop, rows: list[dict[str, Any]], title: str, lookup: dict[str, int]
) -> None:
    grid = Table(title=title, header_style="bold")
    for name in ("rank", "item", "name", "category", "price", "score"):
        grid.add_column(name, justify="right" if name in {"rank", "price", "score"} else "left")
    for row in rows:
        index = lookup.get(str(row.get("target_id")))
        name = str(shop.item_name[index]) if index is not None else "?"
        category = CATEGORIES[int(shop.item_category[index])] if index is not None else "?"
        price = f"{shop.item_price[index]:.2f}" if index is not None else "?"
        score = row.get("score")
        grid.add_row(str(row.get("rank")), str(row.get("target_id")), name, category, price,
                     f"{score:.3f}" if isinstance(score, int | float) else "")
    out.print(grid)


def _show_shop(out: Console, shop: Shop) -> None:
    purchases = int((shop.event_type == "purchase").sum())
    out.print(f"{len(shop.user_ids)} users with tastes over {len(CATEGORIES)} categories, "
              f"{len(shop.item_ids)} items with prices, {shop.n_events} interactions over a "
              f"year ({shop.n_events - purchases} views, {purchases} purchases).")


def _upload_step(client: RecsysClient, out: Console, shop: Shop) -> None:
    with tempfile.TemporaryDirectory(prefix="recsys-demo-") as tmp:
        _upload(client, shop, out, Path(tmp))
    try:
        summary = client.dataset(tags=[DEMO_TAG])
        shown = {k: v for k, v in summary.items() if k not in {"batch_ids", "data_batch_ids"}}
        key_values(out, shown, title="What a training run will use")
    except ApiError as exc:
        out.print(f"(dataset summary unavailable: {exc.one_line()})")


def _train_step(client: RecsysClient, out: Console, epochs: int) -> dict[str, Any]:
    status = _train(client, out, epochs)
    if status.get("status") != "completed":
        raise click.ClickException(
            f"training ended in {status.get('phase')}: {status.get('message')}"
        )
    counts = status.get("counts") or {}
    out.print(f"Trained version {status.get('version')} on {counts.get('interactions', '?')} "
              f"interactions, {counts.get('sources', '?')} users, "
              f"{counts.get('targets', '?')} items.")
    if status.get("metrics"):
        metrics_table(out, status["metrics"])
    return status


def _known_users_step(client: RecsysClient, out: Console, shop: Shop, lookup: dict[str, int]
                      ) -> tuple[dict[str, list[dict[str, Any]]], list[int]]:
    """Recommendations for the most active user, a fairly active one and a typical one."""
    users = len(shop.user_ids)
    per_user: dict[str, list[dict[str, Any]]] = {}
    by_activity = np.argsort(-np.bincount(shop.event_user, minlength=users), kind="stable")
    active = [int(i) for i in by_activity[[0, users // 40, users // 5]]]
    for index in active:
        user = str(shop.user_ids[index])
        interests = [CATEGORIES[int(c)] for c in shop.user_interests[index]]
        rows = client.recommend(MODEL_ID, [user], max_recommendations=5)["recommendations"]
        per_user[user] = rows
        _show_recs(out, shop, rows, f"{user} (interests: {', '.join(interests)})",
                   lookup)
    return per_user, active


def _cold_start_step(client: RecsysClient, out: Console, shop: Shop, lookup: dict[str, int]
                     ) -> tuple[list[dict[str, Any]], float]:
    """Recommendations for a visitor known only by metadata; the share within its interests."""
    new_rows: list[dict[str, Any]] = client.recommend(
        MODEL_ID, ["new-visitor-1"], max_recommendations=10, source_metadata=NEW_USER_METADATA
    )["recommendations"]
    _show_recs(out, shop, new_rows, f"new-visitor-1 {NEW_USER_METADATA}", lookup)
    wanted = {CATEGORIES.index(c) for c in NEW_USER_METADATA["interests"]}
    hits = [lookup[r["target_id"]] for r in new_rows if r.get("target_id") in lookup]
    share = float(np.isin(shop.item_category[hits], list(wanted)).mean()) if hits else 0.0
    chance = len(wanted) / len(CATEGORIES)
    out.print(f"{share:.0%} of these are in the visitor's interests "
              f"(a random pick would give about {chance:.0%}).")
    return new_rows, share


def run_demo(
    client: RecsysClient,
    out: Console,
    *,
    users: int = 2000,
    items: int = 500,
    interactions: int = 60_000,
    epochs: int = 10,
    seed: int = 7,
    keep_hint: bool = True,
) -> DemoResult:
    """The whole demo against a ready stack; returns what it showed."""
    started = time.monotonic()
    out.rule("1. A synthetic shop")
    shop = generate_shop(users, items, interactions, seed=seed)
    _show_shop(out, shop)
    out.rule("2. Upload in tagged batches")
    _upload_step(client, out, shop)
    out.rule("3. Train (purchases weigh 5 views)")
    status = _train_step(client, out, epochs)
    out.rule("4. Recommendations for a few users")
    lookup = _item_lookup(shop)
    per_user, active = _known_users_step(client, out, shop, lookup)
    out.rule("5. A new visitor known only by metadata (cold start)")
    new_rows, share = _cold_start_step(client, out, shop, lookup)
    seconds = time.monotonic() - started
    out.rule(f"Done in {seconds:.0f} s")
    if keep_hint:
        recsys = recsys_command()
        out.print(f"Try: {recsys} recommend {MODEL_ID} --source {shop.user_ids[active[0]]}",
                  soft_wrap=True)
        out.print(f"     {recsys} status {MODEL_ID}", soft_wrap=True)
    return DemoResult(status, per_user, new_rows, share, seconds)


def recsys_command() -> str:
    """The ``recsys`` command as it works when typed here: the script beside this Python
    (``.venv/bin/recsys``, relative when under the working directory), since the venv's
    ``bin`` is on PATH only once it is activated."""
    script = Path(sys.executable).parent / "recsys"
    if not script.exists():  # not installed as a script beside this Python
        if shutil.which("recsys"):
            return "recsys"
        return f"{shlex.quote(sys.executable)} -c 'from shared.client.cli import main; main()'"
    try:
        shown = str(script.relative_to(Path.cwd()))
    except ValueError:
        return shlex.quote(str(script))
    return shlex.quote(shown if "/" in shown else f"./{shown}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _probe(client: RecsysClient) -> str:
    """``ready``, ``down`` (nothing listens) or ``starting`` (answers, not ready)."""
    try:
        client.ready()
        return "ready"
    except ConnectionFailed:
        return "down"
    except ApiError:
        return "starting"


def _wait_ready(client: RecsysClient, timeout: float, proc: subprocess.Popen[bytes] | None,
                log: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _probe(client) == "ready":
            return
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise click.ClickException(f"the demo's own stack exited at start:\n{tail}")
        time.sleep(1.0)
    raise click.ClickException(f"{client.base}/readyz did not become ready in {timeout:.0f} s")


@contextmanager
def own_stack(out: Console) -> Iterator[RecsysClient]:
    """Start a private stack with ``python -m shared.stack.launcher``; stop it on exit."""
    data_dir = Path(tempfile.mkdtemp(prefix="recsys-demo-stack-"))
    port, key = _free_port(), "rk_demo_" + secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if k != "RECSYS_REDIS_URL"}
    env.update({
        "RECSYS_DATA_DIR": str(data_dir), "RECSYS_HOST": "127.0.0.1", "RECSYS_PORT": str(port),
        "RECSYS_FLOWER_PORT": str(_free_port()), "RECSYS_BOOTSTRAP_KEY": key,
        "RECSYS_WORKER_CONCURRENCY": "1", "RECSYS_WEB_WORKERS": "1",
    })
    log = data_dir / "stack.log"
    out.print(f"No stack answers; starting one in the background (data in {data_dir}, "
              f"log {log}).")
    with log.open("ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "shared.stack.launcher"], env=env,
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        client = RecsysClient(f"http://127.0.0.1:{port}", key)
        _wait_ready(client, STACK_START_TIMEOUT, proc, log)
        yield client
    finally:
        if proc.poll() is None:
            out.print("Stopping the demo's stack.")
            stop_group(proc, timeout=60)
        shutil.rmtree(data_dir, ignore_errors=True)


@click.command()
@click.option("--url", envvar="RECSYS_URL", default=None,
              help=f"Default: RECSYS_HOST/RECSYS_PORT when set, else {DEFAULT_URL}.")
@click.option("--api-key", envvar="RECSYS_API_KEY", default=None)
@click.option("--users", type=click.IntRange(10), default=2000, show_default=True)
@click.option("--items", type=click.IntRange(20), default=500, show_default=True)
@click.option("--interactions", type=click.IntRange(100), default=60_000, show_default=True)
@click.option("--epochs", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
def cli(url: str | None, api_key: str | None, users: int, items: int, interactions: int,
        epochs: int, seed: int) -> None:
    """Generate a shop, upload it, train with live progress, and show recommendations."""
    out = Console()
    client = RecsysClient(url or default_url(), api_key or read_local_key(local_key_file()))
    try:
        state = _probe(client)
        if state == "starting":
            out.print(f"{client.base} answers but is not ready yet; waiting.")
            _wait_ready(client, 60.0, None, None)
            state = "ready"
        if state == "ready":
            if not client.api_key:
                raise click.UsageError(f"No API key: set RECSYS_API_KEY or create "
                                       f"{local_key_file()} (`make run` does).")
            out.print(f"Using the stack at {client.base}.")
            run_demo(client, out, users=users, items=items, interactions=interactions,
                     epochs=epochs, seed=seed)
            return
        with own_stack(out) as own:
            run_demo(own, out, keep_hint=False, users=users, items=items,
                     interactions=interactions, epochs=epochs, seed=seed)
        out.print("Start the stack with `make run` to keep it (and the demo model) around.")
    except ClientError as exc:
        text = exc.one_line() if isinstance(exc, ApiError) else exc.message
        raise click.ClickException(text) from exc


def main() -> None:
    """``python -m shared.client.demo``."""
    cli(prog_name="python -m shared.client.demo")


if __name__ == "__main__":
    main()
