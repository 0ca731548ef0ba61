"""Fresh models: warm starts, kept versions and pinning, and schedules (docs/fresh-models.md).

Submodules are imported by name (``from shared.fresh.X import ...``); this package
imports none of them itself, so importing one never loads the others.
"""

__all__ = [
    "schedules",
    "ticks",
    "versions",
    "warm",
]
