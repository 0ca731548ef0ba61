"""Data batches: upload, list, delete, and the dataset summary."""

from __future__ import annotations

from flask_smorest import Blueprint

blp = Blueprint("data", __name__, description="Data batches: upload, list, delete, and the dataset summary.")
