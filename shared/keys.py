"""API keys: one tenant each, a set of scopes, stored only as a SHA-256 hash.

Keys are 256-bit random strings, so a fast hash is enough (no password
stretching needed); the lookup is by hash and the final comparison uses
:func:`hmac.compare_digest` so timing reveals nothing about stored hashes.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import redis

from shared.errors import NotFound, ValidationFailed
from shared.registry import as_str, as_str_dict, global_key, redis_guard

SCOPES: tuple[str, ...] = ("data:write", "data:read", "train", "recommend", "admin")
KEY_PREFIX = "rk_"
#: Tenant names: they become parts of Redis keys and storage paths, so no dots (never
#: ``.`` or ``..``), slashes, capitals or spaces.
TENANT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
TENANT_RULE = ("A tenant name is 1 to 64 characters of lower-case letters, digits, '_' and "
               "'-', starting with a letter or digit.")


@dataclass(frozen=True)
class ApiKey:
    """A stored key's public facts (never the key itself)."""

    key_id: str
    tenant: str
    scopes: frozenset[str]
    created_at: str
    name: str = ""

    def as_dict(self) -> dict[str, object]:
        """JSON-ready view for listings."""
        return {
            "key_id": self.key_id,
            "tenant": self.tenant,
            "scopes": sorted(self.scopes),
            "created_at": self.created_at,
            "name": self.name,
        }


def hash_key(raw: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def _record_key(digest: str) -> str:
    return global_key("apikey", digest)


def _index_key() -> str:
    return global_key("apikeys")


def validate_scopes(scopes: list[str] | tuple[str, ...]) -> frozenset[str]:
    """Refuse unknown scopes with a 422 that lists the valid ones."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ValidationFailed(
            "Scopes must be a non-empty subset of: " + ", ".join(SCOPES) + ".",
            details={"unknown_scopes": unknown},
        )
    return frozenset(scopes)


def validate_tenant(tenant: str) -> str:
    """Tenants are short names of lower-case letters, digits, '_' and '-' (see TENANT_RE)."""
    if not isinstance(tenant, str) or TENANT_RE.fullmatch(tenant) is None:
        raise ValidationFailed(TENANT_RULE, code="invalid_tenant", details={"tenant": tenant})
    return tenant


def _store(r: redis.Redis, raw: str, tenant: str, scopes: frozenset[str], name: str) -> ApiKey:
    digest = hash_key(raw)
    key_id = digest[:12]
    created = datetime.now(UTC).isoformat(timespec="seconds")
    with redis_guard("storing an API key"):
        pipe = r.pipeline(transaction=True)
        pipe.hset(
            _record_key(digest),
            mapping={
                "key_id": key_id,
                "hash": digest,
                "tenant": tenant,
                "scopes": ",".join(sorted(scopes)),
                "created_at": created,
                "name": name,
            },
        )
        pipe.hset(_index_key(), key_id, digest)
        pipe.execute()
    return ApiKey(key_id, tenant, scopes, created, name)


def create_key(
    r: redis.Redis, tenant: str, scopes: list[str] | tuple[str, ...], name: str = ""
) -> tuple[str, ApiKey]:
    """Create a new random key; returns the raw key (shown once) and its record."""
    validate_tenant(tenant)
    scope_set = validate_scopes(scopes)
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    return raw, _store(r, raw, tenant, scope_set, name)


def _bootstrap_key() -> str:
    return global_key("apikey_bootstrap")


def ensure_key(r: redis.Redis, raw: str, tenant: str = "default") -> ApiKey:
    """Make sure exactly this key exists for ``tenant`` with every scope (bootstrap).

    The bootstrap key's hash is recorded; when ``raw`` differs from the key recorded
    there, that previous bootstrap key is revoked, so changing ``RECSYS_BOOTSTRAP_KEY``
    never leaves the old value working with every scope.
    """
    digest = hash_key(raw)
    with redis_guard("reading the bootstrap key"):
        previous = as_str(r.get(_bootstrap_key()))
        index = {str(as_str(k)): str(as_str(v)) for k, v in
                 cast(dict[Any, Any], r.hgetall(_index_key())).items()}
    if previous is not None:
        stale = [previous] if previous != digest else []
    else:  # recorded by no earlier start: the keys an older version made (named so)
        stale = [index[k.key_id] for k in list_keys(r, tenant)
                 if k.name == "bootstrap" and k.scopes == set(SCOPES)
                 and k.key_id in index and index[k.key_id] != digest]
    existing = lookup(r, raw)
    if existing is None or existing.tenant != tenant or existing.scopes != set(SCOPES):
        existing = _store(r, raw, tenant, frozenset(SCOPES), "bootstrap")
    with redis_guard("recording the bootstrap key"):
        pipe = r.pipeline(transaction=True)
        for old in stale:
            pipe.delete(_record_key(old))
            pipe.hdel(_index_key(), old[:12])
        pipe.set(_bootstrap_key(), digest)
        pipe.execute()
    return existing


def lookup(r: redis.Redis, raw: str) -> ApiKey | None:
    """The record of a presented key, or None when it does not exist."""
    return lookup_digest(r, hash_key(raw))


def lookup_digest(r: redis.Redis, digest: str) -> ApiKey | None:
    """The record of a key by its hash (what a console session keeps), or None."""
    with redis_guard("checking the API key"):
        record = as_str_dict(r.hgetall(_record_key(digest)))
    if not record:
        return None
    if not hmac.compare_digest(record.get("hash", ""), digest):
        return None
    return ApiKey(
        key_id=record["key_id"],
        tenant=record["tenant"],
        scopes=frozenset(s for s in record.get("scopes", "").split(",") if s),
        created_at=record.get("created_at", ""),
        name=record.get("name", ""),
    )


def list_keys(r: redis.Redis, tenant: str | None = None) -> list[ApiKey]:
    """Every stored key's public facts, optionally for one tenant."""
    with redis_guard("listing API keys"):
        digests = [str(as_str(d)) for d in cast(list[Any], r.hvals(_index_key()))]
        pipe = r.pipeline(transaction=False)
        for digest in digests:
            pipe.hgetall(_record_key(digest))
        records = [as_str_dict(rec) for rec in pipe.execute()]
    keys = [
        ApiKey(
            key_id=rec["key_id"],
            tenant=rec["tenant"],
            scopes=frozenset(s for s in rec.get("scopes", "").split(",") if s),
            created_at=rec.get("created_at", ""),
            name=rec.get("name", ""),
        )
        for rec in records
        if rec
    ]
    if tenant is not None:
        keys = [k for k in keys if k.tenant == tenant]
    return sorted(keys, key=lambda k: (k.tenant, k.created_at, k.key_id))


def revoke_key(r: redis.Redis, key_id: str, tenant: str | None = None) -> ApiKey:
    """Delete a key by its id; 404 when unknown (or owned by another tenant)."""
    with redis_guard("revoking an API key"):
        digest = as_str(r.hget(_index_key(), key_id))
        record = as_str_dict(r.hgetall(_record_key(digest))) if digest else {}
        if not digest or not record or (tenant is not None and record.get("tenant") != tenant):
            raise NotFound(f"No API key with id {key_id!r}.", code="key_not_found")
        assert digest is not None
        pipe = r.pipeline(transaction=True)
        pipe.delete(_record_key(digest))
        pipe.hdel(_index_key(), key_id)
        pipe.execute()
    return ApiKey(
        key_id=key_id,
        tenant=record["tenant"],
        scopes=frozenset(s for s in record.get("scopes", "").split(",") if s),
        created_at=record.get("created_at", ""),
        name=record.get("name", ""),
    )
