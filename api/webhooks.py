"""The tenant's webhook signing secret: read it, rotate it (``admin`` scope)."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask.views import MethodView

from api.auth import current_tenant, require
from api.context import services
from api.parsing import Blueprint
from shared.webhooks import secrets as webhook_secrets

blp = Blueprint("webhooks", __name__, description="The tenant's webhook signing secret.")

#: Secrets must not sit in shared caches or browser history.
_NO_STORE = {"Cache-Control": "no-store"}


class WebhookSecretSchema(ma.Schema):
    """The secret receivers verify callbacks with (Standard Webhooks ``whsec_`` form)."""

    secret = ma.fields.String(
        required=True,
        metadata={"description": "whsec_ followed by base64; pass it to Webhook(secret)."},
    )


@blp.route("/webhook_secret")
class WebhookSecret(MethodView):
    @blp.response(200, WebhookSecretSchema)
    @blp.alt_response(403, description="The key lacks the admin scope.")
    @require("admin")
    def get(self) -> Any:
        """The tenant's webhook secret, created on first use."""
        secret = webhook_secrets.get_secret(services().redis, current_tenant())
        return {"secret": secret}, 200, _NO_STORE


@blp.route("/webhook_secret/rotate")
class RotateWebhookSecret(MethodView):
    @blp.response(200, WebhookSecretSchema)
    @blp.alt_response(403, description="The key lacks the admin scope.")
    @require("admin")
    def post(self) -> Any:
        """Replace the webhook secret; every later callback attempt is signed with the new one.

        The previous secret also signs them for a grace period (24 h by default), so
        receivers not yet updated keep verifying deliveries.
        """
        svc = services()
        secret = webhook_secrets.rotate(svc.redis, current_tenant(),
                                        svc.settings.webhook_secret_grace_seconds)
        return {"secret": secret}, 200, _NO_STORE
