"""``recsys keys``: create, list and revoke API keys, straight in Redis.

These commands need no key and no running API: they read the settings
(``RECSYS_REDIS_URL``, else the embedded server's port recorded in
``RECSYS_DATA_DIR``) and talk to Redis through :mod:`shared.keys`.
"""

from __future__ import annotations

import click
import redis

from shared.client.cli.main import CliState
from shared.client.cli.output import print_json, table
from shared.config import Settings
from shared.keys import SCOPES, create_key, ensure_key, list_keys, revoke_key
from shared.registry import connect


def _redis(settings: Settings | None = None) -> redis.Redis:
    return connect(settings or Settings.from_env())


@click.group("keys")
def keys_group() -> None:
    """Create, list and revoke API keys (talks to Redis directly)."""


@keys_group.command("create")
@click.option("--tenant", required=True, help="Tenant the key belongs to.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(SCOPES),
    help="A scope the key holds (repeat for several).",
)
@click.option("--name", default="", help="A label to recognise the key by.")
@click.pass_obj
def create(state: CliState, tenant: str, scopes: tuple[str, ...], name: str) -> None:
    """Create a key and print it once (only its hash is stored)."""
    raw, record = create_key(_redis(), tenant, list(scopes), name=name)
    if state.as_json:
        print_json(state.out, {"key": raw, **record.as_dict()})
        return
    state.out.print(f"Created key [bold]{record.key_id}[/] for tenant [bold]{tenant}[/] "
                    f"with scopes {', '.join(sorted(record.scopes))}.")
    state.out.print("Store it now; it is not shown again:")
    click.echo(raw)


@keys_group.command("list")
@click.option("--tenant", default=None, help="Only this tenant's keys.")
@click.pass_obj
def list_(state: CliState, tenant: str | None) -> None:
    """List keys (ids, tenants, scopes; never the keys themselves)."""
    keys = [k.as_dict() for k in list_keys(_redis(), tenant)]
    if state.as_json:
        print_json(state.out, keys)
        return
    table(
        state.out,
        keys,
        ["key_id", "tenant", "scopes", "name", "created_at"],
        empty="No API keys.",
    )


@keys_group.command("revoke")
@click.argument("key_id")
@click.pass_obj
def revoke(state: CliState, key_id: str) -> None:
    """Revoke a key by its id (as `recsys keys list` shows it)."""
    record = revoke_key(_redis(), key_id)
    if state.as_json:
        print_json(state.out, record.as_dict())
        return
    state.out.print(f"Revoked key {record.key_id} of tenant {record.tenant}.")


@keys_group.command("bootstrap")
@click.pass_obj
def bootstrap(state: CliState) -> None:
    """Make sure RECSYS_BOOTSTRAP_KEY exists for tenant default with every scope.

    For deployments that start the processes themselves (compose, systemd)
    rather than through ``make run``; does nothing when the variable is unset.
    """
    settings = Settings.from_env()
    if not settings.bootstrap_key:
        state.out.print("RECSYS_BOOTSTRAP_KEY is not set; nothing to do.")
        return
    record = ensure_key(_redis(settings), settings.bootstrap_key)
    if state.as_json:
        print_json(state.out, record.as_dict())
        return
    state.out.print(f"Bootstrap key {record.key_id} of tenant {record.tenant} is in place.")
