"""Trained models: artifacts on storage, the serving cache, scoring blocks and top-k.

Submodules are imported by name (``from shared.models.X import ...``); this package
imports none of them itself, so importing one never loads the others.
"""

__all__ = [
    "artifact",
    "blocks",
    "scoring",
    "serving",
]
