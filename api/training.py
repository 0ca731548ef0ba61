"""Training runs, their status, and models."""

from __future__ import annotations

from flask_smorest import Blueprint

blp = Blueprint("training", __name__, description="Training runs, their status, and models.")
