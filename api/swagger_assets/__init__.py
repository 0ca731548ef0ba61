"""Swagger UI and ReDoc, vendored from the npm registry, so ``/docs`` and ``/redoc`` work
offline (see ``static/*/VERSION`` for the packages and versions, with their licences)."""

from __future__ import annotations

from flask import Blueprint

#: Where the assets are served; ``api.app`` points flask-smorest's settings here.
URL_PREFIX = "/docs-assets"
SWAGGER_UI_URL = f"{URL_PREFIX}/swagger-ui/"
REDOC_URL = f"{URL_PREFIX}/redoc/redoc.standalone.js"

bp = Blueprint("swagger_assets", __name__, static_folder="static", static_url_path=URL_PREFIX)
