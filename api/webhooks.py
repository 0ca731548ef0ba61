"""The tenant's webhook signing secret."""

from __future__ import annotations

from flask_smorest import Blueprint

blp = Blueprint("webhooks", __name__, description="The tenant's webhook signing secret.")
