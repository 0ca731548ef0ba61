"""Recommendations from trained models."""

from __future__ import annotations

from flask_smorest import Blueprint

blp = Blueprint("recommendations", __name__, description="Recommendations from trained models.")
