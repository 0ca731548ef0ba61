"""Callbacks when runs end: delivery records and retry schedule, the URL policy, secrets.

Submodules are imported by name (``from shared.webhooks.X import ...``); this package
imports none of them itself, so importing one never loads the others.
"""

__all__ = [
    "deliveries",
    "secrets",
    "url_policy",
]
