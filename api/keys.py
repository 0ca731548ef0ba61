"""API keys over HTTP (``admin`` scope): create, list and revoke the caller's tenant's keys.

An admin key manages only its own tenant's keys; keys for other tenants are
made by the operator with ``recsys keys create``, which talks to Redis directly.
"""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask.views import MethodView

from api.auth import current_tenant, require
from api.context import services
from api.parsing import Blueprint
from shared.keys import SCOPES, create_key, list_keys, revoke_key

blp = Blueprint("keys", __name__, description="API keys of the caller's tenant (admin scope).")

#: A raw key must not sit in shared caches or browser history.
_NO_STORE = {"Cache-Control": "no-store"}


class KeyCreateSchema(ma.Schema):
    """Body of ``POST /keys``."""

    class Meta:
        unknown = ma.RAISE

    scopes = ma.fields.List(
        ma.fields.String(validate=ma.validate.OneOf(SCOPES)),
        required=True,
        validate=ma.validate.Length(min=1, max=len(SCOPES)),
        metadata={"description": "Any non-empty subset of " + ", ".join(SCOPES) + "."},
    )
    name = ma.fields.String(
        load_default="", validate=ma.validate.Length(max=200),
        metadata={"description": "A label to recognise the key by."},
    )


class KeySchema(ma.Schema):
    """A stored key's public facts (never the key itself)."""

    key_id = ma.fields.String(required=True)
    tenant = ma.fields.String(required=True)
    scopes = ma.fields.List(ma.fields.String(), required=True)
    created_at = ma.fields.String(required=True)
    name = ma.fields.String(required=True)


class CreatedKeySchema(KeySchema):
    """A new key: the raw ``key`` is shown in this answer only."""

    key = ma.fields.String(
        required=True, metadata={"description": "The key to send in the apikey header; "
                                 "only its hash is stored, so it is never shown again."},
    )


@blp.route("/keys")
class Keys(MethodView):
    @blp.response(201, CreatedKeySchema)
    @blp.alt_response(403, description="The key lacks the admin scope.")
    @require("admin")
    @blp.arguments(KeyCreateSchema, location="json", as_kwargs=True)
    def post(self, scopes: list[str], name: str = "") -> Any:
        """Create a key for the caller's tenant; the answer is the only time it is shown."""
        raw, record = create_key(services().redis, current_tenant(), scopes, name=name)
        return {"key": raw, **record.as_dict()}, 201, _NO_STORE

    @blp.response(200, KeySchema(many=True))
    @blp.alt_response(403, description="The key lacks the admin scope.")
    @require("admin")
    def get(self) -> list[dict[str, object]]:
        """The tenant's keys (ids, scopes, names; never the keys)."""
        return [k.as_dict() for k in list_keys(services().redis, current_tenant())]


@blp.route("/keys/<string:key_id>")
class KeyById(MethodView):
    @blp.response(200, KeySchema)
    @blp.alt_response(403, description="The key lacks the admin scope.")
    @blp.alt_response(404, description="No such key in this tenant.")
    @require("admin")
    def delete(self, key_id: str) -> dict[str, object]:
        """Revoke a key of the tenant; requests with it get 401 from then on."""
        return revoke_key(services().redis, key_id, tenant=current_tenant()).as_dict()
